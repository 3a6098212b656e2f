"""Launch one preset's fused step kernel a few times, for Nsight Compute (no timing of its own).

    ncu -k regex:lstm_step --launch-skip 3 --launch-count 1 --section SpeedOfLight \\
        --section WarpStateStats --section Occupancy python bench/ncu_step.py --size large
    ncu ... --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\\.ratio" \\
        python bench/ncu_step.py --size large --config '{"ws": true, "BK": 32, "num_stages": 4}'

The kernel config is this GPU's tuning entry (models/step_tuning.json, or ZO_STEP_TUNING) with
--config (JSON) on top, as a step config is applied in training; the tensors are the kernel sweep's
(bench/step_kernel_sweep.py: B = 1024, K stacked models as the trainer picks them at 12 probes).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from models import SIZE_PRESETS  # noqa: E402
from models import lstm_fused  # noqa: E402
from models.lstm_fused import default_step_config  # noqa: E402

CHUNK_KEYS = ("seq", "split", "persist") + lstm_fused.CHUNK_KEYS  # chunk-level options, not a per-step launch's


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="large", choices=[s for s in SIZE_PRESETS if s != "xxlarge"])
    ap.add_argument("--config", default="{}", help="JSON step config on top of the tuning entry")
    ap.add_argument("--launches", type=int, default=5)
    a = ap.parse_args(argv)
    try:
        extra = json.loads(a.config)
    except ValueError as e:
        ap.error(f"--config is not JSON ({e}); e.g. --config '{{\"ws\": true}}'")
    if not isinstance(extra, dict):
        ap.error("--config must be a JSON object, e.g. '{\"BM\": 64}'")
    if not torch.cuda.is_available():
        print("ncu_step.py needs a CUDA device", file=sys.stderr)
        return 2
    import step_kernel_sweep as sweep
    dev = torch.device("cuda")
    cs = sweep.make_case(a.size, sweep.DEFAULT_K[a.size], 1024, 100, dev)
    cfg = default_step_config(1024, cs["BD"], Dk=cs["Dk"], heads=cs["K"] * cs["N"], device=dev)
    cfg = {k: v for k, v in dict(cfg, **extra).items() if k not in CHUNK_KEYS}
    print(f"{a.size}: K={cs['K']} N={cs['N']} Dk={cs['Dk']} config {cfg}", flush=True)
    h_out, c_out = torch.empty_like(cs["h"]), torch.empty_like(cs["c"])
    for _ in range(a.launches):
        sweep.run_kernel(cs, cfg, h_out, c_out)
    torch.cuda.synchronize()
    return 0


if __name__ == "__main__":
    sys.exit(main())
