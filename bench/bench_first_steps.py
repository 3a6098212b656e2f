"""Steps 0 and 1 of a chunk that starts from the broadcast initial state, timed per preset: the step-0
matrix-vector form plus one step kernel (`first_gemv`) against both steps through tables over the
vocabulary (`step1_table`, `models.lstm_fused.lstm_first_steps_table_`).

    python bench/bench_first_steps.py --sizes medium,large,xlarge --out $OUT

Per preset (K stacked models a pass as the trainer picks them at 12 probes, B = 1024, V = 100, bf16,
this GPU's tuned step config), with CUDA events (median of --reps):
- `first_gemv`: `lstm_first_step_` then `lstm_step_` for step 1 (the step kernel over B rows);
- `step1_table`: its tables (`first_steps_tables`: step 0 over the V tokens and the V-row GEMM) and
  step 1's cell (`first_steps_cell_`) at BB rows a program and W warps, for each --cells variant;
  the total is tables + the best cell;
- whether step 0's h equals the first form's bit for bit, and the largest difference of step 1's h
  and c between the two (the recurrent sum runs in another order), each variant writing into
  NaN-filled buffers;
- the ceiling of the table form: step 1's c (fp32) and both steps' h written once, plus the input
  gates and the tables read once, at the device-to-device copy bandwidth measured in the same run.
Writes `bench_first_steps_<date>.md` under --out.
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

from bench_prepare import DEFAULT_K, copy_gbs, cuda_ms, write_report  # noqa: E402
from models import SIZE_PRESETS  # noqa: E402
from models.lstm_fused import (CHUNK_KEYS, default_step_config, first_steps_cell_, first_steps_tables,  # noqa: E402
                               lstm_first_step_, lstm_step_, step_tiles)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="medium,large,xlarge")
    ap.add_argument("--cells", default="32x4,64x4,16x4", help="step 1 cell variants, BBxWARPS, comma separated")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--vocab", type=int, default=100)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "bench" / "results")))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("bench_first_steps.py needs a CUDA device")
    cells = [tuple(map(int, c.split("x"))) for c in a.cells.split(",")]
    dev = torch.device("cuda")
    copy = copy_gbs(dev, a.reps)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d_%H%M%S")
    B, V = a.batch, a.vocab
    head = " | ".join(f"cell {bb}x{w}" for bb, w in cells)
    lines = [f"# Steps 0 and 1 from the broadcast state ({stamp} UTC, {torch.cuda.get_device_name(dev)}, "
             f"torch {torch.__version__})", "",
             f"Command: `python bench/bench_first_steps.py {' '.join(argv if argv is not None else sys.argv[1:])}`. "
             f"B = {B}, V = {V}, bf16. Device-to-device copy bandwidth measured in this run: {copy:.0f} GB/s "
             "(read + write). ms per pass (steps 0 and 1 of one chunk).", "",
             f"| size | K | Dk | BD | first_gemv + step kernel | tables | {head} | step1_table total | "
             "table ceiling | step 0 h equal | max diff h | max diff c |",
             "|---|---|---|---|---|---|" + "---|" * len(cells) + "---|---|---|---|---|"]
    gen = torch.Generator(device=dev).manual_seed(0)
    for size in a.sizes.split(","):
        H, N = SIZE_PRESETS[size]
        K = DEFAULT_K[size]
        D = H // N
        Dk, BD0, BK0 = step_tiles(D)
        cfg = default_step_config(B, BD0, Dk=Dk, heads=K * N, device=dev)
        cfg = {k: v for k, v in cfg.items() if k not in ("seq", "split", "persist") + CHUNK_KEYS}
        BD, BK = cfg.pop("BD", BD0), cfg.pop("BK", BK0)
        dt = torch.bfloat16
        W = torch.zeros(K * N, Dk, Dk // BD, 4, BD, dtype=dt, device=dev)
        W[:, :D, :, :, :] = (torch.randn(K * N, D, Dk // BD, 4, BD, device=dev, generator=gen) / D ** 0.5).to(dt)
        W = W.view(K * N, Dk, 4 * Dk)
        G = (torch.randn(K, V, N, 4 * Dk, device=dev, generator=gen) * 0.5).to(dt)
        h0 = torch.randn(K, N, Dk, device=dev, generator=gen).tanh().to(dt)
        c0 = torch.randn(K * N, Dk, device=dev, generator=gen)
        tok = torch.randint(0, V, (B, 11), device=dev, generator=gen)
        hs = torch.empty(K, 2, B, N, Dk, dtype=dt, device=dev)
        c = torch.empty(K * N, B, Dk, dtype=torch.float32, device=dev)

        def gemv_then_step():
            lstm_first_step_(h0, c0, hs[:, 0], c, W, G, tok, 0, K=K, N=N, Dk=Dk, BD=BD)
            lstm_step_(hs[:, 0], hs[:, 1], W, G, tok, 1, c, c, K=K, N=N, Dk=Dk, BD=BD, BK=BK, **cfg)

        gemv_then_step()
        ref_h0, ref_h, ref_c = hs[:, 0].clone(), hs[:, 1].clone(), c.clone()
        t_old = cuda_ms(gemv_then_step, a.reps)
        tabs = dict(K=K, N=N, Dk=Dk, BD=BD)
        t_tab = cuda_ms(lambda: first_steps_tables(h0, c0, W, G, **tabs, dtype=dt), a.reps)
        tables = first_steps_tables(h0, c0, W, G, **tabs, dtype=dt)
        t_new, dh, dc, same0 = [], 0.0, 0.0, True
        for bb, w in cells:
            def cell(bb=bb, w=w):
                first_steps_cell_(tables, hs, c, G, tok, **tabs, BB=bb, num_warps=w)
            hs.fill_(float("nan"))
            c.fill_(float("nan"))
            cell()
            dh = max(dh, float((hs[:, 1].float() - ref_h.float()).abs().max()))
            dc = max(dc, float((c - ref_c).abs().max()))
            same0 &= torch.equal(hs[:, 0], ref_h0)
            t_new.append(cuda_ms(cell, a.reps))
        rows = K * N * B * Dk
        tab = K * N * V * Dk * (4 * 4 + 4 + 2)            # u (fp32, 4 gates), c1 (fp32), h1 (bf16)
        floor = (rows * (4 + 2 + 2) + K * V * N * 4 * Dk * 2 + tab) / (copy * 1e6)
        lines.append(f"| {size} | {K} | {Dk} | {BD} | {t_old:.3f} ms | {t_tab:.3f} ms | "
                     + " | ".join(f"{t:.3f} ms" for t in t_new)
                     + f" | {t_tab + min(t_new):.3f} ms | {floor:.3f} ms | {'yes' if same0 else 'NO'} | {dh:.2e} | {dc:.2e} |")
        print(lines[-1], flush=True)
        del W, G, hs, c, ref_h0, ref_h, ref_c, tables
        torch.cuda.empty_cache()
    write_report(a.out, "bench_first_steps", stamp, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
