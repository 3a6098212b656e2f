"""Where a whole ZO step's time goes, host and device: wall time, GPU busy time and the host's Python.

    python bench/profile_step.py --sizes tiny,small,medium --probes 12 --out $OUT

Per size (the step `bench/bench_step.py` times, built the same way):
- wall seconds per step (median of --steps);
- torch.profiler over --prof_steps steps: the union of the GPU kernels' busy intervals per step, so
  wall - busy is the time the GPU waits for the host; the top kernels and the top host ops;
- the longest idle gaps of the GPU between kernels under the profiler, with the kernels around them;
- cProfile over --prof_steps steps: the host's Python functions by cumulative time.
Writes `profile_step_<date>.md` under --out. Runs on CPU too (no GPU columns there).
"""
from __future__ import annotations

import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_step import Bench, ZOSetup, build_parser  # noqa: E402


def _busy_intervals(events) -> list[list]:
    """The union of the device kernels' [start, end) intervals (microseconds), in order, each as
    [start, end, first kernel's name, last-ending kernel's name]."""
    iv = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start)
    merged: list[list] = []
    for s, e, name in iv:
        if merged and s <= merged[-1][1]:
            if e >= merged[-1][1]:
                merged[-1][1], merged[-1][3] = e, name
        else:
            merged.append([s, e, name, name])
    return merged


def busy_seconds(events) -> float:
    """Length of the union of the device kernels' [start, end) intervals (microseconds in, seconds out)."""
    return sum(e - s for s, e, _, _ in _busy_intervals(events)) * 1e-6


def idle_gaps(events, *, top: int = 15, min_us: float = 20.0) -> tuple[list[tuple[float, str, str]], int, float]:
    """The device's idle intervals between kernels: (the `top` longest as (microseconds, kernel before,
    kernel after), how many last at least min_us, their total in microseconds)."""
    busy = _busy_intervals(events)
    gaps = [(nxt[0] - cur[1], cur[3], nxt[2]) for cur, nxt in zip(busy, busy[1:])]
    long = [g for g in gaps if g[0] >= min_us]
    return sorted(gaps, key=lambda g: -g[0])[:top], len(long), sum(g[0] for g in long)


def profile_size(b: Bench, size: str, probes: int, a) -> list[str]:
    z = ZOSetup(b, size, probes, B=a.batch, T=a.T, time_chunk=a.time_chunk, mpp=a.models_per_pass)
    step_no = iter(range(1 << 30))

    def run(n: int) -> float:
        """Seconds per step over the next n steps (synchronised at the end)."""
        t = time.perf_counter()
        for _ in range(n):
            z.step(next(step_no))
        b.sync()
        return (time.perf_counter() - t) / max(n, 1)

    run(a.warmup)
    walls = [run(1) for _ in range(a.steps)]
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if b.cuda else [])
    with torch.profiler.profile(activities=acts, record_shapes=a.shapes,
                                with_stack=a.stacks > 0, experimental_config=(
                                    torch._C._profiler._ExperimentalConfig(verbose=True) if a.stacks > 0 else None)) as prof:
        prof_wall = run(a.prof_steps)
    events = prof.events()
    busy = busy_seconds(events) / a.prof_steps if b.cuda else None
    pr = cProfile.Profile()
    pr.enable()
    cprof_wall = run(a.prof_steps)
    pr.disable()
    s = io.StringIO()
    pstats.Stats(pr, stream=s).sort_stats("cumulative").print_stats(a.rows)
    wall = statistics.median(walls)
    out = [f"## {size}, {probes} probes (M = {z.M} models per pass, time chunk {z.tc})", "",
           f"- wall per step: median {wall * 1e3:.3f} ms over {len(walls)} steps "
           f"(min {min(walls) * 1e3:.3f}, max {max(walls) * 1e3:.3f})",
           f"- under torch.profiler: {prof_wall * 1e3:.3f} ms per step"
           + (f"; GPU busy {busy * 1e3:.3f} ms per step ({busy / prof_wall * 100:.0f}%), "
              f"idle {max(0.0, prof_wall - busy) * 1e3:.3f} ms" if busy is not None else ""),
           f"- under cProfile: {cprof_wall * 1e3:.3f} ms per step", ""]
    by_time = "self_cuda_time_total" if b.cuda else "self_cpu_time_total"
    if b.cuda:
        out += ["### GPU kernels (sum over the profiled steps)", "", "```",
                prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.rows), "```", ""]
        worst, n_long, t_long = idle_gaps(events, top=a.rows)
        out += [f"### The GPU's idle gaps between kernels ({a.prof_steps} profiled steps)", "",
                f"{n_long} gaps of at least 20 us, {t_long / 1e3:.3f} ms in all; the longest:", "",
                "| idle | kernel before | kernel after |", "|---|---|---|"]
        out += [f"| {us:.1f} us | {before[:70]} | {after[:70]} |" for us, before, after in worst]
        out += [""]
    if a.shapes:
        out += ["### Ops by input shape, by device time (sum over the profiled steps)", "", "```",
                prof.key_averages(group_by_input_shape=True).table(sort_by=by_time, row_limit=a.rows),
                "```", ""]
    if a.stacks > 0:
        out += [f"### Ops by Python call site ({a.stacks} frames), by device time", "", "```",
                prof.key_averages(group_by_stack_n=a.stacks).table(sort_by=by_time, row_limit=a.rows,
                                                                   max_src_column_width=120), "```", ""]
    out += ["### Host ops (sum over the profiled steps)", "", "```",
            prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows), "```", "",
            "### Host Python, cumulative (cProfile)", "", "```", s.getvalue(), "```", ""]
    del z
    b.free()
    return out


def main(argv=None) -> int:
    p = build_parser()
    p.add_argument("--prof_steps", type=int, default=3, help="steps under each profiler")
    p.add_argument("--rows", type=int, default=30, help="rows of each table")
    p.add_argument("--shapes", action="store_true", help="also a table of the ops grouped by their input shapes")
    p.add_argument("--stacks", type=int, default=0, help="also a table of the ops grouped by their innermost N "
                   "Python frames (0: none)")
    a = p.parse_args(argv)
    if a.stacks < 0:
        p.error(f"--stacks must be >= 0 (Python frames per call site; 0: no such table), got {a.stacks}")
    a.dtype = a.dtype or "bfloat16"
    a.smoke = False
    b = Bench(a)
    lines = [f"# profile_step: where a ZO step's time goes ({b.stamp})", "",
             f"- GPU: {b.res['meta']['gpu']}; torch {torch.__version__}, CUDA {torch.version.cuda}",
             "- command: `python bench/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:]) + "`",
             f"- B = {a.batch}, T = {a.T}, dtype {a.dtype}, backend {a.backend}, cuda_graphs {a.cuda_graphs}", ""]
    for size in a.sizes:
        for probes in a.probes:
            b.log(f"{size}, {probes} probes")
            lines += profile_size(b, size, probes, a)
    path = Path(a.out) / f"profile_step_{b.stamp}.md"
    path.write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:40]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
