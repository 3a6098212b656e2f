"""Where the warp-specialised step kernel's time goes: the tuned kernel timed against three variants
of itself, built from its source with parts removed.

    python bench/ws_decompose.py --sizes large,medium,xlarge [--extra '[{"num_stages": 4}]']

Per preset (the shapes and tuning entry of bench/step_kernel_sweep.py), ms per step with CUDA events
(median of --reps), the same inputs for every variant:
- full: the kernel as tuned;
- no MMA: the ring of TMA loads, its barriers and the whole cell, but no wgmma (accumulators zero);
- no cell I/O: the GEMM and the cell's arithmetic and stores, but G[token] and c not loaded;
- MMA + h store: the GEMM pipeline alone, one bf16 store of the summed gates per tile.
If full ~ no MMA, the GEMM is hidden and the loads/cell are the critical path; if full ~ MMA + h
store + (no MMA - ...) the two run one after the other.

--probes adds variants of the full kernel that each take one resource away (`PROBES`):
- few_a: the h tile is loaded only for a head's first unit tile (the others reuse what shared
  memory holds): the L2 traffic of a kernel that kept h on chip across a head's unit tiles;
- half_w: the weight tile is loaded for every second row tile only (half the weight traffic);
- no_g: G[token] neither loaded nor staged, its shared buffers (64 KB at large) dropped, at the
  tuned number of stages and at the deeper rings that memory then allows (--probe_stages);
- no_mufu: the tanh of the cell replaced by a multiply (no MUFU instructions).
The variants are written to temporary modules (the shipped kernel is not changed); their outputs
are meaningless.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

# the cooperative form large ran before the ping-pong form (session 11's tuning entry), decomposed where
# the tuning entry now asks for the ping-pong form
PINGPONG_STANDIN = {"pingpong": False, "loader": False, "BD": 64, "BK": 32, "coop": True, "prefetch": True,
                    "stage_out": False, "num_stages": 5, "consumer_regs": 240}

# (old, new) source edits that thread a VARIANT constexpr through the kernel
EDITS = [
    ("            acc = warpgroup_mma(a, w_bufs.index(s), acc, is_async=True)",
     "            if VARIANT != 1:\n                acc = warpgroup_mma(a, w_bufs.index(s), acc, is_async=True)"),
    ("                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))",
     "                if VARIANT != 1:\n                    acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))"),
    ("        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))",
     "        if VARIANT != 1:\n            acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))"),
    ("ONE_DOT: gl.constexpr, STAGE_OUT: gl.constexpr, WHICH: gl.constexpr):",
     "ONE_DOT: gl.constexpr, STAGE_OUT: gl.constexpr, WHICH: gl.constexpr, VARIANT: gl.constexpr = 0):"),
    ("BD: gl.constexpr, COOP: gl.constexpr, A_REG: gl.constexpr, ONE_DOT: gl.constexpr, WHICH: gl.constexpr):",
     "BD: gl.constexpr, COOP: gl.constexpr, A_REG: gl.constexpr, ONE_DOT: gl.constexpr, WHICH: gl.constexpr, "
     "VARIANT: gl.constexpr = 0):"),
    ("A_REG, ONE_DOT, WHICH)", "A_REG, ONE_DOT, WHICH, VARIANT)"),
    ("ONE_DOT: gl.constexpr = False, STAGE_OUT: gl.constexpr = False):",
     "ONE_DOT: gl.constexpr = False, STAGE_OUT: gl.constexpr = False, VARIANT: gl.constexpr = 0):"),
    ("ONE_DOT, STAGE_OUT, 0)),", "ONE_DOT, STAGE_OUT, 0, VARIANT)),"),
    ("ONE_DOT, STAGE_OUT, 1)),", "ONE_DOT, STAGE_OUT, 1, VARIANT)),"),
    ("        i_g = acc_i + g_i.to(gl.float32)",
     "        if VARIANT >= 2:\n            g_i = gl.zeros([BM, BD], gl.float32, acc_layout)\n            g_f = g_i\n"
     "            g_z = g_i\n            g_o = g_i\n            c = g_i\n        i_g = acc_i + g_i.to(gl.float32)"),
    ("        if STAGE_OUT:\n            # c and h back",
     "        if VARIANT == 3:\n            rows3 = pid_m * TILE_M + ROW0 + gl.arange(0, BM, layout=row_layout)\n"
     "            off3 = gl.expand_dims((pid_h.to(gl.int64) * B + rows3) * Dk, 1) + gl.expand_dims(pid_d * BD + cols, 0)\n"
     "            gl.store(h_out_ptr + off3, (acc_i + acc_f + acc_z + acc_o).to(gl.bfloat16))\n"
     "        elif STAGE_OUT:\n            # c and h back"),
]


_A_COPIES = """            mbarrier.expect(bar, (2 if COOP else 1) * a_desc.block_type.nbytes
                            + (1 if ONE_DOT else 4) * w_desc.block_type.nbytes)
            if COOP:
                tma.async_copy_global_to_shared(a_desc, [a_row, n * Dk + kk * BK], bar, a_bufs.index(2 * s))
                tma.async_copy_global_to_shared(a_desc, [a_row + BM, n * Dk + kk * BK], bar, a_bufs.index(2 * s + 1))
            else:"""
_W_COPY = """            if ONE_DOT:
                tma.async_copy_global_to_shared(w_desc, [pid_h * Dk + kk * BK, pid_d * (4 * BD)], bar, w_bufs.index(s))"""
_TANH = """return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)"""
# one resource taken away each (cooperative one-dot form, as tuned at large); see the docstring
PROBES = {
    "few_a": [(_A_COPIES, """            if pid_d == 0:
                mbarrier.expect(bar, 2 * a_desc.block_type.nbytes + w_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(a_desc, [a_row, n * Dk + kk * BK], bar, a_bufs.index(2 * s))
                tma.async_copy_global_to_shared(a_desc, [a_row + BM, n * Dk + kk * BK], bar, a_bufs.index(2 * s + 1))
            else:
                mbarrier.expect(bar, w_desc.block_type.nbytes)
            if COOP:
                pass
            else:""")],
    "half_w": [(_A_COPIES, """            if pid_m % 2 == 0:
                mbarrier.expect(bar, 2 * a_desc.block_type.nbytes + w_desc.block_type.nbytes)
            else:
                mbarrier.expect(bar, 2 * a_desc.block_type.nbytes)
            if COOP:
                tma.async_copy_global_to_shared(a_desc, [a_row, n * Dk + kk * BK], bar, a_bufs.index(2 * s))
                tma.async_copy_global_to_shared(a_desc, [a_row + BM, n * Dk + kk * BK], bar, a_bufs.index(2 * s + 1))
            else:"""),
               (_W_COPY, """            if ONE_DOT:
                if pid_m % 2 == 0:
                    tma.async_copy_global_to_shared(w_desc, [pid_h * Dk + kk * BK, pid_d * (4 * BD)], bar,
                                                    w_bufs.index(s))""")],
    "no_g": [("""            for g in gl.static_range(4):
                async_copy.async_copy_global_to_shared(g_sm.index(WHICH * 4 + g), gp + g * Dk, mask=gm)
""", ""),
             ("""            g_i = g_sm.index(WHICH * 4 + 0).load(acc_layout)
            g_f = g_sm.index(WHICH * 4 + 1).load(acc_layout)
            g_z = g_sm.index(WHICH * 4 + 2).load(acc_layout)
            g_o = g_sm.index(WHICH * 4 + 3).load(acc_layout)
""", """            g_i = gl.zeros([BM, BD], gl.bfloat16, acc_layout)
            g_f = g_i
            g_z = g_i
            g_o = g_i
"""),
             ("""        g_sm = gl.allocate_shared_memory(gl.bfloat16, [8, BM, BD], gl.SwizzledSharedLayout(8, G_PP, G_MP, order=[1, 0]))""",
              """        g_sm = gl.allocate_shared_memory(gl.bfloat16, [8, 1, BD], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))""")],
    "no_mufu": [(_TANH, "return x * 0.3")],
}


def import_source(tmp: Path, name: str, src: str):
    """`src` imported as module `name` from a file under tmp (Gluon reads a kernel's source file)."""
    path = tmp / f"{name}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def variant_module(tmp: Path, name: str = "ws_variants", extra=()):
    src = (ROOT / "models" / "_lstm_step_gluon.py").read_text()
    for old, new in list(EDITS) + list(extra):
        if old not in src:
            raise SystemExit(f"ws_decompose: the kernel source changed; update EDITS / PROBES (missing: {old[:60]!r})")
        src = src.replace(old, new)
    return import_source(tmp, name, src)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="large,medium,xlarge")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--extra", default="[]", help="JSON list of config overrides timed as further 'full' rows")
    ap.add_argument("--probes", default="", help=f"comma-separated variants that take one resource away: {','.join(PROBES)}")
    ap.add_argument("--probe_stages", default="7,8", help="further stage counts for the no_g probe")
    ap.add_argument("--K", type=int, default=0, help="stacked models (0: bench/step_kernel_sweep.py's default)")
    a = ap.parse_args(argv)
    probes = [p for p in a.probes.split(",") if p]
    unknown = [p for p in probes if p not in PROBES]
    if unknown:
        sys.exit(f"ws_decompose: unknown --probes {unknown}; choose among {list(PROBES)}")
    if not torch.cuda.is_available():
        sys.exit("ws_decompose.py needs a CUDA device (Hopper, Gluon)")
    import step_kernel_sweep as S
    from models.lstm_fused import default_step_config, num_sms, ws_launch_geometry
    dev = torch.device("cuda")
    extra = json.loads(a.extra)
    with tempfile.TemporaryDirectory() as tmp:
        kern = variant_module(Path(tmp))
        probe_mods = {p: variant_module(Path(tmp), f"ws_probe_{p}", PROBES[p]) for p in probes}
        for size in a.sizes.split(","):
            cs = S.make_case(size, a.K or S.DEFAULT_K[size], 1024, 100, dev)
            K, N, Dk, B = cs["K"], cs["N"], cs["Dk"], cs["B"]
            base = default_step_config(B, cs["BD"], Dk=Dk, heads=K * N, device=dev)
            if not base.get("ws"):
                print(f"{size}: the tuning entry does not use the warp-specialised kernel; skipped")
                continue
            if base.get("pingpong"):        # the variants edit the cooperative / alternate-tile kernel
                base = dict(base, **PINGPONG_STANDIN)
                print(f"{size}: the tuning entry uses the ping-pong form; decomposing the cooperative form "
                      f"{PINGPONG_STANDIN} instead", flush=True)
            print(size, {k: v for k, v in base.items() if v not in (None, False)}, flush=True)
            h_out, c_out = torch.empty_like(cs["h"]), torch.empty_like(cs["c"])
            W = S.tile_recurrent_weight(cs["R"], N=N, Dk=Dk, BD=base["BD"])

            def launch(cfg, variant, mod=None):
                BM, BK, BD, one_dot, coop = 64, cfg["BK"], cfg["BD"], cfg["one_dot"], cfg["coop"]
                a_desc, w_desc, rows_per_k, num_tiles, num_m = ws_launch_geometry(
                    cs["h"], W, K=K, N=N, Dk=Dk, B=B, BM=BM, BK=BK, BD=BD, one_dot=one_dot, coop=coop)
                P = min(num_tiles, num_sms(dev))
                g, tok, c_in = cs["G"], cs["tok"], cs["c"]
                (mod or kern).lstm_step_ws_kernel[(P,)](
                    a_desc, w_desc, h_out, g, tok, c_in, c_out, B, N, g.shape[1], tok.stride(0), 1, h_out.stride(0),
                    N * Dk, c_in.stride(0), c_in.stride(1), num_tiles, num_m, rows_per_k, Dk=Dk, BM=BM, BD=BD, BK=BK,
                    STAGES=cfg["num_stages"], NUM_PROGRAMS=P, CONSUMER_REGS=cfg["consumer_regs"], A_REG=False,
                    PREFETCH=bool(cfg["prefetch"]), COOP=bool(coop), ONE_DOT=bool(one_dot),
                    STAGE_OUT=bool(cfg["stage_out"]), VARIANT=variant, num_warps=4, maxnreg=168)

            def timed(fn):
                for _ in range(3):
                    fn()
                ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(a.reps)]
                for e0, e1 in ev:
                    e0.record()
                    fn()
                    e1.record()
                torch.cuda.synchronize()
                return statistics.median(e0.elapsed_time(e1) for e0, e1 in ev)

            flops = 2.0 * K * N * B * Dk * 4 * Dk
            plain = {**base, "prefetch": False, "stage_out": False}
            rows = [("full (tuned)", base, 0), ("no MMA", base, 1), ("no cell I/O", plain, 2),
                    ("MMA + h store only", plain, 3)] + [(f"full {e}", {**base, **e}, 0) for e in extra]
            rows = [r + (None,) for r in rows]
            for p in probes:
                stages = [base["num_stages"]] + ([int(x) for x in a.probe_stages.split(",") if x] if p == "no_g" else [])
                rows += [(f"{p}, {st} stages", {**base, "num_stages": st}, 0, probe_mods[p]) for st in stages]
            rows.append(("full (tuned), again", base, 0, None))
            print(f"{size}: K {K} models, {K * N} heads, B {B}, Dk {Dk}", flush=True)
            for name, cfg, v, mod in rows:
                try:
                    ms = timed(lambda: launch(cfg, v, mod))
                    print(f"{size:7s} {name:24s} {ms:.3f} ms  {flops / ms / 1e9:.0f} TF/s", flush=True)
                except Exception as e:  # a config the GPU refuses (e.g. shared memory): say so, go on
                    print(f"{size:7s} {name:24s} FAILED {type(e).__name__}: {str(e)[:300]}", flush=True)
            del cs, h_out, c_out, W
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
