"""Where a ZO forward spends its time: torch.profiler over one stacked loss evaluation.

    python bench/profile_forward.py --size large --models 1 --backend fused
Prints the CUDA kernels sorted by total time (and writes the table to --out when given).
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import build_model, preset  # noqa: E402
from tasks import Batch  # noqa: E402
from train.evaluate import stacked_batch_loss  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", default="large")
    ap.add_argument("--models", type=int, default=1)
    ap.add_argument("--backend", default="fused")
    ap.add_argument("--B", type=int, default=1024)
    ap.add_argument("--T", type=int, default=11)
    ap.add_argument("--time_chunk", type=int, default=0)
    ap.add_argument("--rows", type=int, default=18)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    dev = torch.device("cuda")
    cfg = preset(a.size, dtype="bfloat16", backend=a.backend)
    model = build_model(cfg, generator=torch.Generator().manual_seed(0), device=dev)
    P = {n: p.detach().unsqueeze(0).expand(a.models, *p.shape).contiguous() for n, p in model.named_parameters()}
    g = torch.Generator(device=dev).manual_seed(0)
    tok = torch.randint(0, cfg.vocab_size, (a.B, a.T), generator=g, device=dev)
    tgt = tok.roll(-1, 1)
    tgt[:, :2] = -100
    batch = Batch(tok, tgt)

    def run():
        with torch.inference_mode():
            return stacked_batch_loss(model, P, batch, time_chunk=a.time_chunk)
    run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        run()
    end.record()
    torch.cuda.synchronize()
    ms = start.elapsed_time(end) / 3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA, torch.profiler.ProfilerActivity.CPU]) as prof:
        run()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=a.rows)
    head = (f"{a.size} x{a.models} models, backend {a.backend}, B={a.B}, T={a.T}, time_chunk {a.time_chunk}: "
            f"{ms:.2f} ms per stacked forward+loss ({ms / a.models:.2f} ms per model)")
    print(head)
    print(table)
    if a.out:
        with open(a.out, "w") as f:
            f.write(head + "\n\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
