"""The fused LSTM step kernel (recurrent GEMM + cell epilogue) at each preset's head shape, on a GPU.

    python bench/step_kernel_sweep.py --out $OUT            # all presets, the default config grid

Per preset (heads N, head size D, padded Dk, B = 1024, K stacked models as the trainer picks them):
- correctness of every config against an fp32 torch step on the same tensors (max abs error of h, c);
- time per step (median of CUDA-event timed reps) and executed TFLOP/s (2*K*N*B*Dk*4Dk, padding
  included) for each config of the grid;
- the ceilings it is compared with: cuBLAS `bmm` of the same GEMM alone (no epilogue), the unfused
  step (cuBLAS bmm + our cell kernel) and the dense bf16 peak (8192^3 mm) measured in this run.
Writes `step_kernel_sweep_<date>.md/.json` and `step_tuning.json` (the best config per shape, the
format `models/lstm_fused.py` reads from ZO_STEP_TUNING or models/step_tuning.json).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_update import time_ms  # noqa: E402
from models import SIZE_PRESETS  # noqa: E402
from models._lstm_cell_triton import FAST_ACT  # noqa: E402
from models.lstm_fused import (CHUNK_KEYS, PASS_KEYS, SEQ_MAX_DK, WS_SMEM_LIMIT, _tuning, lstm_cell_, lstm_persist_,  # noqa: E402
                               lstm_seq_, lstm_step_, recurrence_split_, step_tiles, tile_recurrent_weight,
                               tuning_key, ws_shared_bytes)

# K stacked models per pass at B = 1024, T = 11, 12 probes (models.auto_models_per_pass on an H200)
DEFAULT_K = {"tiny": 24, "small": 24, "medium": 12, "large": 4, "xlarge": 1}


def cuda_time(fn, *, reps: int, warm: int = 2) -> float:
    """Median seconds of fn() per call, each call timed with CUDA events (bench_update.time_ms)."""
    return time_ms(fn, reps, warm)[0] / 1e3


def peak_tflops(dev) -> float:
    n = 8192
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    t = cuda_time(lambda: torch.mm(a, b), reps=20, warm=3)
    return 2 * n ** 3 / t / 1e12


SEQ_T = 11  # the paper's sequence: the whole-chunk kernel is timed over 11 steps, reported per step


def make_case(size: str, K: int, B: int, V: int, dev, seed: int = 0):
    H, N = SIZE_PRESETS[size]
    D = H // N
    Dk, BD, BK = step_tiles(D)
    g = torch.Generator(device=dev).manual_seed(seed)
    R = (torch.randn(K, 4, N, D, D, device=dev, generator=g) / D ** 0.5).to(torch.bfloat16)
    W = torch.zeros(K * N, Dk, 4, Dk, device=dev, dtype=torch.bfloat16)       # natural layout (reference)
    W[:, :D, :, :D] = R.permute(0, 2, 3, 1, 4).reshape(K * N, D, 4, D)
    W = W.view(K * N, Dk, 4 * Dk)
    G = torch.zeros(K, V, N, 4, Dk, device=dev, dtype=torch.bfloat16)      # the weight dtype, as prepare_fused
    G[..., :D] = (torch.randn(K, V, N, 4, D, device=dev, generator=g) * 0.5).to(torch.bfloat16)
    G = G.view(K, V, N, 4 * Dk)
    h = torch.zeros(K, B, N, Dk, device=dev, dtype=torch.bfloat16)
    h[..., :D] = (torch.rand(K, B, N, D, device=dev, generator=g) - 0.5).to(torch.bfloat16)
    c = torch.zeros(K * N, B, Dk, device=dev)
    c[..., :D] = torch.randn(K * N, B, D, device=dev, generator=g) * 0.3
    tok = torch.randint(0, V, (B, SEQ_T), device=dev, generator=g)
    return dict(size=size, K=K, N=N, D=D, Dk=Dk, BD=BD, BK=BK, B=B, R=R, W=W, W_tiled={}, G=G, h=h, c=c, tok=tok)


def reference_step(cs, t: int = 1):
    """fp32 torch step on the same (bf16) tensors: h, c of [K*N, B, Dk]."""
    K, N, B, Dk = cs["K"], cs["N"], cs["B"], cs["Dk"]
    A = cs["h"].float().permute(0, 2, 1, 3).reshape(K * N, B, Dk)
    pre = torch.bmm(A, cs["W"].float()).view(K, N, B, 4 * Dk)
    gx = cs["G"][:, cs["tok"][:, t]]                             # [K, B, N, 4Dk]
    pre = (pre + gx.permute(0, 2, 1, 3)).view(K * N, B, 4, Dk)
    i, f, z, o = pre.unbind(2)
    c = torch.sigmoid(f) * cs["c"] + torch.sigmoid(i) * torch.tanh(z)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def run_kernel(cs, cfg, h_out, c_out, t: int = 1):
    bd = cfg.get("BD", cs["BD"])
    if bd not in cs["W_tiled"]:
        cs["W_tiled"][bd] = tile_recurrent_weight(cs["R"], N=cs["N"], Dk=cs["Dk"], BD=bd)
    return lstm_step_(cs["h"], h_out, cs["W_tiled"][bd], cs["G"], cs["tok"], t, cs["c"], c_out, K=cs["K"],
                      N=cs["N"], Dk=cs["Dk"], BD=bd, BK=cfg.get("BK", cs["BK"]),
                      **{k: v for k, v in cfg.items() if k not in ("BD", "BK")})


def run_seq(cs, cfg, hs, c_out):
    """The whole-chunk kernel over the first T tokens: hs [K, T, B, N, Dk] (contiguous), c_out after T steps."""
    T = hs.shape[1]
    Dk = cs["Dk"]
    if Dk not in cs["W_tiled"]:
        cs["W_tiled"][Dk] = tile_recurrent_weight(cs["R"], N=cs["N"], Dk=Dk, BD=Dk)
    lstm_seq_(cs["h"], hs, cs["W_tiled"][Dk], cs["G"], cs["tok"][:, :T], cs["c"], c_out, K=cs["K"],
              N=cs["N"], Dk=Dk, **cfg)


def step_chunk(cs):
    """The whole SEQ_T-step chunk through the per-step kernel (default launch config): (h after the
    last step [K, B, N, Dk], c after it), the reference the whole-chunk forms must reproduce."""
    K, N, B, Dk, bd = cs["K"], cs["N"], cs["B"], cs["Dk"], cs["BD"]
    if bd not in cs["W_tiled"]:
        cs["W_tiled"][bd] = tile_recurrent_weight(cs["R"], N=N, Dk=Dk, BD=bd)
    h = [torch.empty_like(cs["h"]), torch.empty_like(cs["h"])]
    c = torch.empty_like(cs["c"])
    for t in range(SEQ_T):
        lstm_step_(cs["h"] if t == 0 else h[(t - 1) % 2], h[t % 2], cs["W_tiled"][bd], cs["G"], cs["tok"], t,
                   cs["c"] if t == 0 else c, c, K=K, N=N, Dk=Dk, BD=bd, BK=cs["BK"], one_dot=True)
    return h[(SEQ_T - 1) % 2], c


def time_chunk_form(run, cs, cfg, hs1, hs, c_out, ref0, flops, useful, peak, ref_chunk=None) -> dict:
    """One step of `run` against the fp32 reference (h and c errors), then its time over SEQ_T steps,
    per step, then the whole chunk's last h and c against `ref_chunk` (the per-step kernel's; bf16
    both, so a small drift: `err_chunk`). A form that fails to compile or run is a result too (`error`)."""
    K, N, B, Dk = cs["K"], cs["N"], cs["B"], cs["Dk"]
    out = {}
    try:
        run(cs, cfg, hs1, c_out)
        torch.cuda.synchronize()
        hk = hs1[:, 0].float().permute(0, 2, 1, 3).reshape(K * N, B, Dk)
        out["err_h"] = float((hk - ref0[0]).abs().max())
        out["err_c"] = float((c_out - ref0[1]).abs().max())
        t = cuda_time(lambda: run(cs, cfg, hs, c_out), reps=10) / SEQ_T
        out.update(s=t, tflops=flops / t / 1e12, useful_tflops=useful / t / 1e12, peak_frac=flops / t / 1e12 / peak)
        out["ok"] = out["err_h"] < 2e-2 and out["err_c"] < 2e-2
        if ref_chunk is not None:
            run(cs, cfg, hs, c_out)
            torch.cuda.synchronize()
            out["err_chunk"] = max(float((hs[:, -1].float() - ref_chunk[0].float()).abs().max()),
                                   float((c_out - ref_chunk[1]).abs().max()))
            out["ok"] = out["ok"] and out["err_chunk"] < 5e-2
    except Exception as e:  # noqa: BLE001
        out.update(ok=False, error=f"{type(e).__name__}: {str(e)[:200]}")
    return out


def run_split(cs, hs, c_out):
    """cuBLAS bmm + the gather cell kernel per step, over the first T tokens (the `split` form)."""
    Dk = cs["Dk"]
    if Dk not in cs["W_tiled"]:
        cs["W_tiled"][Dk] = tile_recurrent_weight(cs["R"], N=cs["N"], Dk=Dk, BD=Dk)
    recurrence_split_(cs["h"], hs, cs["W_tiled"][Dk], cs["G"], cs["tok"][:, :hs.shape[1]], cs["c"], c_out,
                      K=cs["K"], N=cs["N"], Dk=Dk)


def run_persist(cs, cfg, hs, c_out):
    """The whole-chunk kernel with the state in L2 (any head size) over the first T tokens."""
    bd = cfg["BD"]
    if bd not in cs["W_tiled"]:
        cs["W_tiled"][bd] = tile_recurrent_weight(cs["R"], N=cs["N"], Dk=cs["Dk"], BD=bd)
    lstm_persist_(cs["h"], hs, cs["W_tiled"][bd], cs["G"], cs["tok"][:, :hs.shape[1]], cs["c"], c_out,
                  K=cs["K"], N=cs["N"], Dk=cs["Dk"], BK=cs["BK"], **cfg)


def persist_configs(cs):
    """Configs of the state-in-L2 whole-chunk kernel (heads above SEQ_MAX_DK)."""
    if cs["Dk"] <= SEQ_MAX_DK:
        return []
    bds = sorted({cs["BD"], 32} & {b for b in (16, 32, 64) if cs["Dk"] % b == 0})
    return [{"BD": bd, "BM": bm, "num_warps": w, "num_stages": st} for bd in bds for bm in (64, 128)
            for (w, st) in ((8, 3), (4, 3))]


def seq_configs(cs):
    """Configs of the whole-chunk kernel (heads of at most SEQ_MAX_DK, a power of two)."""
    Dk = cs["Dk"]
    if Dk > SEQ_MAX_DK or Dk & (Dk - 1):
        return []
    return [{"BM": bm, "num_warps": w, "prefetch": p} for bm in (32, 64, 128) for w in (4, 8) for p in (False, True)]


GRIDS = ("focus", "quick", "all", "wres", "ws", "pp")
def ws_configs(cs):
    """Configs of the warp-specialised Gluon kernel (`ws`): BD 64 where it divides Dk (else the
    preset's), BK 64 and 32; consumers on alternate tiles of 64 rows (a ring of stages each) or
    cooperating on tiles of 128 rows (`coop`: one ring, each weight tile read once for both); the cell's
    inputs read after the GEMM, or staged in shared memory during it (prefetch: 48 KB per consumer at
    BD 64) with c and h stored back through it (stage_out); as many stages as fit in shared memory
    beside them (at most 8) and two fewer; one wgmma of 4*BD columns a k-step (one_dot), and for
    reference the four-wgmma form and staged inputs without staged stores, once each."""
    Dk = cs["Dk"]
    bd = 64 if Dk % 64 == 0 else cs["BD"]
    out = []
    for coop, bk, pre in itertools.product((False, True), (64, 32), (False, True)):
        if Dk % bk:
            continue
        fits = [st for st in range(2, 9)
                if ws_shared_bytes(BD=bd, BK=bk, stages=st, prefetch=pre, coop=coop) <= WS_SMEM_LIMIT]
        for st in sorted({fits[-1], fits[-1] - 2} & set(fits), reverse=True) if fits else ():
            out.append({"BD": bd, "BM": 64, "BK": bk, "one_dot": True, "num_warps": 4, "num_stages": st,
                        "ws": True, "consumer_regs": 240, "prefetch": pre, "stage_out": pre, "coop": coop})
    ref = [dict(c, one_dot=False) for c in out if c["BK"] == 32 and not c["coop"] and not c["prefetch"]][:1]
    ref += [dict(c, stage_out=False) for c in out if c["BK"] == 32 and c["coop"] and c["prefetch"]][:1]
    return out + ref

def pp_configs(cs):
    """Configs of the weight-resident ping-pong Gluon kernel (`ws` with `pingpong`): BD 32 and 16
    where they divide Dk (the accumulator and the cell's inputs in registers), BK 32 and 64, rings of
    8, 16 and as many h stages as fit beside the weight tile (at most 32); each also with the loader
    partition (`loader`, consumer_regs 208), and that with c and h stored by TMA (`tma_out`)."""
    Dk = cs["Dk"]
    out = []
    for bd, bk in itertools.product((32, 16), (32, 64)):
        if Dk % bd or Dk % bk:
            continue
        fits = [st for st in range(2, 33)
                if ws_shared_bytes(BD=bd, BK=bk, stages=st, prefetch=False, coop=False, pingpong=True,
                                   Dk=Dk) <= WS_SMEM_LIMIT]
        for st in sorted({fits[-1], 16, 8} & set(fits), reverse=True) if fits else ():
            pp = {"BD": bd, "BM": 64, "BK": bk, "one_dot": True, "num_warps": 4, "num_stages": st, "ws": True,
                  "consumer_regs": 240, "pingpong": True}
            ld = dict(pp, consumer_regs=208, loader=True)              # and with the loader's warp
            out += [pp, ld, dict(ld, tma_out=True)]
    return out


WRES_SMEM = 200 * 1024  # the weight tile a weight-resident program may hold in shared memory (of 227 KB)


def wres_configs(cs):
    """Configs of the weight-resident per-step kernel (`lstm_step_wres_kernel`): BD in {BD, 32} where
    the weight tile [Dk, 4*BD] fits WRES_SMEM, BK the smallest of 64, 128 that holds Dk in at most 8
    chunks; BM 64 (4 or 8 warps) and 128 (8 warps); 1 or 2 stages (the row loop's h loads); prefetch on
    and off; all row tiles per program, or 4 per program (more programs, each weight tile read more
    often: 4 times a step at B = 1024, BM 64)."""
    Dk = cs["Dk"]
    bk = next((b for b in (cs["BK"], 64, 128) if Dk % b == 0 and Dk // b <= 8), None)
    if bk is None:
        return []
    out = []
    for bd in dict.fromkeys([cs["BD"], 32]):
        if Dk % bd or Dk * 4 * bd * 2 > WRES_SMEM:
            continue
        for pre in (True, False):
            for bm, w, st in ((64, 4, 1), (64, 4, 2), (64, 8, 1), (128, 8, 1)):
                for rt in (0, 4):
                    out.append({"BD": bd, "BM": bm, "one_dot": True, "num_warps": w, "num_stages": st,
                                "prefetch": pre, "wres": True, "row_tiles": rt, "BK": bk})
    return out


def grid_configs(cs, grid: str, recorded: dict | None = None):
    """The per-step kernel configs to time, most promising first (a budget cut drops the tail).

    focus (default): the one-dot form (always ahead of the four-dot form on the H200), pointer and
      TMA loads, BD in {BD, 32}, BM in {64, 128}, warps x stages around the measured best, each with
      and without the cell's loads issued before the GEMM (prefetch), then BK variants (32, 128
      where they divide Dk) of the prefetch configs;
    quick: the recorded entry for this shape and its prefetch twin, then a few of focus;
    all: focus plus the forms slower everywhere timed so far: the four-dot form, the persistent
      kernel, the TMA kernel's descriptor epilogue (`tma_epi`), the weight-resident kernel and the
      warp-specialised Gluon kernel (`ws`);
    wres, ws, pp: the recorded entry, then the weight-resident (`wres_configs`), the warp-specialised
      kernel's configs (`ws_configs`) or its weight-resident ping-pong form (`pp_configs`).
    Small shapes (under 50 GFLOP a step, where the whole-chunk kernel runs) get the quick grid."""
    if grid not in GRIDS:
        raise ValueError(f"unknown grid {grid!r}; choose one of {GRIDS}")
    if 2.0 * cs["K"] * cs["N"] * cs["B"] * cs["Dk"] * 4 * cs["Dk"] < 50e9:
        grid = "quick"
    bds = [cs["BD"]] + ([32] if cs["BD"] == 64 else [])
    focus = []
    for pre in (False, True):
        for bd, bm, (warps, stages) in itertools.product(bds, (128, 64), ((8, 3), (4, 3), (8, 4), (4, 2), (8, 2))):
            focus.append({"BD": bd, "BM": bm, "one_dot": True, "num_warps": warps, "num_stages": stages,
                          "prefetch": pre})
        for bd, bm, (warps, stages) in itertools.product(bds, (128, 64), ((8, 3), (4, 3), (8, 4))):
            focus.append({"BD": bd, "BM": bm, "one_dot": True, "num_warps": warps, "num_stages": stages,
                          "tma": True, "prefetch": pre})
    # a shorter or longer k-step: more pipeline stages in the same shared memory, or fewer iterations
    bks = [bk for bk in (32, 128) if bk != cs["BK"] and cs["Dk"] % bk == 0]
    for bk, bd, bm, (warps, stages), tma in itertools.product(bks, bds, (128, 64), ((8, 3), (4, 3), (4, 4)),
                                                               (False, True)):
        focus.append({"BD": bd, "BM": bm, "one_dot": True, "num_warps": warps, "num_stages": stages,
                      "prefetch": True, "BK": bk, **({"tma": True} if tma else {})})
    if grid in ("wres", "ws", "pp"):      # the recorded entry first, to compare with in the same run
        first = [{k: v for k, v in recorded.items() if k in ENTRY_KEYS}] if recorded else []
        return first + {"wres": wres_configs, "ws": ws_configs, "pp": pp_configs}[grid](cs)
    if grid == "focus":
        return focus
    if grid == "quick":
        first = []
        if recorded and not recorded.get("persistent"):
            base = {k: recorded[k] for k in ("BD", "BM", "one_dot", "num_warps", "num_stages", "tma", "wres",
                                             "row_tiles", "BK", "ws", "consumer_regs", "a_reg", "coop", "stage_out",
                                             "pingpong", "loader", "tma_out")
                    if k in recorded}
            first = [dict(base, prefetch=False), dict(base, prefetch=True)]
        rest = [c for c in focus if c["num_stages"] == 3 and c["BD"] == cs["BD"] and c not in first]
        return first + rest
    four = [{"BD": bd, "BM": bm, "one_dot": False, "num_warps": w, "num_stages": st}
            for bd, bm, (w, st) in itertools.product(bds, (64, 128), ((4, 3), (8, 3), (8, 4)))]
    # the TMA kernel's descriptor epilogue: 3-7% slower than its pointer epilogue at large, xlarge and
    # medium on the H200 (`step_kernel_sweep_2026-11-28_222323`), so only here
    epi = [dict(c, tma_epi=True) for c in focus if c.get("tma")]
    return focus + four + persistent_configs(cs, False) + epi + wres_configs(cs) + ws_configs(cs) + pp_configs(cs)


def persistent_configs(cs, quick: bool):
    """The per-step kernel as a persistent kernel (`lstm_step_persistent_kernel`, one-dot form) around
    the per-step kernel's best region. (BM, num_warps, num_stages, occupancy, warp_specialize); BM 64
    with 2 stages is the one BM-64 tile of which two programs fit an SM's shared memory at Dk >= 320
    (88 KB each; 3 stages take 128 KB), i.e. the one where occupancy 2 means two resident programs.
    warp_specialize compiles for sm_90 with Triton 3.6, but its Hopper pass leaves this pointer-load loop
    unpartitioned (the PTX equals that without it). Measured on the H200 (2026-11-28,
    `step_kernel_sweep_2026-11-28_191658`): 1.4-1.6x slower than the per-step kernel at large, medium and
    xlarge, WS no different, so only the `all` grid has them."""
    full = ((128, 8, 3, 1, False), (128, 8, 4, 1, False), (64, 4, 3, 1, False), (64, 8, 3, 2, False),
            (64, 4, 4, 2, False), (64, 4, 2, 2, False), (128, 8, 3, 1, True), (64, 4, 3, 2, True))
    if quick:
        return []
    return [{"BD": cs["BD"], "BM": bm, "one_dot": True, "num_warps": w, "num_stages": st, "persistent": True,
             "occupancy": occ, "warp_specialize": ws} for bm, w, st, occ, ws in full]


STEP_KEYS = ("BD", "BM", "one_dot", "num_warps", "num_stages", "tma", "persistent", "warp_specialize", "prefetch",
             "wres", "tma_epi", "ws")
# every launch option a tuning entry may hold (STEP_KEYS and the form-specific ones)
ENTRY_KEYS = STEP_KEYS + ("BK", "row_tiles", "occupancy", "consumer_regs", "a_reg", "coop", "stage_out", "pingpong",
                          "loader", "tma_out")


def step_entry(row) -> dict:
    """The per-step kernel's keys of a tuning entry, from a timed row: every option of `lstm_step_`,
    so that the entry reproduces the timed kernel (flags the row lacks are False, occupancy 1)."""
    entry = {**{k: row.get(k, False) for k in STEP_KEYS}, "occupancy": row.get("occupancy", 1)}
    if row.get("BK"):
        entry["BK"] = row["BK"]
    if row.get("wres"):
        entry["row_tiles"] = row.get("row_tiles", 0)
    if row.get("ws"):
        entry["consumer_regs"] = row.get("consumer_regs", 240)
        entry["a_reg"] = row.get("a_reg", False)
        entry["coop"] = row.get("coop", False)
        entry["stage_out"] = row.get("stage_out", False)
        entry["pingpong"] = row.get("pingpong", False)
        entry["loader"] = row.get("loader", False)
        entry["tma_out"] = row.get("tma_out", False)
    return entry


def keep_faster(old: dict | None, new: dict, s: float, fast_act: bool) -> tuple[dict, bool]:
    """The tuning entry to record, and whether it is the new one: the new entry (with its time "ms"
    and activation mode "fast_act"), unless the recorded one was measured under the same activation
    mode and was faster (the quick grid, or a budget cut, can miss the best config)."""
    new = dict(new, ms=round(s * 1e3, 4), fast_act=fast_act)
    if old and old.get("fast_act") == fast_act and old.get("ms") is not None and old["ms"] < new["ms"]:
        return old, False
    # the pass shape and the chunk's first-step options were measured end to end (bench_step,
    # bench_first_steps), not by this sweep: they stay
    new.update({k: old[k] for k in PASS_KEYS + CHUNK_KEYS if old and k in old})
    return new, True


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="large,xlarge,medium,small,tiny")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=100)
    ap.add_argument("--grid", default="focus", choices=GRIDS, help="the config grid (see grid_configs)")
    ap.add_argument("--quick", action="store_true", help="same as --grid quick")
    ap.add_argument("--K", type=int, default=0, help="stacked models a launch (0: DEFAULT_K per size)")
    ap.add_argument("--time_budget_s", type=float, default=240.0)
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "bench" / "results")))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("step_kernel_sweep.py needs a CUDA device")
    dev = torch.device("cuda")
    t_start = time.time()
    gpu = torch.cuda.get_device_name(dev)
    peak = peak_tflops(dev)
    print(f"{gpu}: dense bf16 peak {peak:.0f} TFLOP/s", flush=True)
    rows, tuning = [], dict(_tuning())      # measured configs of other shapes are kept
    grid = "quick" if a.quick else a.grid
    sizes = a.sizes.split(",")
    for si, size in enumerate(sizes):
        # each size gets an equal share of what is left, so a slow size cannot starve the rest
        size_deadline = time.time() + (a.time_budget_s - (time.time() - t_start)) / (len(sizes) - si)
        K = a.K or DEFAULT_K[size]
        cs = make_case(size, K, a.batch, a.vocab, dev)
        K, N, B, Dk, D = cs["K"], cs["N"], cs["B"], cs["Dk"], cs["D"]
        flops = 2.0 * K * N * B * Dk * 4 * Dk
        useful = 2.0 * K * N * B * D * 4 * D
        href, cref = reference_step(cs)
        A = cs["h"].permute(0, 2, 1, 3).reshape(K * N, B, Dk).contiguous()
        t_bmm = cuda_time(lambda: torch.bmm(A, cs["W"]), reps=20)
        pre = torch.bmm(A, cs["W"])
        c2 = cs["c"].clone()
        h2 = torch.empty(K * N, B, Dk, device=dev, dtype=torch.bfloat16)
        t_unfused = cuda_time(lambda: (torch.bmm(A, cs["W"], out=pre), lstm_cell_(pre, c2, h2)), reps=20)
        base = {"size": size, "K": K, "N": N, "D": D, "Dk": Dk, "B": B, "gflop": flops / 1e9,
                "cublas_bmm_s": t_bmm, "cublas_bmm_tflops": flops / t_bmm / 1e12,
                "unfused_s": t_unfused, "unfused_tflops": flops / t_unfused / 1e12}
        print(f"{size}: K={K} N={N} D={D}->{Dk} B={B}: {flops / 1e9:.1f} GFLOP/step; cuBLAS bmm alone "
              f"{t_bmm * 1e3:.3f} ms ({base['cublas_bmm_tflops']:.0f} TF/s), bmm+cell {t_unfused * 1e3:.3f} ms",
              flush=True)
        best = None
        h_out = torch.empty_like(cs["h"])
        c_out = torch.empty_like(cs["c"])
        recorded = tuning.get(tuning_key(gpu, Dk, B, K * N))
        for cfg in grid_configs(cs, grid, recorded):
            if time.time() > size_deadline:
                print("  time budget reached; remaining configs skipped", flush=True)
                break
            row = dict(base, **cfg)
            try:
                compiled = run_kernel(cs, cfg, h_out, c_out)
                torch.cuda.synchronize()
                row["regs"], row["spills"] = getattr(compiled, "n_regs", None), getattr(compiled, "n_spills", None)
                hk = h_out.float().permute(0, 2, 1, 3).reshape(K * N, B, Dk)
                row["err_h"] = float((hk - href).abs().max())
                row["err_c"] = float((c_out - cref).abs().max())
                t = cuda_time(lambda: run_kernel(cs, cfg, h_out, c_out), reps=20)
                row.update(s=t, tflops=flops / t / 1e12, useful_tflops=useful / t / 1e12, peak_frac=flops / t / 1e12 / peak)
                row["ok"] = row["err_h"] < 2e-2 and row["err_c"] < 2e-2
            except Exception as e:  # noqa: BLE001  (a config that does not compile is a result too)
                row.update(ok=False, error=f"{type(e).__name__}: {str(e)[:200]}")
            rows.append(row)
            print(f"  {cfg}: " + (f"{row['s'] * 1e3:.3f} ms {row['tflops']:.0f} TF/s err h {row['err_h']:.1e} "
                                  f"c {row['err_c']:.1e}" if "s" in row else row.get("error", "")), flush=True)
            if row.get("ok") and (best is None or row["s"] < best["s"]):
                best = row
        # the whole-chunk forms and the split form, each timed over SEQ_T steps and reported per step
        hs = torch.empty(K, SEQ_T, B, N, Dk, device=dev, dtype=torch.bfloat16)
        hs1 = torch.empty(K, 1, B, N, Dk, device=dev, dtype=torch.bfloat16)
        ref0 = reference_step(cs, t=0)
        ref_chunk = step_chunk(cs)
        chunk_rows = {"seq": [], "persist": [], "split": []}
        forms = ([("seq", c, run_seq, dict(BD=Dk, num_stages=0, prefetch=c["prefetch"])) for c in seq_configs(cs)]
                 + [("persist", c, run_persist, dict(BD=c["BD"], num_stages=c["num_stages"]))
                    for c in (persist_configs(cs) if grid == "all" else [])]
                 + [("split", None, lambda cs_, _c, h_, c_: run_split(cs_, h_, c_), dict(BD=Dk, num_stages=0))])
        for form, fcfg, run, extra in forms:
            if time.time() > size_deadline + 10:
                break
            row = dict(base, BM=(fcfg or {}).get("BM", 0), one_dot=True, num_warps=(fcfg or {}).get("num_warps", 4),
                       **extra, **{form: True})
            row.update(time_chunk_form(run, cs, fcfg, hs1, hs, c_out, ref0, flops, useful, peak, ref_chunk))
            rows.append(row)
            print(f"  {form} {fcfg or ''}: " + (f"{row['s'] * 1e3:.3f} ms/step {row['tflops']:.0f} TF/s err h "
                                               f"{row['err_h']:.1e} c {row['err_c']:.1e}" if "s" in row
                                               else row.get("error", "")), flush=True)
            if row.get("ok"):
                chunk_rows[form].append(row)
        best_seq, best_persist, split_row = (min(chunk_rows[f], key=lambda r: r["s"], default=None)
                                             for f in ("seq", "persist", "split"))
        if best is not None:
            key = tuning_key(gpu, Dk, B, K * N)
            recorded = tuning.get(key)
            tuning[key] = step_entry(best)
            use_seq = best_seq is not None and best_seq["s"] < best["s"]
            tuning[key]["seq"] = ({k: best_seq[k] for k in ("BM", "num_warps", "prefetch")} if use_seq else None)
            fastest = min(best["s"], best_seq["s"] if use_seq else float("inf"))
            use_persist = best_persist is not None and best_persist["s"] < fastest
            tuning[key]["persist"] = ({k: best_persist[k] for k in ("BD", "BM", "num_warps", "num_stages")}
                                      if use_persist else None)
            if best_persist is not None:
                print(f"  persist best {best_persist['s'] * 1e3:.3f} ms/step vs {fastest * 1e3:.3f} ms: "
                      f"{'persist' if use_persist else 'per-step'} recorded", flush=True)
            fastest = min(fastest, best_persist["s"] if use_persist else float("inf"))
            tuning[key]["split"] = split_row is not None and split_row["s"] < fastest
            if split_row is not None:
                print(f"  split {split_row['s'] * 1e3:.3f} ms/step vs {fastest * 1e3:.3f} ms: "
                      f"{'split' if tuning[key]['split'] else 'Triton kernel'} recorded", flush=True)
            if best_seq is not None:
                print(f"  whole-chunk kernel best {best_seq['s'] * 1e3:.3f} ms/step vs per-step kernel "
                      f"{best['s'] * 1e3:.3f} ms: {'seq' if use_seq else 'per-step'} recorded", flush=True)
            chosen = min(fastest, split_row["s"] if tuning[key]["split"] else float("inf"))
            tuning[key], replaced = keep_faster(recorded, tuning[key], chosen, bool(FAST_ACT.value))
            if not replaced:
                print(f"  kept the recorded entry ({recorded['ms']:.3f} ms/step < {chosen * 1e3:.3f} ms)", flush=True)
            print(f"  best {size}: {tuning[key]} {best['s'] * 1e3:.3f} ms, {best['tflops']:.0f} TF/s "
                  f"({best['peak_frac'] * 100:.0f}% of peak), {t_unfused / best['s']:.2f}x the unfused step", flush=True)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H%M%S")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date_utc": stamp, "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
            "peak_tflops": peak, "command": "python bench/step_kernel_sweep.py " + " ".join(argv or sys.argv[1:])}
    (out / f"step_kernel_sweep_{stamp}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "step_tuning.json").write_text(json.dumps(tuning, indent=1, sort_keys=True))
    lines = [f"# Fused LSTM step kernel sweep ({stamp} UTC, {gpu}, torch {torch.__version__}, CUDA {torch.version.cuda})",
             "", f"Command: `{meta['command']}`. Dense bf16 peak measured in this run: {peak:.0f} TFLOP/s.",
             "TF/s counts the executed GEMM (padded heads, 2·K·N·B·Dk·4Dk per step); 'useful' counts the unpadded D. "
             "err h / c: one step against an fp32 torch step; err chunk (whole-chunk forms): the last step's h and c "
             "against the per-step kernel's over the same chunk.",
             "", "| size | K | N | D→Dk | config | ms/step | TF/s | useful TF/s | % peak | cuBLAS bmm alone | bmm + cell | err h | err c | err chunk |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "s" not in r:
            continue
        cfg = ("split: cuBLAS bmm + gather cell" if r.get("split") else
               f"whole chunk, state in L2 (persist) BD{r['BD']} BM{r['BM']} w{r['num_warps']} s{r['num_stages']}"
               if r.get("persist") else
               f"whole chunk (seq) BM{r['BM']} w{r['num_warps']}{' prefetch' if r.get('prefetch') else ''}"
               if r.get("seq") else
               f"BD{r['BD']} BM{r['BM']} {'1dot' if r['one_dot'] else '4dot'}{' TMA' if r.get('tma') else ''}"
               f"{'+epi' if r.get('tma_epi') else ''}"
               + (f" persistent x{r['occupancy']}{' WS' if r['warp_specialize'] else ''}" if r.get("persistent")
                  else "") + (f" W-resident rows/{r.get('row_tiles') or 'all'}" if r.get("wres") else "")
               + (f" warp-specialised (Gluon){' A in registers' if r.get('a_reg') else ''}{' cooperative' if r.get('coop') else ''}{' staged out' if r.get('stage_out') else ''}" if r.get("ws") else "") + f" w{r['num_warps']} s{r['num_stages']}{' prefetch' if r.get('prefetch') else ''}"
               + (f" BK{r['BK']}" if r.get("BK") else "") + (f" ({r['regs']} regs, {r['spills']} spills)"
                                                              if r.get("regs") is not None else ""))
        lines.append(f"| {r['size']} | {r['K']} | {r['N']} | {r['D']}→{r['Dk']} | {cfg} | {r['s'] * 1e3:.3f} | "
                     f"{r['tflops']:.0f} | {r['useful_tflops']:.0f} | {r['peak_frac'] * 100:.0f}% | "
                     f"{r['cublas_bmm_s'] * 1e3:.3f} ms ({r['cublas_bmm_tflops']:.0f} TF/s) | {r['unfused_s'] * 1e3:.3f} ms | "
                     f"{r['err_h']:.1e} | {r['err_c']:.1e} | "
                     + (f"{r['err_chunk']:.1e} |" if "err_chunk" in r else "|"))
    (out / f"step_kernel_sweep_{stamp}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out}/step_kernel_sweep_{stamp}.md and step_tuning.json", flush=True)


if __name__ == "__main__":
    main()
