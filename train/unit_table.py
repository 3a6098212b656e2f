"""`rge_series_experiments.py --unittest`: seconds per step and measured peak memory for every
(size preset, optimiser) that fits the device, like the paper's timing/VRAM table.

Each row runs in its own process, so its peak memory is its own (CUDA allocator peak and NVML on
GPU, peak RSS on CPU) and an out-of-memory row does not end the table.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

from models import SIZE_PRESETS, ModelConfig, estimate_memory_bytes, available_memory_bytes, format_bytes, param_count

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPT_LR = {"bptt": 0.5, "cd": 0.05, "fd": 0.05}
SEQ_LENGTH = 10


def parse_optimizer(tag: str) -> tuple[str, int]:
    tag = tag.strip().lower()
    if tag == "bptt":
        return "bptt", 0
    for kind in ("cd", "fd"):
        if tag.startswith(kind) and tag[len(kind):].isdigit() and int(tag[len(kind):]) > 0:
            return kind, int(tag[len(kind):])
    raise ValueError(f"unknown optimiser {tag!r} in --unittest_optimizers; use bptt, cdN or fdN (e.g. cd96)")


def default_sizes(device: str, batch: int) -> list[str]:
    """Presets whose ZO working set fits in half the free memory of the device."""
    have = available_memory_bytes(device)
    if not device.startswith("cuda"):
        return ["tiny", "small"]
    out = []
    for name, (h, k) in SIZE_PRESETS.items():
        cfg = ModelConfig(hidden_size=h, num_heads=k, dtype="bfloat16")
        if estimate_memory_bytes(cfg, batch_size=batch, time_chunk=2 * SEQ_LENGTH + 4, master_bytes=4) < 0.5 * have:
            out.append(name)
    return out


def run_unit_table(args, argv) -> int:
    device = args.device
    batch = args.unittest_batch_size or (1024 if device.startswith("cuda") else 64)
    sizes = [s.strip() for s in args.unittest_sizes.split(",")] if args.unittest_sizes else default_sizes(device, batch)
    for s in sizes:
        if s not in SIZE_PRESETS:
            raise ValueError(f"unknown size {s!r} in --unittest_sizes; choose among {list(SIZE_PRESETS)}")
    opts = [parse_optimizer(t) for t in args.unittest_optimizers.split(",")]
    rows = []
    print(f"unit test table on {device}: sizes {sizes}, optimisers {[k + (str(n) if n else '') for k, n in opts]}, "
          f"batch {batch}, copy task seq_length {SEQ_LENGTH}, {args.unittest_iters} steps each (one fixed batch)")
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            hidden, heads = SIZE_PRESETS[size]
            for kind, n in opts:
                label = "BPTT-SGD" if kind == "bptt" else f"{kind.upper()}-RGE@{n}"
                summ = os.path.join(tmp, f"{size}_{kind}{n}.json")
                cmd = [sys.executable, os.path.join(ROOT, "rge_series_experiments.py"), "--device", device,
                       "--task", "copy", "--model_type", "LSTM", "--seq_length", str(SEQ_LENGTH),
                       "--micro_batch_size", str(batch), "--max_iterations", str(args.unittest_iters),
                       "--input_size", "100", "--hidden_size", str(hidden), "--num_heads", str(heads),
                       "--learning_rate_and_epsilon", str(OPT_LR[kind]), "--overfit_to_one_batch_flag", "true",
                       "--log_interval", "1", "--verbose", "false", "--summary_out", summ, "--seed", str(args.seed)]
                if args.dtype:
                    cmd += ["--dtype", args.dtype]
                if kind == "bptt":
                    cmd += ["--use_bptt", "true"]
                else:
                    cmd += ["--num_perturbations", str(n)] + (["--fd_rge", "true"] if kind == "fd" else [])
                t0 = time.time()
                proc = subprocess.run(cmd, capture_output=True, text=True)
                row = {"size": size, "params": param_count(ModelConfig(hidden_size=hidden, num_heads=heads)),
                       "optimizer": label, "wall_s": round(time.time() - t0, 1)}
                if proc.returncode == 0 and os.path.exists(summ):
                    with open(summ) as f:
                        s = json.load(f)
                    row.update(s_per_step=s["s_per_step"], peak_mem_bytes=s["peak_mem_bytes"],
                               first_loss=s["first_loss"], last_loss=s["last_loss"],
                               loss_fell=s["last_loss"] < s["first_loss"], status="ok")
                else:
                    err = (proc.stderr or proc.stdout).strip().splitlines()
                    oom = any("out of memory" in ln.lower() or "available" in ln for ln in err)
                    row.update(status="OOM" if oom else "failed", error=err[-1][:200] if err else "")
                rows.append(row)
                print(_fmt_row(row), flush=True)
    md = _markdown(rows, device, batch, args)
    os.makedirs(args.unittest_out, exist_ok=True)
    with open(os.path.join(args.unittest_out, "unittest_table.md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.unittest_out, "unittest_table.json"), "w") as f:
        json.dump({"device": device, "batch": batch, "command": " ".join(["rge_series_experiments.py"] + list(argv)),
                   "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)
    print()
    print(md)
    print(f"DONE! Table written to {args.unittest_out}/unittest_table.md and .json "
          f"(peak memory above is measured per run; on GPU also check nvidia-smi).")
    bad = [r for r in rows if r.get("status") == "ok" and not r["loss_fell"]]
    failed = [r for r in rows if r.get("status") == "failed"]
    if bad or failed:
        print(f"FAILED: loss did not fall in {len(bad)} row(s), {len(failed)} row(s) failed to run", file=sys.stderr)
        return 1
    return 0


def _fmt_row(r: dict) -> str:
    if r.get("status") != "ok":
        return f"  {r['size']:>7} {r['optimizer']:>12}: {r['status']} {r.get('error', '')}"
    return (f"  {r['size']:>7} {r['optimizer']:>12}: {r['s_per_step']:.4f} s/step, peak {format_bytes(r['peak_mem_bytes'])}, "
            f"loss {r['first_loss']:.3f} -> {r['last_loss']:.3f} ({'falls' if r['loss_fell'] else 'DOES NOT FALL'})")


def _markdown(rows, device, batch, args) -> str:
    mem_kind = "torch.cuda.max_memory_allocated" if device.startswith("cuda") else "process peak RSS"
    lines = [f"# Series timing and memory ({device}, batch {batch}, copy task, {args.unittest_iters} steps, "
             f"{time.strftime('%Y-%m-%d')})", "",
             f"Seconds per step (median after the first step) and measured peak memory ({mem_kind}).", "",
             "| size | params | optimizer | s/step | peak memory | loss first -> last | status |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") == "ok":
            lines.append(f"| {r['size']} | {r['params']:,} | {r['optimizer']} | {r['s_per_step']:.4f} | "
                         f"{format_bytes(r['peak_mem_bytes'])} | {r['first_loss']:.3f} -> {r['last_loss']:.3f} | "
                         f"{'ok' if r['loss_fell'] else 'loss did not fall'} |")
        else:
            lines.append(f"| {r['size']} | {r['params']:,} | {r['optimizer']} | - | - | - | {r['status']} |")
    return "\n".join(lines) + "\n"
