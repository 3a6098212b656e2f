"""Launch variants of the first-step kernels, timed per preset (what the shipped launches were chosen from).

    python bench/first_steps_variants.py --sizes medium,large,xlarge
    python bench/first_steps_variants.py --sizes large --BD 32 --only_cell [--cell_BD 64]

Per preset (K stacked models a pass: medium 12, large 4 as tuned on the H200, xlarge 1; B = 1024,
V = 100, bf16 random weights), ms per launch from CUDA events (median of --reps), twice:
- `token_table_gemm_kernel`: 8 warps and 3 stages (the former launch) against 4 warps with 3 or 4
  stages (4 / 4 shipped) and 64 columns a program; whether the table u is bit-equal to the former's;
- `first_step_gemv_kernel`: 128 columns a program (former) against 512 or 256 columns, 4 or 8 warps,
  one stage (512 / 4 / 1 shipped); the largest difference from the former's u (the sum's order moves);
- step 0 over the vocabulary (`lstm_first_step_`: the matrix-vector products and the cell), the cell at the
  rows and units a program of STEP0_LAUNCHES, and whether each writes the first one's values;
- step 1's table cell (`first_steps_cell_`, no step-0 copy) on rows in batch order and sorted by
  their step-0 token (`LSTMModel.batch_row_order`), at the rows a program, rows a sub-tile and warps
  of CELL_LAUNCHES, in unit tiles of --cell_BD (default: W's BD; 0: the launcher's default, 64 where
  it divides Dk).
Results: bench/results/logs/first_steps_launch_2026-11-29.log, first_steps_sorted_2026-11-29.log,
step1_cell_subtiles_2026-11-29_session16.log.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_prepare import cuda_ms  # noqa: E402
from models import SIZE_PRESETS  # noqa: E402
from models.lstm_fused import first_steps_cell_, first_steps_tables, lstm_first_step_, step_tiles  # noqa: E402

MODELS = {"medium": 12, "large": 4, "xlarge": 1}
# step 1's table cell: (rows a program, rows a sub-tile, warps); (16, 16, 4) is one tile a program, the
# form before sub-tiles (session 16), and (32, 8, 4) the shipped default
CELL_LAUNCHES = ((32, 8, 4), (16, 16, 4), (32, 32, 4), (16, 8, 4), (64, 8, 4), (32, 4, 4), (32, 8, 2), (64, 16, 4),
                 (128, 8, 4))
# step 0 over the V tokens of the tables (`lstm_first_step_`, matrix-vector products and cell): (rows, units) a
# program of the cell; (64, None) is the shipped launch (W's unit tile)
STEP0_LAUNCHES = ((64, None), (32, None), (128, None), (32, 64), (64, 64), (128, 64), (16, 64))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="medium,large,xlarge")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--BD", type=int, default=0, help="unit tile BD of W's tiling and the step-1 cell (0: the "
                    "preset's, step_tiles); 32 is the H200's large entry with the ping-pong step kernel")
    ap.add_argument("--cell_BD", type=int, default=-1, help="unit tile of the step-1 cell (-1: W's BD; 0: the "
                    "launcher's default, 64 where it divides Dk)")
    ap.add_argument("--only_cell", action="store_true", help="only the step-1 cell timing")
    a = ap.parse_args(argv)
    bad = [s for s in a.sizes.split(",") if s not in MODELS]
    if bad:
        sys.exit(f"first_steps_variants.py: --sizes {bad} not among {list(MODELS)}")
    if not torch.cuda.is_available():
        sys.exit("first_steps_variants.py needs a CUDA device")
    import triton
    from models import _lstm_step_triton as kern
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(0)
    B, V, dt = 1024, 100, torch.bfloat16
    for size in a.sizes.split(","):
        H, N = SIZE_PRESETS[size]
        K, D = MODELS[size], H // N
        Dk, BD, _ = step_tiles(D)
        BD = a.BD or BD
        cell_bd = BD if a.cell_BD < 0 else (a.cell_BD or None)
        if Dk % BD or (cell_bd and Dk % cell_bd):
            sys.exit(f"first_steps_variants.py: --BD {BD} / --cell_BD {a.cell_BD} does not divide {size}'s Dk {Dk}")
        W = (torch.randn(K * N, Dk, 4 * Dk, device=dev, generator=gen) * 0.05).to(dt)
        h1 = (torch.rand(K, V, N, Dk, device=dev, generator=gen) - 0.5).to(dt)
        h0 = (torch.rand(K * N, Dk, device=dev, generator=gen) - 0.5).to(dt)
        print(f"{size}: K {K} N {N} Dk {Dk}; W {W.numel() * 2 / 1e6:.0f} MB", flush=True)

        def table(BC, warps, stages):
            u = torch.empty(K * N, V, 4 * Dk, dtype=torch.float32, device=dev)
            f = lambda: kern.token_table_gemm_kernel[(triton.cdiv(V, 128), triton.cdiv(4 * Dk, BC), K * N)](  # noqa: E731
                h1, W, u, V, N, Dk=Dk, BV=128, BC=BC, BJ=32, IEEE=False, num_warps=warps, num_stages=stages)
            f()
            return cuda_ms(f, a.reps), u

        def gemv(BC, warps, stages):
            u = torch.empty(K * N, 4 * Dk, dtype=torch.float32, device=dev)
            f = lambda: kern.first_step_gemv_kernel[(triton.cdiv(4 * Dk, BC), K * N)](  # noqa: E731
                h0, W, u, Dk=Dk, BC=BC, BJ=64, num_warps=warps, num_stages=stages)
            f()
            return cuda_ms(f, a.reps), u

        for _ in range(0 if a.only_cell else 2):
            base, u0 = table(128, 8, 3)
            for cfg in ((128, 4, 4), (128, 4, 3), (64, 4, 4)):
                ms, u = table(*cfg)
                print(f"  token_table 8 warps 3 stages {base:.3f} ms | {cfg[0]} columns {cfg[1]} warps {cfg[2]} stages "
                      f"{ms:.3f} ms, equal {torch.equal(u, u0)}", flush=True)
            base, g0 = gemv(128, 4, 3)
            for cfg in ((512, 4, 1), (256, 4, 1), (512, 8, 1)):
                ms, u = gemv(*cfg)
                print(f"  gemv 128 columns {base:.3f} ms | {cfg[0]} columns {cfg[1]} warps {cfg[2]} stage "
                      f"{ms:.3f} ms, max diff {float((u - g0).abs().max()):.1e}", flush=True)
        # step 0 over the vocabulary (the tables' first launch pair), in other cell programs: the same values
        Wt0 = torch.zeros(K * N, Dk, 4 * Dk, dtype=dt, device=dev)
        Wt0[:, :D] = (torch.randn(K * N, D, 4 * Dk, device=dev, generator=gen) / D ** 0.5).to(dt)
        G0 = (torch.randn(K, V, N, 4 * Dk, device=dev, generator=gen) * 0.5).to(dt)
        c00 = torch.randn(K * N, Dk, device=dev, generator=gen)
        vocab = torch.arange(V, device=dev).view(V, 1)
        ref = None
        for _ in range(2):
            for bb, cbd in STEP0_LAUNCHES:
                if cbd and Dk % cbd:
                    continue
                h1s = torch.empty(K, V, N, Dk, dtype=dt, device=dev)
                c1s = torch.empty(K * N, V, Dk, dtype=torch.float32, device=dev)
                f = lambda: lstm_first_step_(h0.view(K, N, Dk), c00, h1s, c1s, Wt0, G0, vocab, 0,  # noqa: E731,B023
                                             K=K, N=N, Dk=Dk, BD=BD, BB=bb, cell_BD=cbd)
                ms = cuda_ms(f, a.reps)
                ref = ref or (h1s.clone(), c1s.clone())
                same = torch.equal(h1s, ref[0]) and torch.equal(c1s, ref[1])
                print(f"  step 0 over the vocabulary, cell {bb} rows x {cbd or BD} units: {ms:.3f} ms, equal {same}",
                      flush=True)
        # step 1's table cell, rows in batch order against rows sorted by their step-0 token
        Wt = torch.zeros(K * N, Dk, Dk // BD, 4, BD, dtype=dt, device=dev)
        Wt[:, :D] = (torch.randn(K * N, D, Dk // BD, 4, BD, device=dev, generator=gen) / D ** 0.5).to(dt)
        Wt = Wt.view(K * N, Dk, 4 * Dk)
        G = (torch.randn(K, V, N, 4 * Dk, device=dev, generator=gen) * 0.5).to(dt)
        c0 = torch.randn(K * N, Dk, device=dev, generator=gen)
        tok = torch.randint(0, V, (B, 11), device=dev, generator=gen)
        tok_sorted = tok[torch.argsort(tok[:, 0], stable=True)].contiguous()
        tabs = dict(K=K, N=N, Dk=Dk, BD=BD)
        tables = first_steps_tables(h0.view(K, N, Dk), c0, Wt, G, **tabs, dtype=dt)
        hs = torch.empty(K, 2, B, N, Dk, dtype=dt, device=dev)
        c = torch.empty(K * N, B, Dk, dtype=torch.float32, device=dev)
        for _ in range(2):
            for name, t in (("batch order", tok), ("sorted", tok_sorted)):
                for bb, sub, warps in CELL_LAUNCHES:
                    ms = cuda_ms(lambda: first_steps_cell_(tables, hs, c, G, t, **tabs, BB=bb,  # noqa: B023
                                                           num_warps=warps, copy_h1=False, cell_BD=cell_bd,
                                                           sub_rows=sub), a.reps)
                    print(f"  step-1 cell, rows in {name}, {bb} rows in sub-tiles of {sub} x {cell_bd or 'default'} "
                          f"units x {warps} warps: {ms:.3f} ms", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
