#!/usr/bin/env python3
"""GPU benchmark of the CD-RGE training step at the paper's shapes (issue 4, part 1).

    PYTHONUNBUFFERED=1 python bench/bench_step.py --out $OUT                  # everything, ~5-6 min on one H200 (budget 400 s)
    python bench/bench_step.py --sizes tiny,small --probes 12 --sections peak,zo
    python bench/bench_step.py --smoke --out /tmp/b                            # CPU end-to-end check (~15 s)

What it measures (see bench/README.md):
  peak     dense bf16 GEMM (8192^3) on this GPU, the ceiling every FLOP figure is compared with
  bmm      the recurrent bmm [N, B, D] @ [N, D, 4D] at the paper's head sizes, and padded to x8 / x64
  zo       the real ZO step (train.zo_step.zo_step) for every size preset at 12 and 64 probes
  bptt     autograd + SGD steps: cuDNN nn.LSTM (dense hidden) and our head-structured LSTMModel
  sweep    medium at T = 10 .. 10,000 with a time-chunked forward: s/step and peak memory

Results go to --out as bench_step_<date>.md and .json, rewritten after every row, so a run stopped by
its time limit still leaves everything measured so far. The tables are printed at the end too.
A config that does not fit in --time_budget_s (predicted from the rows measured before it) is skipped
with a note instead of being started.
"""
from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from models.lstm_backends import BACKENDS as LSTM_BACKENDS  # noqa: E402
from models import (SIZE_PRESETS, auto_models_per_pass, auto_time_chunk, build_model, check_fits, estimate_memory_bytes,  # noqa: E402
                    param_count, preset, supports_stacked)
from tasks import IGNORE_INDEX, Batch, masked_cross_entropy  # noqa: E402
from train.cli_args import add_cuda_graphs  # noqa: E402
from train.evaluate import batch_loss, stack_layouts_fn, stacked_batch_loss  # noqa: E402
from train.graphs import build_graphs, graphs_setting, use_cuda_graphs  # noqa: E402
from train.series import bptt_step  # noqa: E402
from train.zo_step import zo_step  # noqa: E402
from zo.comm import LocalComm  # noqa: E402
from zo.estimator import ZOConfig, ZOEngine  # noqa: E402

GiB = float(1 << 30)
VOCAB = 100
INPUT = 100
SCORED_FROM = 2          # "2 input and 9 target tokens": positions 0 and 1 are not scored
SECTIONS = ("peak", "bmm", "zo", "bptt", "sweep")

# ---------------------------------------------------------------------------------------------
# The paper's code on one H200 (../shared/DESIGN.md, "The measured anchor"), and issue 4's targets
# ---------------------------------------------------------------------------------------------
PAPER_ZO = {  # size: params, {probes: (s/step, GiB or None)}
    "tiny": (150_740, {12: (0.081, 0.10), 64: (0.40, None)}),
    "small": (1_139_700, {12: (0.075, 0.47)}),
    "medium": (10_627_700, {12: (0.162, 2.66)}),
    "large": (112_606_100, {12: (0.953, 18.2), 64: (5.1, None)}),
    "xlarge": (1_162_045_100, {12: (5.92, 85.7)}),
}
PAPER_SWEEP = {10: (0.164, 2.66), 100: (1.14, 8.6), 1000: (11.0, 8.6)}   # medium, 12 probes
PAPER_GEMM_TFLOPS = 735.0
PAPER_BMM_TFLOPS = {20: 4.0, 50: 37.0, 150: 108.0, 300: 155.0, 850: 193.0}
TARGET_S = {12: {"tiny": 0.002, "small": 0.004, "medium": 0.020, "large": 0.150, "xlarge": 1.3},
            64: {"tiny": 0.010, "large": 0.8}}
TARGET_XLARGE_GIB = 12.0
TARGET_FLAT = 0.05
TARGET_PEAK_FRAC = 0.60
PEAK_FRAC_SIZES = ("large", "xlarge")


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def csv_ints(s: str) -> list[int]:
    try:
        out = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}")
    if not out or any(v < 1 for v in out):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return out


def csv_names(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def fmt_s(x) -> str:
    if x is None:
        return "n/a"
    return f"{x * 1e3:.2f} ms" if x < 1 else f"{x:.3f} s"


def fmt_f(x, nd=2, suffix="") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, str):
        return x
    return f"{x:.{nd}f}{suffix}"


def fmt_x(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def median(xs):
    return statistics.median(xs) if xs else None


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, getattr(torch.cuda, "OutOfMemoryError", ())):
        return True
    msg = str(exc).lower()
    return "out of memory" in msg or "alloc_failed" in msg or "cudaerrormemoryallocation" in msg


def short_error(exc: BaseException) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first[:300]}"


class Clock:
    def __init__(self, budget_s: float):
        self.t0 = time.perf_counter()
        self.budget = float(budget_s)

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def deadline(self) -> float:
        return self.t0 + self.budget


class NVML:
    """Used GPU memory through NVML (nvidia-ml-py), when importable: this process's, else the device's."""

    def __init__(self, dev: torch.device):
        self.h = None
        self.why = None
        self.pynvml = None
        if dev.type != "cuda":
            self.why = "not a CUDA device"
            return
        try:
            import pynvml
            pynvml.nvmlInit()
            idx = dev.index if dev.index is not None else torch.cuda.current_device()
            vis = os.environ.get("CUDA_VISIBLE_DEVICES", "")
            ids = [v.strip() for v in vis.split(",") if v.strip()]
            if ids and all(v.isdigit() for v in ids) and idx < len(ids):
                idx = int(ids[idx])
            self.h = pynvml.nvmlDeviceGetHandleByIndex(idx)
            self.pynvml = pynvml
        except Exception as e:  # noqa: BLE001 - any failure means 'n/a'
            self.why = short_error(e)

    def process_used(self):
        if self.h is None:
            return None
        try:
            procs = self.pynvml.nvmlDeviceGetComputeRunningProcesses(self.h)
        except Exception:  # noqa: BLE001
            return None
        for p in procs:
            if p.pid == os.getpid() and p.usedGpuMemory is not None:
                return int(p.usedGpuMemory)
        return None

    def device_used(self):
        if self.h is None:
            return None
        try:
            return int(self.pynvml.nvmlDeviceGetMemoryInfo(self.h).used)
        except Exception:  # noqa: BLE001
            return None

    def clocks(self):
        """(SM clock MHz, power W, clock-limit reason bits) now, or None without NVML."""
        if self.h is None:
            return None
        nv = self.pynvml
        try:
            sm = int(nv.nvmlDeviceGetClockInfo(self.h, nv.NVML_CLOCK_SM))
            power = nv.nvmlDeviceGetPowerUsage(self.h) / 1000.0
            get = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
                nv.nvmlDeviceGetCurrentClocksThrottleReasons
            return sm, power, int(get(self.h))
        except Exception:  # noqa: BLE001
            return None

    def driver(self):
        if self.h is None:
            return None
        try:
            v = self.pynvml.nvmlSystemGetDriverVersion()
            return v.decode() if isinstance(v, bytes) else str(v)
        except Exception:  # noqa: BLE001
            return None


# NVML's clock-limit ("throttle" / "event") reason bits (nvml.h); the idle bit is left out
CLOCK_LIMIT_BITS = {0x2: "applications clocks", 0x4: "SW power cap", 0x8: "HW slowdown", 0x10: "sync boost",
                    0x20: "SW thermal", 0x40: "HW thermal", 0x80: "HW power brake", 0x100: "display clocks"}


def clock_limit_names(bits: int) -> list[str]:
    """The names of the clock-limit reasons set in NVML's reason bits (idle and unknown bits left out)."""
    return [name for bit, name in CLOCK_LIMIT_BITS.items() if bits & bit]


def summarize_clocks(samples) -> dict:
    """{sm_mhz_median, sm_mhz_min, power_w_median, clock_limits (reasons seen in any sample), clock_samples}
    of (SM MHz, W, reason bits) samples; {} without samples."""
    if not samples:
        return {}
    bits = 0
    for _, _, r in samples:
        bits |= r
    return {"sm_mhz_median": statistics.median(s[0] for s in samples), "sm_mhz_min": min(s[0] for s in samples),
            "power_w_median": round(statistics.median(s[1] for s in samples), 1),
            "clock_limits": clock_limit_names(bits), "clock_samples": len(samples)}


class ClockSampler:
    """Samples NVML's SM clock, power and clock-limit reasons every `period_s` in a thread, between
    start() and stop() (no samples without NVML). NVML reads do not touch the CUDA stream."""

    def __init__(self, nvml: NVML, period_s: float = 0.02):
        import threading
        self.nvml, self.period_s, self.samples = nvml, period_s, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True) if nvml.h is not None else None

    def _run(self):
        while not self._stop.is_set():
            c = self.nvml.clocks()
            if c is not None:
                self.samples.append(c)
            self._stop.wait(self.period_s)

    def start(self) -> "ClockSampler":
        if self._thread is not None:
            self._thread.start()
        return self

    def stop(self) -> dict:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        return summarize_clocks(self.samples)


# ---------------------------------------------------------------------------------------------
# the bench context: device, clock, results, writing
# ---------------------------------------------------------------------------------------------
class Bench:
    def __init__(self, args):
        self.args = args
        self.dev = torch.device(args.device)
        self.cuda = self.dev.type == "cuda"
        self.clock = Clock(args.time_budget_s)
        self.nvml = NVML(self.dev)
        self.dtype = getattr(torch, args.dtype)
        now = datetime.datetime.now()
        self.stamp = now.strftime("%Y-%m-%d_%H%M%S")
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.md_path = self.out / f"bench_step_{self.stamp}.md"
        self.json_path = self.out / f"bench_step_{self.stamp}.json"
        self.res = {
            "meta": self._meta(now),
            "peak": {},
            "bmm_ceiling": [],
            "zo_steps": [],
            "bptt": [],
            "context_sweep": {"rows": []},
            "targets": [],
            "notes": [],
        }

    # -- environment
    def _meta(self, now) -> dict:
        a = self.args
        m = {
            "date": now.isoformat(timespec="seconds"),
            "command": "python " + shlex.join([os.path.relpath(sys.argv[0], os.getcwd())
                                               if os.path.exists(sys.argv[0]) else sys.argv[0]] + sys.argv[1:]),
            "cwd": os.getcwd(),
            "device": str(self.dev),
            "gpu": torch.cuda.get_device_name(self.dev) if self.cuda else f"CPU ({platform.processor() or platform.machine()})",
            "gpu_memory_gib": (torch.cuda.get_device_properties(self.dev).total_memory / GiB) if self.cuda else None,
            "driver": self.nvml.driver(),
            "nvml": "ok" if self.nvml.h is not None else f"n/a ({self.nvml.why})",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "python": platform.python_version(),
            "git": _git_rev(),
            "smoke": bool(a.smoke),
            "time_budget_s": a.time_budget_s,
            "settings": {"batch": a.batch, "T": a.T, "steps": a.steps, "warmup": a.warmup,
                         "probes": a.probes, "sizes": a.sizes, "models_per_pass": a.models_per_pass,
                         "time_chunk": a.time_chunk, "micro_batch": a.micro_batch, "dtype": a.dtype,
                         "master_dtype": "float32", "lr": a.lr, "vocab": VOCAB, "input": INPUT,
                         "scored_positions": f"{SCORED_FROM}..T-1", "sections": a.sections,
                         "sweep_T": a.sweep_T, "sweep_size": a.sweep_size, "bptt_sizes": a.bptt_sizes,
                         "cuda_graphs": graphs_setting(getattr(a, "cuda_graphs", "auto"))},
            "elapsed_s": 0.0,
            "finished": False,
        }
        return m

    def log(self, msg: str) -> None:
        print(f"[bench {self.clock.elapsed():7.1f}s] {msg}", flush=True)

    def note(self, msg: str) -> None:
        self.res["notes"].append(msg)
        self.log("note: " + msg)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.dev)

    def free(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.dev)
            torch.cuda.empty_cache()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.dev)

    def memory(self) -> dict:
        """Peak torch memory since the last reset, and NVML's used memory now (call before freeing)."""
        if not self.cuda:
            return {"peak_alloc_gib": None, "peak_reserved_gib": None, "nvml_proc_gib": None, "nvml_device_gib": None}
        proc, devu = self.nvml.process_used(), self.nvml.device_used()
        return {"peak_alloc_gib": torch.cuda.max_memory_allocated(self.dev) / GiB,
                "peak_reserved_gib": torch.cuda.max_memory_reserved(self.dev) / GiB,
                "nvml_proc_gib": proc / GiB if proc is not None else None,
                "nvml_device_gib": devu / GiB if devu is not None else None}

    @property
    def peak_tflops(self):
        return self.res["peak"].get("tflops")

    @property
    def peak_sustained_tflops(self):
        return (self.res["peak"].get("sustained") or {}).get("tflops")

    # -- output
    def write(self) -> None:
        self.res["meta"]["elapsed_s"] = round(self.clock.elapsed(), 1)
        self.res["targets"] = build_targets(self)
        _atomic_write(self.json_path, json.dumps(_jsonable(self.res), indent=1))
        _atomic_write(self.md_path, render_markdown(self))


def _git_rev():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return (rev + ("+dirty" if dirty else "")) if rev else None
    except Exception:  # noqa: BLE001
        return None


def _jsonable(v):
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (torch.dtype, torch.device)):
        return str(v)
    return v


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def make_batch(B: int, T: int, dev, seed: int = 1234) -> Batch:
    """A fixed random char batch: tokens in [0, vocab); every position scored except the first two."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (B, T + 1), generator=g)
    inputs, targets = tokens[:, :-1].clone(), tokens[:, 1:].clone()
    targets[:, :min(SCORED_FROM, T - 1)] = IGNORE_INDEX
    return Batch(inputs=inputs, targets=targets, scored_from=min(SCORED_FROM, T - 1)).to(dev)


def time_fn(b: Bench, fn, *, reps: int, warm: int) -> list[float]:
    """Device time of fn() per call (CUDA events; perf_counter on CPU), each call timed on its own."""
    for _ in range(warm):
        fn()
    b.sync()
    times = []
    if b.cuda:
        evs = []
        for _ in range(reps):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            evs.append((s, e))
        b.sync()
        times = [s.elapsed_time(e) / 1e3 for s, e in evs]
    else:
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return times


def timed_steps(b: Bench, step_fn, *, warmup: int, steps: int, deadline: float, before_timed=None) -> dict:
    """Run warm-up steps, then up to `steps` timed steps (synchronised wall clock each), stopping when
    the next step would pass `deadline`. Long steps (> 5 s) get one warm-up only."""
    warm, times, notes = [], [], []
    i = 0
    for _ in range(max(1, warmup)):
        b.sync()
        t = time.perf_counter()
        step_fn(i)
        b.sync()
        warm.append(time.perf_counter() - t)
        i += 1
        if warm[-1] > 5.0 or time.perf_counter() + warm[-1] > deadline:
            break
    if before_timed is not None:
        before_timed()
    sampler = ClockSampler(b.nvml).start()
    for _ in range(steps):
        est = max(times) if times else warm[-1]
        if time.perf_counter() + est > deadline:
            notes.append(f"time budget: {len(times)} of {steps} timed steps run")
            break
        b.sync()
        t = time.perf_counter()
        step_fn(i)
        b.sync()
        times.append(time.perf_counter() - t)
        i += 1
    return {"warmup_s": warm, "times_s": times, "notes": notes, "next_step": i, "clocks": sampler.stop()}


# ---------------------------------------------------------------------------------------------
# 1. dense bf16 peak and the recurrent bmm ceilings
# ---------------------------------------------------------------------------------------------
def bench_peak(b: Bench) -> None:
    """The burst peak (median of 20 timed GEMMs, ~30 ms of work: the ceiling every row's peak_frac uses)
    and, with --peak_sustain_s > 0, the sustained one: the same GEMM back to back for that long, timed in
    chunks, the median of the chunks after the first third (by then the board sits at its power limit if
    the GEMM draws more; the clocks table shows it). Rows also report peak_frac_sustained against it."""
    n = b.args.gemm_n
    b.log(f"peak: {n}^3 {b.args.dtype} GEMM")
    try:
        x = torch.randn(n, n, device=b.dev, dtype=b.dtype)
        y = torch.randn(n, n, device=b.dev, dtype=b.dtype)
        reps = 3 if b.args.smoke else 20
        flops = 2.0 * n ** 3
        sampler = ClockSampler(b.nvml).start()
        ts = time_fn(b, lambda: torch.mm(x, y), reps=reps, warm=3)
        t = median(ts)
        b.res["peak"] = {"gemm_n": n, "dtype": b.args.dtype, "reps": reps, "median_s": t,
                         "tflops": flops / t / 1e12, "tflops_best": flops / min(ts) / 1e12,
                         "paper_anchor_tflops": PAPER_GEMM_TFLOPS, **sampler.stop()}
        b.log(f"peak: {b.res['peak']['tflops']:.1f} TFLOP/s (median of {reps}), best {b.res['peak']['tflops_best']:.1f}")
        if b.args.peak_sustain_s > 0:
            b.res["peak"]["sustained"] = sustained_gemm(b, lambda: torch.mm(x, y), flops, b.args.peak_sustain_s)
            sus = b.res["peak"]["sustained"]
            b.log(f"peak, sustained {sus['seconds']:.1f} s: {sus['tflops']:.1f} TFLOP/s "
                  f"(SM {sus.get('sm_mhz_median')} MHz, {sus.get('power_w_median')} W)" if sus.get("tflops")
                  else f"peak, sustained: {sus.get('status')} ({sus.get('note')})")
        del x, y
    except Exception as e:  # noqa: BLE001
        b.res["peak"] = {"gemm_n": n, "status": "error", "note": short_error(e)}
        b.log(f"peak: failed: {short_error(e)}")
    b.free()


def sustained_gemm(b: Bench, fn, flops: float, seconds: float, chunk: int = 25) -> dict:
    """fn() back to back for ~`seconds` (CUDA only), timed in chunks of `chunk` calls by CUDA events with
    no sync in between: TFLOP/s as the median of the chunks after the first third, and the clocks
    sampled over those chunks."""
    if not b.cuda:
        return {"status": "skipped", "note": "needs CUDA"}
    per = median(time_fn(b, fn, reps=3, warm=1))
    n_chunks = max(3, int(seconds / max(per * chunk, 1e-6)))
    first_kept = n_chunks // 3
    sampler = ClockSampler(b.nvml)
    evs = []
    for i in range(n_chunks):
        if i == first_kept:
            b.sync()            # the host runs far ahead of the GPU: sample only the kept chunks
            sampler.start()
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        for _ in range(chunk):
            fn()
        e.record()
        evs.append((s, e))
    b.sync()
    clocks = sampler.stop()
    ts = [s.elapsed_time(e) / 1e3 / chunk for s, e in evs]
    return {"seconds": sum(ts) * chunk, "chunks": n_chunks, "calls_per_chunk": chunk,
            "tflops": flops / median(ts[first_kept:]) / 1e12, "tflops_first_chunk": flops / ts[0] / 1e12, **clocks}


def _bmm_tflops(b: Bench, N: int, B: int, D: int, Dp: int, reps: int):
    """Useful TF/s of h[N, B, Dp] @ R[N, Dp, 4Dp] counting only the unpadded 2*N*B*D*4D FLOPs."""
    h = torch.randn(N, B, Dp, device=b.dev, dtype=b.dtype)
    R = torch.randn(N, Dp, 4 * Dp, device=b.dev, dtype=b.dtype)
    out = torch.empty(N, B, 4 * Dp, device=b.dev, dtype=b.dtype)
    t = median(time_fn(b, lambda: torch.bmm(h, R, out=out), reps=reps, warm=2))
    del h, R, out
    return 2.0 * N * B * D * 4 * D / t / 1e12, t


def bench_bmm(b: Bench) -> None:
    """The recurrence's per-step matmul at each preset's (heads, head size), as is and padded."""
    B = b.args.batch
    reps = 1 if b.args.smoke else 10
    max_bytes = (1 << 20) if b.args.smoke else (6 << 30)
    for size, (hidden, heads) in SIZE_PRESETS.items():
        if size == "xxlarge":
            continue
        D = hidden // heads
        N = 1 if b.args.smoke else heads
        row = {"size": size, "D": D, "N": N, "B": B, "paper_tflops": PAPER_BMM_TFLOPS.get(D)}
        try:
            row["tflops"], row["time_s"] = _bmm_tflops(b, N, B, D, D, reps)
            for mult in (8, 64):
                Dp = -(-D // mult) * mult
                row[f"D_pad{mult}"] = Dp
                row[f"tflops_pad{mult}"], row[f"time_pad{mult}_s"] = _bmm_tflops(b, N, B, D, Dp, reps)
                row[f"gain_pad{mult}"] = row["time_s"] / row[f"time_pad{mult}_s"]
            # the stacked forward folds K models into the head axis: K*N heads in one bmm
            one = (N * B * D + N * D * 4 * D + N * B * 4 * D) * 2
            K = max(1, min(24, max_bytes // max(one, 1)))
            row["K_folded"] = K
            if K > 1:
                row["tflops_folded"], _ = _bmm_tflops(b, K * N, B, D, D, reps)
            b.log(f"bmm D={D} N={N}: {row['tflops']:.1f} TF/s; pad8 {row['tflops_pad8']:.1f}, "
                  f"pad64 {row['tflops_pad64']:.1f} (useful TF/s); K={K} folded "
                  f"{fmt_f(row.get('tflops_folded'), 1)}")
        except Exception as e:  # noqa: BLE001
            row["status"] = "OOM" if is_oom(e) else "error"
            row["note"] = short_error(e)
            b.log(f"bmm D={D}: {row['note']}")
        b.res["bmm_ceiling"].append(row)
        b.free()
    b.write()


# ---------------------------------------------------------------------------------------------
# 2. the ZO step
# ---------------------------------------------------------------------------------------------
class ZOSetup:
    """Model, engine, batch and loss closures of one ZO config, built the way train/series.py does."""

    def __init__(self, b: Bench, size: str, probes: int, *, B: int, T: int, time_chunk: int, mpp: int,
                 cfg=None):
        a = b.args
        self.cfg = cfg or preset(size, vocab_size=VOCAB, input_size=INPUT, dtype=a.dtype, backend=a.backend)
        self.tc = min(T, time_chunk) if time_chunk > 0 else T
        self.mb = a.micro_batch if 0 < a.micro_batch < B else B
        self.use_layouts = bool(getattr(a, "stack_layouts", 1))
        self.model = build_model(self.cfg, generator=torch.Generator().manual_seed(a.seed), device=b.dev)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.engine = ZOEngine(self.model.named_parameters(),
                               config=ZOConfig(num_perturbations=probes, master_dtype=torch.float32),
                               run_seed=a.seed)
        wanted = 2 * probes
        self.auto = mpp <= 0
        if not supports_stacked(self.model):
            self.M = 1
        elif mpp > 0:
            self.M = mpp
        else:
            self.M = auto_models_per_pass(self.cfg, device=b.dev, batch_size=self.mb, time_chunk=self.tc,
                                          wanted=wanted)
        if time_chunk <= 0:
            self.tc = auto_time_chunk(self.cfg, device=b.dev, batch_size=self.mb, models=self.M, T=T)
        self.probes = probes
        self.lr = a.lr
        self.graphs_setting = getattr(a, "cuda_graphs", "auto")
        self.cuda_graphs = b.cuda and use_cuda_graphs(self.graphs_setting, device=b.dev,
                                                      n_params=param_count(self.cfg), models_per_pass=self.M)
        self.batch_device, self.graphed, self.step_graph = b.dev, None, None
        self.comm = LocalComm(b.dev)
        self.set_batch(make_batch(B, T, b.dev, seed=a.seed + 1))

    def set_batch(self, batch: Batch) -> None:
        self.batch = batch
        model, tc, mb = self.model, self.tc, self.mb

        def loss_fn():
            with torch.inference_mode():
                return batch_loss(model, batch, time_chunk=tc, micro_batch_size=mb)

        graphed = None
        if self.cuda_graphs:
            if self.graphed is None:
                self.graphed, self.step_graph = build_graphs(
                    self.graphs_setting, lambda P, bt: stacked_batch_loss(model, P, bt, time_chunk=tc, micro_batch_size=mb),
                    device=self.batch_device, n_params=param_count(self.cfg), models_per_pass=self.M)
            graphed = self.graphed

        def stacked(P):
            with torch.inference_mode():
                if graphed is not None:
                    return graphed(P, batch)
                return stacked_batch_loss(model, P, batch, time_chunk=tc, micro_batch_size=mb)

        self.loss_fn, self.stacked = loss_fn, stacked
        self.layouts = stack_layouts_fn(model, batch.inputs.shape[0], mb) if self.use_layouts else None

    def step(self, i: int):
        return zo_step(self.engine, step=i, lr=self.lr, loss_for_probe=lambda _i: self.loss_fn, comm=self.comm,
                       stacked_loss=self.stacked, models_per_pass=self.M, stack_layouts=self.layouts,
                       step_graph=self.step_graph, batch=self.batch)

    @property
    def path(self) -> str:
        return "stacked" if self.M > 1 else "per-probe"

    def seeds_per_pass(self) -> int:
        return max(1, self.M // 2) if self.M > 1 else 1

    def eval_pass(self, seeds) -> torch.Tensor:
        """Probe losses of `seeds`, by the same engine call zo_step makes for this M."""
        if self.M > 1:
            return self.engine.evaluate_stacked(seeds, self.stacked, lr=self.lr, models_per_pass=self.M)
        return torch.cat([self.engine.evaluate([s], self.loss_fn, lr=self.lr) for s in seeds])

    def one_pass_time(self, b: Bench) -> float:
        """Seconds of one engine pass (noise + stacking + forward of M models, or one probe's 2 forwards),
        on the first seeds of a step."""
        seeds = self.engine.seeds(99_999)[:self.seeds_per_pass()]
        b.sync()
        t = time.perf_counter()
        self.eval_pass(seeds)
        b.sync()
        dt = time.perf_counter() - t
        self.engine.clear_step_cache()
        return dt

    def breakdown(self, b: Bench) -> dict:
        """One step split into probe evaluation (noise + stacking + forwards) and the update, plus the
        forward alone (one pass of the same M models at the unperturbed weights, times passes/step)."""
        eng = self.engine
        seeds = eng.seeds(100_000)
        b.sync()
        t0 = time.perf_counter()
        losses = self.eval_pass(seeds)
        b.sync()
        t1 = time.perf_counter()
        coefs = eng.coefficients(losses, lr=self.lr)
        eng.update(seeds, coefs, lr=self.lr)
        b.sync()
        t2 = time.perf_counter()
        passes = self.probes / self.seeds_per_pass()
        if self.M > 1:
            Mg = 2 * min(self.probes, self.seeds_per_pass())
            P = {n: p.detach().unsqueeze(0).expand(Mg, *p.shape).contiguous()
                 for n, p in self.model.named_parameters()}
            for _ in range(2 if self.cuda_graphs else 1):   # graphed: eager on a new key, then the capture
                self.stacked(P)
            b.sync()
            t3 = time.perf_counter()
            self.stacked(P)
            b.sync()
            fwd = (time.perf_counter() - t3) * passes
            del P
        else:
            b.sync()
            t3 = time.perf_counter()
            self.loss_fn()
            b.sync()
            fwd = (time.perf_counter() - t3) * 2 * self.probes
        ev = t1 - t0
        return {"eval_s": ev, "update_s": t2 - t1, "forward_s": fwd, "engine_overhead_s": max(0.0, ev - fwd)}


def predict_zo(b: Bench, size: str, probes: int, params: int):
    """(step seconds, setup seconds) predicted from the rows measured so far, or (None, None)."""
    done = [r for r in b.res["zo_steps"] if r.get("s_step") and not r.get("label")]
    same = [r for r in done if r["size"] == size]
    step = None
    if same:
        r = max(same, key=lambda r: r["probes"])
        step = r["s_step"] * probes / r["probes"]
    else:
        smaller = [r for r in done if r["params"] <= params]
        if smaller:
            r = max(smaller, key=lambda r: (r["params"], r["probes"]))
            step = r["s_step"] * (params / r["params"]) * (probes / r["probes"])
    # setup scaled linearly from the largest model set up so far: smaller models' setup is mostly fixed
    # cost (compiles), which a per-parameter rate taken from them multiplies a thousandfold at xlarge
    built = [r for r in done if r.get("setup_s") and r["params"] >= 1e6]
    ref = max(built, key=lambda r: r["params"]) if built else None
    setup = ref["setup_s"] * max(1.0, params / ref["params"]) + 1.0 if ref else None
    return step, setup


def run_zo(b: Bench, size: str, probes: int, *, mpp: int | None = None, label: str | None = None) -> dict:
    a = b.args
    B, T = a.batch, a.T
    mpp = a.models_per_pass if mpp is None else mpp
    cfg = preset(size, vocab_size=VOCAB, input_size=INPUT, dtype=a.dtype, backend=a.backend)
    P = param_count(cfg)
    hidden, heads = SIZE_PRESETS[size]
    flops = 2.0 * P * B * T * 2 * probes
    paper = PAPER_ZO.get(size, (None, {}))[1].get(probes)
    row = {"size": size, "hidden": hidden, "heads": heads, "D": hidden // heads, "params": P, "probes": probes,
           "B": B, "T": T, "time_chunk": min(T, a.time_chunk) if a.time_chunk > 0 else T, "flops": flops,
           "label": label, "models_per_pass_auto": mpp <= 0,
           "paper_s": paper[0] if paper else None, "paper_gib": paper[1] if paper else None,
           "target_s": TARGET_S.get(probes, {}).get(size)}
    if b.peak_tflops:
        row["floor_s"] = flops / (b.peak_tflops * 1e12)
    tag = f"zo {size} probes={probes}" + (f" [{label}]" if label else "")
    tc = row["time_chunk"]
    mb = a.micro_batch if 0 < a.micro_batch < B else B
    row["est_mem_gib"] = estimate_memory_bytes(cfg, batch_size=mb, time_chunk=tc, zo=True, master_bytes=4) / GiB
    if size == "xxlarge":
        try:
            check_fits(cfg, device=b.dev, batch_size=mb, time_chunk=tc, zo=True, master_bytes=4)
        except ValueError as e:
            row.update(status="skipped", note=f"does not fit per models.check_fits: {e}")
            b.log(f"{tag}: skipped ({row['note']})")
            return row
    step_pred, setup_pred = predict_zo(b, size, probes, P)
    row["predicted_s"] = step_pred
    if step_pred is not None:
        need = (setup_pred or 0.0) + 2 * step_pred
        if need > b.clock.left():
            row.update(status="skipped", note=f"time budget: predicted {need:.0f} s for setup + 1 warm-up + 1 step "
                                               f"(step ~{step_pred:.2f} s), {b.clock.left():.0f} s left")
            b.log(f"{tag}: skipped ({row['note']})")
            return row
    b.log(f"{tag}: {P:,} params, {flops / 1e12:.2f} TFLOP/step, predicted "
          f"{fmt_s(step_pred) if step_pred else 'n/a'}/step")
    s = None
    try:
        b.free()
        b.reset_peak()
        t0 = time.perf_counter()
        s = ZOSetup(b, size, probes, B=B, T=T, time_chunk=a.time_chunk, mpp=mpp, cfg=cfg)
        b.sync()
        row["time_chunk"] = s.tc
        row["setup_s"] = time.perf_counter() - t0
        row["models_per_pass"], row["path"], row["graphed"] = s.M, s.path, s.cuda_graphs
        row["passes_per_step"] = math.ceil(probes / s.seeds_per_pass())
        b.log(f"{tag}: setup {row['setup_s']:.1f} s, models_per_pass={s.M} ({s.path}, "
              f"{row['passes_per_step']} passes/step)")
        if s.cuda_graphs:
            b.reset_peak()          # graphed: the warm-up's capture allocates the graph's pool, keep it in the peak
        res = timed_steps(b, s.step, warmup=a.warmup, steps=a.steps, deadline=b.clock.deadline(),
                          before_timed=None if s.cuda_graphs else b.reset_peak)
        row["warmup_s"], row["times_s"] = res["warmup_s"], res["times_s"]
        row.update(res["clocks"])
        row["steps_timed"] = len(res["times_s"])
        row.update(b.memory())
        if res["times_s"]:
            row["s_step"] = median(res["times_s"])
            row["s_step_min"] = min(res["times_s"])
        else:
            row["s_step"] = res["warmup_s"][-1]
            res["notes"].append("no timed step fitted the budget: s/step is the last warm-up step")
        row["status"] = "ok" if row["steps_timed"] >= min(a.steps, 5) else "partial"
        if s.cuda_graphs:
            whole = s.step_graph is not None and s.step_graph.replays > 0
            row["graph"] = "step" if whole else "loss"
            res["notes"].insert(0, "CUDA graph (whole step)" if whole else "CUDA graph (probe loss)")
        if res["notes"]:
            row["note"] = "; ".join(res["notes"])
        _derive(b, row)
        b.log(f"{tag}: {fmt_s(row['s_step'])}/step (median of {row['steps_timed']}), "
              f"{fmt_f(row.get('tflops'), 2)} TFLOP/s, {fmt_x(row.get('x_floor'))} floor, "
              f"peak {fmt_f(row.get('peak_alloc_gib'), 2)} GiB")
        # where the time goes (costs about 1.3 steps): when that is little of what is left, or for the
        # sizes with a peak-fraction target when it still fits
        cost = 1.3 * row["s_step"]
        if "breakdown" in a.sections and (cost < 0.25 * b.clock.left()
                                          or (size in PEAK_FRAC_SIZES and cost < b.clock.left() - 30)):
            row["breakdown"] = s.breakdown(b)
            bd = row["breakdown"]
            b.log(f"{tag}: breakdown eval {fmt_s(bd['eval_s'])} (forward {fmt_s(bd['forward_s'])}, noise/stacking "
                  f"{fmt_s(bd['engine_overhead_s'])}), update {fmt_s(bd['update_s'])}")
    except Exception as e:  # noqa: BLE001
        row["status"] = "OOM" if is_oom(e) else "error"
        row["note"] = short_error(e)
        if row["status"] == "error":
            traceback.print_exc()
        row.update({k: v for k, v in b.memory().items() if k not in row})
        b.log(f"{tag}: {row['status']}: {row['note']}")
    finally:
        s = None
        b.free()
    return row


def _derive(b: Bench, row: dict) -> None:
    t = row.get("s_step")
    if not t:
        return
    row["tflops"] = row["flops"] / t / 1e12
    if b.peak_tflops:
        row["peak_frac"] = row["tflops"] / b.peak_tflops
        row["x_floor"] = t / row["floor_s"]
    if b.peak_sustained_tflops:
        row["peak_frac_sustained"] = row["tflops"] / b.peak_sustained_tflops
    if row.get("paper_s"):
        row["speedup_vs_paper"] = row["paper_s"] / t
    if row.get("paper_gib") and row.get("peak_alloc_gib"):
        row["mem_vs_paper"] = row["paper_gib"] / row["peak_alloc_gib"]


# ---------------------------------------------------------------------------------------------
# 3. BPTT rows
# ---------------------------------------------------------------------------------------------
def run_bptt(b: Bench, size: str, kind: str) -> dict:
    a = b.args
    B, T = a.batch, a.T
    H, heads = SIZE_PRESETS[size]
    if kind == "cudnn":
        P = VOCAB * INPUT + 4 * H * (INPUT + H) + 8 * H + H * VOCAB + VOCAB
        what = f"torch.nn.LSTM (cuDNN on CUDA), dense hidden {H} (not head-structured)"
    else:
        P = param_count(preset(size, vocab_size=VOCAB, input_size=INPUT))
        what = f"our LSTMModel ({heads} heads of {H // heads}) with autograd, torch backend"
    row = {"size": size, "kind": kind, "what": what, "hidden": H, "params": P, "B": B, "T": T,
           "flops": 6.0 * P * B * T, "optimizer": "SGD"}
    tag = f"bptt {kind} {size}"
    done = [r for r in b.res["bptt"] if r.get("kind") == kind and r.get("s_step")]
    if done:
        r = max(done, key=lambda r: r["params"])
        pred = r["s_step"] * P / r["params"]
        row["predicted_s"] = pred
        if 3 * pred > b.clock.left():
            row.update(status="skipped", note=f"time budget: predicted {pred:.1f} s/step, {b.clock.left():.0f} s left")
            b.log(f"{tag}: skipped ({row['note']})")
            return row
    b.log(f"{tag}: {P:,} params")
    dtypes = [b.dtype] + ([torch.float16] if (kind == "cudnn" and b.dtype == torch.bfloat16 and b.cuda) else [])
    for dt in dtypes:
        mods = opt = model = batch = None
        try:
            b.free()
            b.reset_peak()
            batch = make_batch(B, T, b.dev, seed=a.seed + 2)
            if kind == "cudnn":
                fk = {"device": b.dev, "dtype": dt}
                mods = torch.nn.ModuleList([torch.nn.Embedding(VOCAB, INPUT, **fk),
                                            torch.nn.LSTM(INPUT, H, batch_first=True, **fk),
                                            torch.nn.Linear(H, VOCAB, **fk)])
                opt = torch.optim.SGD(mods.parameters(), lr=a.lr)
                emb, lstm, head = mods
                lstm.flatten_parameters()   # built in place on the device: not flattened by a .to()

                def step(i, emb=emb, lstm=lstm, head=head, opt=opt, batch=batch):
                    opt.zero_grad(set_to_none=True)
                    y, _ = lstm(emb(batch.inputs))
                    loss = masked_cross_entropy(head(y), batch.targets)
                    loss.backward()
                    opt.step()
            else:
                cfg = preset(size, vocab_size=VOCAB, input_size=INPUT, dtype=str(dt).replace("torch.", ""))
                model = build_model(cfg, generator=torch.Generator().manual_seed(a.seed), device=b.dev)
                opt = torch.optim.SGD(model.parameters(), lr=a.lr)

                def step(i, model=model, opt=opt, batch=batch):
                    bptt_step(model, opt, batch, micro_batch_size=B, grad_clip=0.0)
            row["dtype"] = str(dt).replace("torch.", "")
            res = timed_steps(b, step, warmup=a.warmup, steps=a.steps, deadline=b.clock.deadline(),
                              before_timed=b.reset_peak)
            row.update(b.memory())
            row["warmup_s"], row["times_s"], row["steps_timed"] = res["warmup_s"], res["times_s"], len(res["times_s"])
            row["s_step"] = median(res["times_s"]) if res["times_s"] else res["warmup_s"][-1]
            row["tflops"] = row["flops"] / row["s_step"] / 1e12
            if b.peak_tflops:
                row["peak_frac"] = row["tflops"] / b.peak_tflops
            row["status"] = "ok" if row["steps_timed"] >= min(a.steps, 5) else "partial"
            if res["notes"]:
                row["note"] = "; ".join(res["notes"])
            b.log(f"{tag}: {fmt_s(row['s_step'])}/step ({row['dtype']}), {row['tflops']:.2f} TFLOP/s, "
                  f"peak {fmt_f(row.get('peak_alloc_gib'), 2)} GiB")
            break
        except Exception as e:  # noqa: BLE001
            row["status"] = "OOM" if is_oom(e) else "error"
            row["note"] = f"{str(dt).replace('torch.', '')}: {short_error(e)}"
            b.log(f"{tag}: {row['status']}: {row['note']}")
            if row["status"] == "OOM":
                break
        finally:
            mods = opt = model = batch = step = None  # noqa: F841
            b.free()
    return row


# ---------------------------------------------------------------------------------------------
# 4. context sweep
# ---------------------------------------------------------------------------------------------
def run_sweep(b: Bench) -> None:
    a = b.args
    size, probes, B = a.sweep_size, a.sweep_probes, a.batch
    sw = b.res["context_sweep"]
    sw.update({"size": size, "probes": probes, "B": B, "time_chunk": a.time_chunk,
               "method_note": "full: median of timed zo_step calls; extrapolated: one engine pass (noise, "
                              "stacking and forward of M models, or one probe's two forwards) timed at this T, "
                              "times passes per step, plus the update time measured at the smallest T. Peak "
                              "memory is measured directly in both cases (the eval phase holds the T-dependent "
                              "working set)."})
    Ts = sorted(a.sweep_T)
    s = None
    try:
        b.free()
        b.reset_peak()
        cfg = preset(size, vocab_size=VOCAB, input_size=INPUT, dtype=a.dtype, backend=a.backend)
        # one M and one time chunk for every T, so that memory compares like with like (the chunk the
        # trainer would pick for a 64-step sequence when --time_chunk is 0)
        tc = a.time_chunk if a.time_chunk > 0 else auto_time_chunk(cfg, device=b.dev, batch_size=B, models=1, T=64)
        b.log(f"sweep {size} probes={probes}: building")
        s = ZOSetup(b, size, probes, B=B, T=min(Ts), time_chunk=a.time_chunk, mpp=0, cfg=cfg)
        s.tc = tc
        if a.models_per_pass > 0:
            s.M = a.models_per_pass
        elif supports_stacked(s.model):
            s.M = auto_models_per_pass(cfg, device=b.dev, batch_size=s.mb, time_chunk=min(tc, max(Ts)),
                                       wanted=2 * probes)
        sw["models_per_pass"], sw["path"] = s.M, s.path
        sw["time_chunk"] = tc
        passes = math.ceil(probes / s.seeds_per_pass())
        sw["passes_per_step"] = passes
        b.log(f"sweep: models_per_pass={s.M} ({s.path}), {passes} passes/step, time_chunk {tc}")
        last_full = None       # (T, s_step)
        update_s = None
        for T in Ts:
            paper = PAPER_SWEEP.get(T) if size == "medium" and probes == 12 else None
            row = {"T": T, "time_chunk": min(tc, T), "models_per_pass": s.M,
                   "flops": 2.0 * param_count(cfg) * B * T * 2 * probes,
                   "paper_s": paper[0] if paper else None, "paper_gib": paper[1] if paper else None}
            tag = f"sweep T={T}"
            try:
                b.free()
                s.set_batch(make_batch(B, T, b.dev, seed=a.seed + 3))
                pred = last_full[1] * T / last_full[0] if last_full else None
                row["predicted_s"] = pred
                if pred is not None and pred / passes > b.clock.left() - 5:
                    row.update(status="skipped", note=f"time budget: one pass predicted {pred / passes:.0f} s, "
                                                      f"{b.clock.left():.0f} s left")
                    b.log(f"{tag}: skipped ({row['note']})")
                    sw["rows"].append(row)
                    b.write()
                    continue
                full = pred is None or pred <= a.sweep_max_step_s
                if full:
                    warm = a.warmup if (pred or 0) < 3 else (1 if (pred or 0) < 8 else 0)
                    b.reset_peak()
                    res = timed_steps(b, s.step, warmup=warm, steps=a.steps, deadline=b.clock.deadline(),
                                      before_timed=b.reset_peak)
                    row.update(b.memory())
                    row["times_s"], row["warmup_s"] = res["times_s"], res["warmup_s"]
                    row["steps_timed"] = len(res["times_s"])
                    row["s_step"] = median(res["times_s"]) if res["times_s"] else res["warmup_s"][-1]
                    row["method"] = f"full ({row['steps_timed']} timed steps)"
                    if res["notes"]:
                        row["note"] = "; ".join(res["notes"])
                    last_full = (T, row["s_step"])
                    if update_s is None:
                        bd = s.breakdown(b)
                        update_s = bd["update_s"]
                        row["breakdown"] = bd
                    elif b.clock.left() > 10 * row["s_step"] / passes:
                        # check the extrapolation against this measured row
                        tp = s.one_pass_time(b)
                        row["extrapolation_check_s"] = tp * passes + update_s
                else:
                    b.reset_peak()
                    tp = s.one_pass_time(b)
                    row.update(b.memory())
                    row["s_step"] = tp * passes + (update_s or 0.0)
                    row["one_pass_s"] = tp
                    row["steps_timed"] = 0
                    row["method"] = f"extrapolated (1 of {passes} passes timed)"
                row["status"] = "ok"
                row["tflops"] = row["flops"] / row["s_step"] / 1e12
                if paper:
                    row["speedup_vs_paper"] = paper[0] / row["s_step"]
                b.log(f"{tag}: {fmt_s(row['s_step'])}/step [{row['method']}], peak "
                      f"{fmt_f(row.get('peak_alloc_gib'), 3)} GiB")
            except Exception as e:  # noqa: BLE001
                row["status"] = "OOM" if is_oom(e) else "error"
                row["note"] = short_error(e)
                if row["status"] == "error":
                    traceback.print_exc()
                b.log(f"{tag}: {row['status']}: {row['note']}")
            sw["rows"].append(row)
            b.write()
    except Exception as e:  # noqa: BLE001
        sw["status"] = "OOM" if is_oom(e) else "error"
        sw["note"] = short_error(e)
        traceback.print_exc()
        b.log(f"sweep: {sw['status']}: {sw['note']}")
    finally:
        s = None
        b.free()
    _sweep_flatness(b)
    b.write()


def _sweep_flatness(b: Bench) -> None:
    sw = b.res["context_sweep"]
    rows = [r for r in sw["rows"] if r.get("status") == "ok" and r.get("peak_alloc_gib")]
    sw["peak_gib_by_T"] = {r["T"]: r["peak_alloc_gib"] for r in rows}
    if len(rows) >= 2:
        peaks = [r["peak_alloc_gib"] for r in rows]
        sw["max_over_min"] = max(peaks) / min(peaks)
        sw["flat_within_5pct"] = sw["max_over_min"] <= 1 + TARGET_FLAT
        chunked = [r["peak_alloc_gib"] for r in rows if r["T"] >= r["time_chunk"] and r["T"] >= sw.get("time_chunk", 0)]
        if len(chunked) >= 2:
            sw["max_over_min_T_ge_chunk"] = max(chunked) / min(chunked)
            sw["flat_within_5pct_T_ge_chunk"] = sw["max_over_min_T_ge_chunk"] <= 1 + TARGET_FLAT
    sw["T_measured"] = [r["T"] for r in rows]
    sw["T_missing"] = [T for T in b.args.sweep_T if T not in sw["T_measured"]]


# ---------------------------------------------------------------------------------------------
# targets, markdown
# ---------------------------------------------------------------------------------------------
def _zo_row(b: Bench, size: str, probes: int):
    for r in b.res["zo_steps"]:
        if r["size"] == size and r["probes"] == probes and not r.get("label") and r.get("s_step") \
                and r.get("status") in ("ok", "partial"):
            return r
    return None


def build_targets(b: Bench) -> list[dict]:
    out = []

    def add(target, measured, ok, note=""):
        out.append({"target": target, "measured": measured,
                    "status": "not measured" if ok is None else ("met" if ok else "missed"), "note": note})

    for probes, table in TARGET_S.items():
        for size, lim in table.items():
            r = _zo_row(b, size, probes)
            add(f"{probes} probes, {size} <= {fmt_s(lim)}/step", fmt_s(r["s_step"]) if r else "n/a",
                (r["s_step"] <= lim) if r else None,
                (f"paper {fmt_s(r['paper_s'])}" if r and r.get("paper_s") else "") +
                (" (partial: fewer timed steps)" if r and r.get("status") == "partial" else ""))
    r = _zo_row(b, "xlarge", 12)
    mem = r.get("peak_alloc_gib") if r else None
    add(f"xlarge peak memory <= {TARGET_XLARGE_GIB:g} GiB (12 probes)", fmt_f(mem, 2, " GiB") if mem else "n/a",
        (mem <= TARGET_XLARGE_GIB) if mem else None, "paper 85.7 GiB")
    sw = b.res["context_sweep"]
    Ts = b.args.sweep_T
    if "flat_within_5pct" in sw:
        complete = not sw.get("T_missing")
        note = f"max/min {sw['max_over_min']:.3f} over T = {sw['T_measured']}"
        if not complete:
            note += f"; T = {sw['T_missing']} not measured"
        if "max_over_min_T_ge_chunk" in sw:
            note += f"; over T >= time_chunk only: {sw['max_over_min_T_ge_chunk']:.3f}"
        # memory must not grow with T: judged over the T that fill at least one time chunk (shorter
        # sequences hold a shorter chunk and use less); the all-T ratio is in the note
        flat = sw.get("flat_within_5pct_T_ge_chunk", sw["flat_within_5pct"])
        ratio = sw.get("max_over_min_T_ge_chunk", sw["max_over_min"])
        ok = flat if (complete or not flat) else None
        add(f"{b.args.sweep_size}, T = {min(Ts)}..{max(Ts)}: peak memory flat within 5% (T >= time chunk "
            f"{sw.get('time_chunk')})", f"{ratio:.3f}x", ok, note)
    else:
        add(f"{b.args.sweep_size}, T = {min(Ts)}..{max(Ts)}: peak memory flat within 5%", "n/a", None,
            "needs CUDA memory statistics" if not b.cuda else "")
    for size in PEAK_FRAC_SIZES:
        for probes in sorted({12, *b.args.probes}):
            r = _zo_row(b, size, probes)
            if r is None and probes != 12:
                continue
            pf = r.get("peak_frac") if r else None
            add(f"{size}, {probes} probes: >= {TARGET_PEAK_FRAC:.0%} of measured bf16 peak",
                f"{pf:.1%}" if pf is not None else "n/a", (pf >= TARGET_PEAK_FRAC) if pf is not None else None,
                f"{r['tflops']:.1f} of {b.peak_tflops:.0f} TFLOP/s" if pf is not None else ""
                + (f"; {r['peak_frac_sustained']:.1%} of the sustained peak ({b.peak_sustained_tflops:.0f})"
                   if pf is not None and r.get("peak_frac_sustained") else ""))
    add("2 GPUs, large, 12 probes/GPU: >= 1.9x the 1-GPU throughput", "n/a", None,
        "needs 2 GPUs and the distributed trainer; not part of this 1-GPU bench")
    return out


def md_table(headers, rows) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for r in rows:
        lines.append("| " + " | ".join("" if c is None else str(c) for c in r) + " |")
    return "\n".join(lines)


def _gib(x):
    return fmt_f(x, 2) if x is not None else "n/a"


def render_tables(b: Bench) -> str:
    res, parts = b.res, []
    pk = res["peak"]
    parts.append(f"## Dense {b.args.dtype} GEMM peak (measured in this run)\n")
    if pk.get("tflops"):
        parts.append(f"{pk['gemm_n']}^3 {pk['dtype']} GEMM: **{pk['tflops']:.1f} TFLOP/s** (median of {pk['reps']}; "
                     f"best {pk['tflops_best']:.1f}); the paper's anchor measured {PAPER_GEMM_TFLOPS:.0f}.\n")
        if pk.get("sm_mhz_median"):
            parts.append(f"Clocks during those 20: SM {pk['sm_mhz_median']} MHz (median), {pk['power_w_median']} W, "
                         f"limits: {', '.join(pk['clock_limits']) or 'none'}.\n")
        sus = pk.get("sustained") or {}
        if sus.get("tflops"):
            parts.append(f"Sustained: the same GEMM back to back for {sus['seconds']:.1f} s: **{sus['tflops']:.1f} "
                         f"TFLOP/s** (median of the last {sus['chunks'] - sus['chunks'] // 3} of {sus['chunks']} "
                         f"chunks of {sus['calls_per_chunk']}; first chunk {sus['tflops_first_chunk']:.1f})"
                         + (f", SM {sus['sm_mhz_median']} MHz (median), {sus['power_w_median']} W, limits: "
                            f"{', '.join(sus['clock_limits']) or 'none'}" if sus.get("sm_mhz_median") else "")
                         + ". '% peak' and the targets use the burst figure above; '% sust.' this one.\n")
    else:
        parts.append(f"not measured ({pk.get('note', 'section not run')}); FLOP-floor ratios are n/a.\n")

    if res["bmm_ceiling"]:
        parts.append(f"## Recurrent bmm ceiling: h[N, B, D] @ R[N, D, 4D], {b.args.dtype}, B={b.args.batch}\n")
        parts.append("TF/s count the useful 2·N·B·D·4D FLOPs only (padded runs do more work for the same "
                     "useful FLOPs); gain = time unpadded / time padded. 'K folded' = K models' heads in one bmm, "
                     "as `forward_chunk_stacked` runs them.\n")
        rows = []
        for r in res["bmm_ceiling"]:
            if r.get("status"):
                rows.append([r["size"], r["D"], r["N"], r["status"], "", "", "", "", "", "", r.get("note", "")])
                continue
            rows.append([r["size"], r["D"], r["N"], fmt_f(r["tflops"], 1), fmt_f(r.get("paper_tflops"), 0),
                         f"{r['D_pad8']}: {r['tflops_pad8']:.1f}", fmt_x(r["gain_pad8"]),
                         f"{r['D_pad64']}: {r['tflops_pad64']:.1f}", fmt_x(r["gain_pad64"]),
                         f"K={r['K_folded']}: {fmt_f(r.get('tflops_folded'), 1)}", ""])
        parts.append(md_table(["size", "D", "N heads", "TF/s", "paper TF/s", "pad x8: D, TF/s", "gain x8",
                               "pad x64: D, TF/s", "gain x64", "K folded: TF/s", "note"], rows) + "\n")

    zo = sorted(res["zo_steps"], key=lambda r: (r["probes"], list(SIZE_PRESETS).index(r["size"]), r.get("label") or ""))
    if zo:
        parts.append("## ZO step (CD-RGE, `train.zo_step.zo_step`), B={}, T={}, {} params + fp32 master\n".format(
            b.args.batch, b.args.T, b.args.dtype))
        parts.append("FLOPs/step = 2·params·B·T·2·probes; floor = FLOPs / measured peak; x floor = s/step / floor. "
                     "Peak = torch max_memory_allocated over the timed steps (model, engine and working set); "
                     "NVML = this process's used memory (device-wide if the process is not listed).\n")
        rows = []
        for r in zo:
            nv = r.get("nvml_proc_gib")
            nv_s = _gib(nv) if nv is not None else (f"dev {_gib(r.get('nvml_device_gib'))}"
                                                     if r.get("nvml_device_gib") is not None else "n/a")
            name = r["size"] + (f" ({r['label']})" if r.get("label") else "")
            rows.append([name, f"{r['params']:,}", r["probes"], r.get("models_per_pass", ""),
                         r.get("status", ""), fmt_s(r.get("s_step")), r.get("steps_timed", ""),
                         fmt_f(r.get("tflops"), 2), fmt_f(100 * r["peak_frac"], 2, "%") if r.get("peak_frac") else "n/a",
                         fmt_f(100 * r["peak_frac_sustained"], 2, "%") if r.get("peak_frac_sustained") else "n/a",
                         fmt_x(r.get("x_floor")), _gib(r.get("peak_alloc_gib")), nv_s,
                         fmt_s(r.get("paper_s")) if r.get("paper_s") else "", _gib(r.get("paper_gib")) if r.get("paper_gib") else "",
                         fmt_x(r.get("speedup_vs_paper")) if r.get("speedup_vs_paper") else "",
                         fmt_s(r.get("target_s")) if r.get("target_s") else "", r.get("note", "")])
        parts.append(md_table(["size", "params", "probes", "M/pass", "status", "s/step", "n", "TFLOP/s", "% peak",
                               "% sust.", "x floor", "peak GiB", "NVML GiB", "paper s/step", "paper GiB", "speed-up",
                               "target", "note"], rows) + "\n")
        ck = [r for r in zo if r.get("clock_samples")]
        if ck:
            parts.append("### GPU clocks during the timed steps (NVML, sampled every 20 ms)\n")
            parts.append("SM clock and board power over the timed steps; limits = the clock-limit reasons NVML "
                         "reported in any sample (a step on a lower clock is slower for the same work).\n")
            rows = [[r["size"] + (f" ({r['label']})" if r.get("label") else ""), r["probes"], r["sm_mhz_median"],
                     r["sm_mhz_min"], r["power_w_median"], ", ".join(r["clock_limits"]) or "none",
                     r["clock_samples"]] for r in ck]
            parts.append(md_table(["size", "probes", "SM MHz (median)", "SM MHz (min)", "power W (median)", "limits",
                                   "samples"], rows) + "\n")
        bd = [r for r in zo if r.get("breakdown")]
        if bd:
            parts.append("### Where a step's time goes (one extra step, synchronised between phases)\n")
            parts.append("eval = probe evaluation (noise generation, perturbed copies, forwards); forward = the "
                         "forwards alone (one pass at the unperturbed weights × passes/step); engine = eval − "
                         "forward; update = coefficients + θ update (regenerates uncached noise).\n")
            rows = [[r["size"] + (f" ({r['label']})" if r.get("label") else ""), r["probes"], r["models_per_pass"],
                     fmt_s(r["breakdown"]["eval_s"]), fmt_s(r["breakdown"]["forward_s"]),
                     fmt_s(r["breakdown"]["engine_overhead_s"]), fmt_s(r["breakdown"]["update_s"])] for r in bd]
            parts.append(md_table(["size", "probes", "M/pass", "eval", "forward", "engine (noise+copies)", "update"],
                                  rows) + "\n")

    if res["bptt"]:
        parts.append(f"## BPTT: autograd forward + backward + SGD step, B={b.args.batch}, T={b.args.T}\n")
        parts.append("FLOPs/step ≈ 6·params·B·T. `cudnn` rows are torch.nn.LSTM with a dense hidden of the preset's "
                     "size (NOT the head-structured model: far more parameters); `lstmmodel` rows are our "
                     "head-structured LSTMModel through autograd (torch recurrence).\n")
        rows = [[r["kind"], r["size"], f"{r['params']:,}", r.get("dtype", ""), r.get("status", ""),
                 fmt_s(r.get("s_step")), r.get("steps_timed", ""), fmt_f(r.get("tflops"), 2),
                 _gib(r.get("peak_alloc_gib")), r.get("note", "")] for r in res["bptt"]]
        parts.append(md_table(["kind", "size", "params", "dtype", "status", "s/step", "n", "TFLOP/s", "peak GiB",
                               "note"], rows) + "\n")

    sw = res["context_sweep"]
    if sw.get("rows") or sw.get("status"):
        parts.append(f"## Context sweep: {sw.get('size')}, {sw.get('probes')} probes, B={sw.get('B')}, "
                     f"time_chunk {sw.get('time_chunk')}, models_per_pass {sw.get('models_per_pass')}\n")
        if sw.get("status"):
            parts.append(f"sweep {sw['status']}: {sw.get('note', '')}\n")
        parts.append(sw.get("method_note", "") + "\n")
        rows = [[r["T"], r.get("status", ""), fmt_s(r.get("s_step")), r.get("method", ""),
                 _gib(r.get("peak_alloc_gib")), _gib(r.get("nvml_proc_gib") or r.get("nvml_device_gib")),
                 fmt_s(r.get("paper_s")) if r.get("paper_s") else "", _gib(r.get("paper_gib")) if r.get("paper_gib") else "",
                 fmt_x(r.get("speedup_vs_paper")) if r.get("speedup_vs_paper") else "",
                 fmt_s(r.get("extrapolation_check_s")) if r.get("extrapolation_check_s") else "",
                 r.get("note", "")] for r in sw.get("rows", [])]
        parts.append(md_table(["T", "status", "s/step", "method", "peak GiB", "NVML GiB", "paper s/step",
                               "paper GiB", "speed-up", "extrapolated (check)", "note"], rows) + "\n")
        if "max_over_min" in sw:
            line = (f"Peak memory max/min over T = {sw['T_measured']}: {sw['max_over_min']:.3f} "
                    f"({'flat' if sw['flat_within_5pct'] else 'NOT flat'} within 5%)")
            if "max_over_min_T_ge_chunk" in sw:
                line += (f"; over T >= time_chunk only: {sw['max_over_min_T_ge_chunk']:.3f} "
                         f"({'flat' if sw['flat_within_5pct_T_ge_chunk'] else 'NOT flat'})")
            parts.append(line + ".\n")

    parts.append("## Targets (issue 4)\n")
    parts.append(md_table(["target", "measured", "status", "note"],
                          [[t["target"], t["measured"], t["status"], t["note"]] for t in res["targets"]]) + "\n")
    if res["notes"]:
        parts.append("## Notes\n")
        parts.append("\n".join(f"- {n}" for n in res["notes"]) + "\n")
    return "\n".join(parts)


def render_markdown(b: Bench) -> str:
    m = b.res["meta"]
    head = [f"# bench_step: ZO step timing ({m['date']})\n",
            f"- GPU: {m['gpu']}" + (f", {m['gpu_memory_gib']:.1f} GiB" if m.get("gpu_memory_gib") else "")
            + (f", driver {m['driver']}" if m.get("driver") else ""),
            f"- torch {m['torch']}, CUDA {m['cuda']}, cuDNN {m['cudnn']}, Python {m['python']}, git {m['git']}",
            f"- command: `{m['command']}`",
            f"- NVML: {m['nvml']}",
            f"- elapsed {m['elapsed_s']} s of a {m['time_budget_s']} s budget; "
            f"{'finished' if m['finished'] else 'PARTIAL (still running or stopped)'}"
            + ("; SMOKE run (tiny shapes, numbers not comparable)" if m["smoke"] else ""),
            ""]
    return "\n".join(head) + "\n" + render_tables(b)


# ---------------------------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    p.add_argument("--device", default=dev)
    p.add_argument("--sizes", type=csv_names, default=list(SIZE_PRESETS), help="size presets of the ZO rows")
    p.add_argument("--probes", type=csv_ints, default=[12, 64], help="probes per GPU (CD-RGE: 2 forwards each)")
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--T", type=int, default=11, help="time steps (the first 2 positions are not scored)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per config (median)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--models_per_pass", type=int, default=0, help="0: auto (models.auto_models_per_pass)")
    p.add_argument("--time_chunk", type=int, default=0,
                   help="ZO forward time chunk (0: models.auto_time_chunk, as the trainer's default)")
    p.add_argument("--micro_batch", type=int, default=0, help="ZO forward micro-batch (0: the whole batch)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float32", "float16"],
                   help="parameter dtype (default bfloat16)")
    p.add_argument("--backend", default="auto", choices=list(LSTM_BACKENDS),
                   help="LSTM recurrence backend (models/lstm_backends.py; auto: fused when it checks out)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate = epsilon")
    add_cuda_graphs(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stack_layouts", type=int, default=1, choices=(0, 1),
                   help="1 (default, as the trainers): the engine writes parameters in the layouts the model "
                        "declares (the LSTM's recurrent weight in gate tiles); 0: plain stacks, re-laid out by "
                        "the model")
    p.add_argument("--gemm_n", type=int, default=8192)
    p.add_argument("--peak_sustain_s", type=float, default=3.0,
                   help="also run the peak GEMM back to back this long and report its sustained TFLOP/s "
                        "(the board's power limit caps long runs); 0: burst peak only")
    p.add_argument("--sweep_T", type=csv_ints, default=[10, 100, 1000, 10000])
    p.add_argument("--sweep_size", default="medium", choices=list(SIZE_PRESETS))
    p.add_argument("--sweep_probes", type=int, default=12)
    p.add_argument("--sweep_max_step_s", type=float, default=15.0,
                   help="sweep rows predicted slower than this per step are extrapolated from one timed pass")
    p.add_argument("--bptt_sizes", type=csv_names, default=["tiny", "small", "medium"])
    p.add_argument("--sections", type=csv_names, default=list(SECTIONS) + ["breakdown"],
                   help=f"any of {', '.join(SECTIONS)}, breakdown")
    p.add_argument("--time_budget_s", type=float, default=400.0,
                   help="stop starting new work after this many seconds (results so far are kept)")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--smoke", action="store_true",
                   help="tiny shapes, 2 steps: an end-to-end check that runs on CPU in seconds")
    return p


def apply_smoke(args) -> None:
    """Every section and code path (stacked and per-probe ZO paths, two probe counts, a chunked sweep
    with a full and an extrapolated row, both BPTT kinds) at shapes a loaded 2-core CPU runs in seconds."""
    args.sizes = ["tiny"]
    args.probes = [2, 4]
    args.batch = 4
    args.steps = 2
    args.warmup = 1
    args.gemm_n = 128
    args.sweep_size = "tiny"
    args.sweep_probes = 2
    args.sweep_T = [10, 70]
    args.sweep_max_step_s = 0.0        # T=10 runs full steps, the longer T the extrapolated path
    args.bptt_sizes = ["tiny"]
    args.time_budget_s = min(args.time_budget_s, 120.0)
    if not args.device.startswith("cuda"):
        torch.set_num_threads(1)        # a loaded small CPU box runs these tiny ops far faster on one thread


def validate(args) -> None:
    bad = [s for s in args.sizes if s not in SIZE_PRESETS]
    if bad:
        raise SystemExit(f"unknown --sizes {bad}; choose from {list(SIZE_PRESETS)}")
    bad = [s for s in args.bptt_sizes if s not in SIZE_PRESETS]
    if bad:
        raise SystemExit(f"unknown --bptt_sizes {bad}; choose from {list(SIZE_PRESETS)}")
    bad = [s for s in args.sections if s not in SECTIONS + ("breakdown",)]
    if bad:
        raise SystemExit(f"unknown --sections {bad}; choose from {list(SECTIONS) + ['breakdown']}")
    for k in ("batch", "T", "steps", "gemm_n"):
        if getattr(args, k) < 1:
            raise SystemExit(f"--{k} must be >= 1")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device} requested but CUDA is not available")


def zo_plan(args) -> tuple[list, list]:
    """(size, probes, models_per_pass override, label), in priority order. Early (before BPTT and the
    sweep): the first probe count up to large, the per-probe comparison row, tiny at the other counts.
    Late: xlarge, large at the other counts (the targets), then the rest, then xxlarge."""
    sizes = [s for s in SIZE_PRESETS if s in args.sizes]
    first, rest = args.probes[0], args.probes[1:]
    early = [(s, first, None, None) for s in sizes if s not in ("xlarge", "xxlarge")]
    if "tiny" in sizes and args.models_per_pass <= 0:
        early.append(("tiny", first, 1, "per-probe path, M=1"))
    early += [("tiny", p, None, None) for p in rest if "tiny" in sizes]
    late = [(s, first, None, None) for s in sizes if s == "xlarge"]
    late += [("large", p, None, None) for p in rest if "large" in sizes]
    late += [(s, p, None, None) for p in rest for s in sizes if s not in ("tiny", "large", "xxlarge")]
    late += [(s, p, None, None) for p in args.probes for s in sizes if s == "xxlarge"]
    return early, late


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.smoke:
        apply_smoke(args)
    args.dtype = args.dtype or "bfloat16"
    validate(args)
    b = Bench(args)
    b.log(f"device {b.res['meta']['gpu']}, torch {torch.__version__}, CUDA {torch.version.cuda}; "
          f"writing {b.md_path} and .json; budget {args.time_budget_s:.0f} s")
    b.write()
    sec = set(args.sections)
    early, late = zo_plan(args)

    def zo_rows(plan):
        for size, probes, mpp, label in plan:
            if b.clock.left() <= 0:
                b.res["zo_steps"].append({"size": size, "probes": probes, "params": param_count(
                    preset(size, vocab_size=VOCAB, input_size=INPUT)), "label": label, "status": "skipped",
                    "note": "time budget exhausted", "flops": 0})
            else:
                b.res["zo_steps"].append(run_zo(b, size, probes, mpp=mpp, label=label))
            b.write()

    if "peak" in sec:
        bench_peak(b)
        b.write()
    if "bmm" in sec:
        bench_bmm(b)
    if "zo" in sec:
        zo_rows(early)
    if "bptt" in sec:
        for size in args.bptt_sizes:
            for kind in ("cudnn", "lstmmodel"):
                if b.clock.left() <= 0:
                    b.res["bptt"].append({"size": size, "kind": kind, "params": 0, "status": "skipped",
                                          "note": "time budget exhausted"})
                else:
                    b.res["bptt"].append(run_bptt(b, size, kind))
                b.write()
    if "sweep" in sec:
        if b.clock.left() > 0:
            run_sweep(b)
        else:
            b.res["context_sweep"].update(status="skipped", note="time budget exhausted")
    if "zo" in sec:
        zo_rows(late)
    b.res["meta"]["finished"] = True
    b.write()
    b.log(f"done in {b.clock.elapsed():.1f} s; results: {b.md_path}, {b.json_path}")
    print()
    print(render_tables(b), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
