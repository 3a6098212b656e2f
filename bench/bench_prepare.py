"""The fused forward's per-pass preparation, timed per preset: what a pass costs before its first step.

    python bench/bench_prepare.py --sizes medium,large,xlarge --out $OUT

Every pass sees new perturbed weights, so `models.lstm_fused.prepare_fused` rebuilds, per pass, the
input table G = emb @ W_in + b, the padded output weight and (on the first chunk) the tile-interleaved
recurrent weight. Per preset (K stacked models as the trainer picks them at 12 probes) this times,
with CUDA events (median of --reps):
- `tile_recurrent_weight` at the preset's tuned BD, and the tile-by-tile form it replaced (zero W,
  then one strided copy per unit tile), against the copy ceiling: bytes read + written / measured
  device-to-device copy bandwidth;
- the input table G = emb @ W_in + b: `input_table_kernel` (the default on CUDA) against the batched
  GEMM plus strided copy it replaced, and the largest difference between the two (both sum in fp32);
  ceiling: W_in read + G written at the copy bandwidth;
- the rest of `prepare_fused` (input table, padded output weight and bias).
Writes `bench_prepare_<date>.md` under --out.
"""
from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_update import time_ms  # noqa: E402
from models import SIZE_PRESETS, build_model, preset  # noqa: E402
from models.lstm_fused import (INPUT_TABLE_TILE, _input_table, default_step_config, prepare_fused,  # noqa: E402
                               step_tiles, tile_recurrent_weight)

DEFAULT_K = {"tiny": 24, "small": 24, "medium": 12, "large": 2, "xlarge": 1}


def tile_by_tile(R, *, N: int, Dk: int, BD: int):
    """The previous `tile_recurrent_weight`: W zeroed, then one strided copy per unit tile."""
    K, _, _, D, _ = R.shape
    W = torch.zeros(K, N, Dk, Dk // BD, 4, BD, dtype=R.dtype, device=R.device)
    Rp = R.permute(0, 2, 3, 1, 4)
    for j in range(Dk // BD):
        w = min(BD, D - j * BD)
        if w > 0:
            W[:, :, :D, j, :, :w] = Rp[..., j * BD:j * BD + w]
    return W.view(K * N, Dk, 4 * Dk)


def cuda_ms(fn, reps: int) -> float:
    return time_ms(fn, reps, warmup=1)[0]


def copy_gbs(dev, reps: int) -> float:
    """Device-to-device copy bandwidth (read + write, GB/s) of a 256 MiB copy: the ceilings' yardstick."""
    src = torch.empty(1 << 28, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    return 2 * src.numel() / cuda_ms(lambda: dst.copy_(src), reps) / 1e6


def write_report(out: str, name: str, stamp: str, lines: list[str]) -> None:
    """lines as <out>/<name>_<stamp>.md, and printed."""
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}_{stamp}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="medium,large,xlarge")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--table_tiles", default="",
                    help="input-table kernel tiles to time too, BV:BU:BI:CPB:WARPS:STAGES (CPB: column blocks a "
                    "program), comma separated")
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "bench" / "results")))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_prepare.py needs a CUDA device")
    dev = torch.device("cuda")
    copy = copy_gbs(dev, a.reps)
    gpu = torch.cuda.get_device_name(dev)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H%M%S")
    lines = [f"# Per-pass preparation of the fused forward ({stamp} UTC, {gpu}, torch {torch.__version__})", "",
             f"Command: `python bench/bench_prepare.py {' '.join(argv if argv is not None else sys.argv[1:])}`. "
             f"Device-to-device copy bandwidth measured in this run: {copy:.0f} GB/s (read + write).", "",
             "| size | K | D→Dk | BD | W GB | tile W: now | tile by tile (before) | copy ceiling | input table: kernel | "
             "input table: GEMM + copy | table ceiling | table max diff | rest of prepare_fused |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    extra = []
    for size in a.sizes.split(","):
        H, N = SIZE_PRESETS[size]
        K = DEFAULT_K[size]
        cfg = preset(size, dtype="bfloat16", backend="fused")
        m = build_model(cfg, generator=torch.Generator().manual_seed(0), device=dev)
        P = {n: p.detach().unsqueeze(0).expand(K, *p.shape).contiguous() for n, p in m.named_parameters()}
        del m
        D = H // N
        Dk, BD0, _ = step_tiles(D)
        BD = default_step_config(1024, BD0, Dk=Dk, heads=K * N, device=dev).get("BD", BD0)
        R = P["R"]
        assert torch.equal(tile_recurrent_weight(R, N=N, Dk=Dk, BD=BD), tile_by_tile(R, N=N, Dk=Dk, BD=BD))
        t_now = cuda_ms(lambda: tile_recurrent_weight(R, N=N, Dk=Dk, BD=BD), a.reps)
        t_old = cuda_ms(lambda: tile_by_tile(R, N=N, Dk=Dk, BD=BD), a.reps)
        w_bytes = K * N * Dk * 4 * Dk * R.element_size()
        floor = (R.numel() * R.element_size() + w_bytes) / (copy * 1e6)
        # the input table: the Triton kernel (default on CUDA) against the GEMM + strided copy it replaced
        tab = dict(emb=P["embedding"], W_in=P["W_in"], b=P["b"], N=N, D=D, Dk=Dk)
        diff = float((_input_table(**tab, kernel=True).float() - _input_table(**tab, kernel=False).float()).abs().max())
        t_tab = cuda_ms(lambda: _input_table(**tab, kernel=True), a.reps)
        t_tab_old = cuda_ms(lambda: _input_table(**tab, kernel=False), a.reps)
        V = P["embedding"].shape[1]
        tab_floor = (P["W_in"].numel() + K * V * N * 4 * Dk) * R.element_size() / (copy * 1e6)
        for spec in filter(None, a.table_tiles.split(",")):
            fields = spec.split(":")
            if len(fields) != 6:
                sys.exit(f"bench_prepare.py: --table_tiles {spec!r} is not BV:BU:BI:CPB:WARPS:STAGES")
            bv, bu, bi, cpb, w, st = map(int, fields)
            tile = {"BV": bv, "BU": bu, "BI": bi, "CPB": cpb, "num_warps": w, "num_stages": st}
            d = float((_input_table(**tab, tile=tile).float() - _input_table(**tab, kernel=False).float()).abs().max())
            extra.append(f"| {size} | {spec} | {cuda_ms(lambda: _input_table(**tab, tile=tile), a.reps):.3f} ms | "
                         f"{d:.2e} |")
            print(extra[-1], flush=True)
        t_prep = cuda_ms(lambda: prepare_fused(P, num_heads=N), a.reps)
        lines.append(f"| {size} | {K} | {D}→{Dk} | {BD} | {w_bytes / 1e9:.2f} | {t_now:.3f} ms | {t_old:.3f} ms | "
                     f"{floor:.3f} ms | {t_tab:.3f} ms | {t_tab_old:.3f} ms | {tab_floor:.3f} ms | {diff:.2e} | "
                     f"{t_prep:.3f} ms |")
        print(lines[-1], flush=True)
        del P, R
        torch.cuda.empty_cache()
    if extra:
        lines += ["", f"Input-table kernel tiles (BV:BU:BI:CPB:warps:stages; the default is "
                  f"{':'.join(str(v) for v in INPUT_TABLE_TILE.values())}):", "",
                  "| size | tile | input table | max diff to GEMM + copy |", "|---|---|---|---|"] + extra
    write_report(a.out, "bench_prepare", stamp, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
