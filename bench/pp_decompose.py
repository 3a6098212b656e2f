"""Where the weight-resident ping-pong step kernel's time goes (`lstm_step_pp_kernel`): the kernel
timed against variants of itself, built from its source with one part removed or done another way.

    python bench/pp_decompose.py --size large --K 4 [--variants noload,nostore] [--rounds 2]

The preset's shapes (bench/step_kernel_sweep.py's case: B = 1024, V = 100, K stacked models), ms per
launch with CUDA events (median of --reps), in --rounds interleaved rounds (the machine drifts by a
few percent), for: this GPU's tuning entry; the ping-pong form at --configs (BK:stages, BD 32),
without and with the loader's warp (`loader`, consumer_regs 208), and that with c and h stored by
TMA (`tma_out`); and each variant at the first of those configs (without the loader or TMA stores):
- noload: the cell's inputs (G[token], c) not copied into shared memory (read as whatever it holds);
- nostore: c and h staged in shared memory but not stored to global memory;
- noload_nostore: both;
- nomufu: the cell's tanh and sigmoids replaced by their arguments (no MUFU instructions);
- direct_out: c and h stored from the accumulator layout (4- and 8-byte stores), not staged;
- c_reg: c loaded into registers a tile ahead (8-byte loads), not staged through shared memory;
- wait2: two k-steps of wgmma in flight instead of one;
- if_last: the weight chunks' release under a branch instead of a predicate;
- nomma: no wgmma (the accumulator stays zero; every load, barrier and the cell as shipped): the
  time of everything but the tensor cores' work and its operand reads;
- mma_only: noload_nostore and nomufu together: the GEMM path with the barriers, and a cell of plain
  arithmetic.
The variants are written to temporary modules (the shipped kernel is not changed); outputs of noload,
nostore, nomufu, nomma and mma_only are meaningless. The variants edit the form without the loader's
warp and TMA stores (`loader`, `tma_out`: the large preset's tuning entry), which the --configs rows run.
Results: bench/results/logs/pp_variants_2026-11-29_session12.log
and bench/results/logs/pp_narrow_tail_2026-11-29_session15.log.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SRC_PATH = ROOT / "models" / "_lstm_step_gluon.py"

_G_COPY = """    for g in gl.static_range(4):
        async_copy.async_copy_global_to_shared(g_sm.index(4 * WHICH + g), gp + g * Dk, mask=gm)"""
_C_COPY = """    async_copy.async_copy_global_to_shared(c_sm.index(WHICH), c_base + (gl.expand_dims(c_rows * stride_cin_b, 1)
                                                                        + gl.expand_dims(c_cols, 0)), mask=cm)"""
_CELL = """        c_new = _sig_fast(f_g) * c + _sig_fast(i_g) * _tanh_fast(z_g)
        h = _sig_fast(o_g) * _tanh_fast(c_new)
        if TMA_OUT:"""
# the stores of the form without TMA stores (`tma_out`), which the variants edit
_STAGED_OUT = """            oc_sm.index(WHICH).store(c_new)
            oh_sm.index(WHICH).store(h.to(gl.bfloat16))
            _thread_barrier()
            _pp_store(c_out_ptr, h_out_ptr, oc_sm.index(WHICH).load(c_cp), oh_sm.index(WHICH).load(g_cp), pid_m * BM,
                      pid_d, pid_h, k, n, B, stride_out_k, stride_hb, Dk, BM, BD, C_UNITS)"""
_STORE = """            _pp_store(c_out_ptr, h_out_ptr, oc_sm.index(WHICH).load(c_cp), oh_sm.index(WHICH).load(g_cp), pid_m * BM,
                      pid_d, pid_h, k, n, B, stride_out_k, stride_hb, Dk, BM, BD, C_UNITS)"""
_C_REGS = """@gluon.jit
def _pp_c_regs(c_in_ptr, q, num_q, pid, B, stride_cin_h, stride_cin_b, Dk: gl.constexpr, BM: gl.constexpr,
               BD: gl.constexpr, NUM_PROGRAMS: gl.constexpr, NUM_M: gl.constexpr, layout: gl.constexpr):
    NUM_D: gl.constexpr = Dk // BD
    ui, pid_m, pid_d, pid_h = _pp_unit(q, pid, NUM_M, NUM_D, NUM_PROGRAMS)
    rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, layout))
    cols = gl.arange(0, BD, layout=gl.SliceLayout(0, layout))
    m2 = gl.expand_dims((rows < B) & (q < num_q), 1) & gl.expand_dims(cols < BD, 0)
    return gl.load(c_in_ptr + _c_in_offsets(rows, cols, pid_d, pid_h, stride_cin_h, stride_cin_b, BD), mask=m2,
                   other=0.0)


@gluon.jit
def _pp_consumer("""
_TOK0 = "        tok_next = _pp_tokens(tok_ptr, WHICH + 2, num_q, B, tok_stride_b, t, BM, NUM_M, tok_layout)\n    j = 0"
_TOKN = "            tok_next = _pp_tokens(tok_ptr, q + 4, num_q, B, tok_stride_b, t, BM, NUM_M, tok_layout)"
_CREG = ("_pp_c_regs(c_in_ptr, {q}, num_q, pid, B, stride_cin_h, stride_cin_b, Dk, BM, BD, NUM_PROGRAMS, NUM_M, "
         "acc_layout)")
_WAIT = ("""            if kk > 0:
                # the previous""", """            if kk > 1:
                # the previous""")


def _span(first: str, last: str) -> str:
    """The shipped kernel's source from `first` through the end of `last` (the next one after it)."""
    src = SRC_PATH.read_text()
    i = src.find(first)
    j = src.find(last, i) if i >= 0 else -1
    if j < 0:
        raise SystemExit(f"pp_decompose: the kernel source changed; update the span {first.strip()[:60]!r}")
    return src[i:j + len(last)]


# the consumer's MMAs of a k-step (the last k-step's slices and the full one)
_MMA = _span("            if kk == NK - 1 and K_LAST < BK:",
             "acc = warpgroup_mma(a_bufs.index(s), w_bufs.index(kk), acc, is_async=True)\n")
_RELEASE = _span("                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))\n                _pp_release(",
                 "            s_prev = s")
_LAST = _span("        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))\n        _pp_release(", "last, LOADER)")
_LOOP = """        s_prev = 0
        for kk in gl.static_range(NK):
            count = q * NK + kk"""

_NOMUFU = (_CELL, _CELL.replace("_sig_fast(f_g)", "f_g").replace("_sig_fast(i_g)", "i_g")
           .replace("_tanh_fast(z_g)", "z_g").replace("_sig_fast(o_g)", "o_g").replace("_tanh_fast(c_new)", "c_new"))

# name -> (old, new) source edits
VARIANTS = {
    "noload": [(_G_COPY, "    g_sm.index(0)"), (_C_COPY, "    c_sm.index(0)")],
    "nostore": [(_STORE, "            _thread_barrier()")],
    "noload_nostore": [(_G_COPY, "    g_sm.index(0)"), (_C_COPY, "    c_sm.index(0)"),
                       (_STORE, "            _thread_barrier()")],
    "nomufu": [_NOMUFU],
    "nomma": [(_MMA, "            acc = acc\n")],
    "mma_only": [(_G_COPY, "    g_sm.index(0)"), (_C_COPY, "    c_sm.index(0)"), (_STORE, "            _thread_barrier()"),
                 _NOMUFU],
    "direct_out": [(_STAGED_OUT, """            _pp_store(c_out_ptr, h_out_ptr, c_new, h.to(gl.bfloat16), pid_m * BM, pid_d, pid_h, k, n, B,
                      stride_out_k, stride_hb, Dk, BM, BD, C_UNITS)""")],
    "c_reg": [(_C_COPY, "    c_sm.index(0)"), ("@gluon.jit\ndef _pp_consumer(", _C_REGS),
              (_TOK0, _TOK0.replace("    j = 0", "    c_reg = " + _CREG.format(q="WHICH") + "\n    j = 0")),
              ("        c = c_sm.index(WHICH).load(acc_layout)\n        if LOADER:",
               "        c = c_reg\n        if LOADER:"),
              (_TOKN, _TOKN + "\n        c_reg = " + _CREG.format(q="q + 2"))],
    "wait2": [_WAIT, (_RELEASE, _RELEASE.replace("num_outstanding=1", "num_outstanding=2")
                      .replace("_pp_bar(empty, kk - 1, s_prev, STATIC), w_empty[kk - 1]",
                               "_pp_bar(empty, kk - 2, s_pp, STATIC), w_empty[kk - 2]")
                      .replace("            s_prev = s", "            s_pp = s_prev\n            s_prev = s")),
              (_LAST, _LAST.replace("        _pp_release(",
                                    "        _pp_release(_pp_bar(empty, NK - 2, s_pp, STATIC), w_empty[NK - 2], last, LOADER)\n"
                                    "        _pp_release(")),
              (_LOOP, _LOOP.replace("        s_prev = 0", "        s_prev = 0\n        s_pp = 0"))],
    "if_last": [("""        mbarrier.arrive(chunk_empty, count=1, pred=last)""",
                 """        if last:
            mbarrier.arrive(chunk_empty, count=1)""")],
}


def variant_source(edits, src: str | None = None) -> str:
    """The kernel module's source with `edits` applied (each must match exactly once)."""
    src = SRC_PATH.read_text() if src is None else src
    for old, new in edits:
        if src.count(old) != 1:
            raise SystemExit(f"pp_decompose: the kernel source changed; update VARIANTS (found {src.count(old)} "
                             f"times: {old[:70]!r})")
        src = src.replace(old, new)
    return src


def variant_module(tmp: Path, name: str, edits):
    """The kernel module with `edits` applied, imported from a file under tmp (Gluon reads its source)."""
    from ws_decompose import import_source
    return import_source(tmp, f"pp_variant_{name}", variant_source(edits))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="large")
    ap.add_argument("--K", type=int, default=4, help="stacked models a launch (large's pass on the H200: 4)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--configs", default="64:8,32:16", help="ping-pong BK:stages to time (BD 32); variants use the first")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--reps", type=int, default=30)
    a = ap.parse_args(argv)
    names = [v for v in a.variants.split(",") if v]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        sys.exit(f"pp_decompose: unknown --variants {unknown}; choose among {list(VARIANTS)}")
    try:
        configs = [tuple(int(x) for x in c.split(":")) for c in a.configs.split(",") if c]
        assert configs and all(len(c) == 2 for c in configs)
    except (ValueError, AssertionError):
        sys.exit(f"pp_decompose: --configs wants BK:stages pairs, e.g. 64:8,32:16 (got {a.configs!r})")
    if not torch.cuda.is_available():
        print("pp_decompose.py needs a CUDA device (Hopper, Gluon)", file=sys.stderr)
        return 2
    import models
    import models._lstm_step_gluon as shipped
    import step_kernel_sweep as S
    from models import lstm_fused
    dev = torch.device("cuda")
    cs = S.make_case(a.size, a.K, 1024, 100, dev)
    h_out, c_out = torch.empty_like(cs["h"]), torch.empty_like(cs["c"])
    key = lstm_fused.tuning_key(torch.cuda.get_device_name(dev), cs["Dk"], cs["B"], cs["K"] * cs["N"])
    skip = lstm_fused.TUNING_NOTES + lstm_fused.PASS_KEYS + lstm_fused.CHUNK_KEYS + ("seq", "split", "persist")
    entry = {k: v for k, v in lstm_fused._tuning().get(key, {}).items() if k not in skip}
    pp = [{"BD": 32, "BM": 64, "BK": bk, "one_dot": True, "num_warps": 4, "num_stages": st, "ws": True,
           "consumer_regs": 240, "pingpong": True} for bk, st in configs]
    rows = ([(f"tuning entry {key}", None, entry)] if entry else [])
    rows += [(f"ping-pong BK {c['BK']}, {c['num_stages']} stages", None, c) for c in pp]
    rows += [(f"ping-pong BK {c['BK']}, {c['num_stages']} stages, the loader's warp", None,
              dict(c, loader=True, consumer_regs=208)) for c in pp]
    rows += [(f"ping-pong BK {c['BK']}, {c['num_stages']} stages, the loader's warp, TMA stores", None,
              dict(c, loader=True, consumer_regs=208, tma_out=True)) for c in pp]
    rows += [(f"ping-pong BK {pp[0]['BK']}, {pp[0]['num_stages']} stages, {v}", v, pp[0]) for v in names]
    print(f"{a.size}: K={cs['K']} N={cs['N']} Dk={cs['Dk']}, {2.0 * cs['K'] * cs['N'] * cs['B'] * cs['Dk'] * 4 * cs['Dk'] / 1e9:.0f} "
          f"GFLOP a launch", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mods = {v: variant_module(Path(tmp), v, VARIANTS[v]) for v in names}
        for rnd in range(a.rounds):
            for label, v, cfg in rows:
                models._lstm_step_gluon = mods[v] if v else shipped   # what lstm_fused's launcher imports
                try:
                    S.run_kernel(cs, cfg, h_out, c_out)
                    torch.cuda.synchronize()
                    t = S.cuda_time(lambda: S.run_kernel(cs, cfg, h_out, c_out), reps=a.reps)  # noqa: B023
                    print(f"round {rnd} {label}: {t * 1e3:.3f} ms", flush=True)
                except Exception as e:  # noqa: BLE001  (a variant that fails is a result too)
                    print(f"round {rnd} {label}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                finally:
                    models._lstm_step_gluon = shipped
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
