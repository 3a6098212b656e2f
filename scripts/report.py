#!/usr/bin/env python3
"""Figure 1 and Table 2 of the paper from saved JSON lines: tables, plots and report sections.

Nothing is rerun: the input is the ``--metrics_out`` JSON lines of the series harness
(``rge_series_experiments.py``), as written by ``scripts/reproduce_figure1.sh``,
``scripts/reproduce_table2.sh`` or the screen sweeps (``scripts/run_*_experiments.sh``, in
``logs/``). Records are read with ``scripts/collect.py``; the keys used are ``step``,
``train_loss``, ``val_accuracy``, ``val_seq_accuracy``, ``elapsed_s``, ``step_time_s``, ``lr``,
``optimizer``, ``task``, ``model_type``, ``params`` and ``context_len``.

Figure 1 (overfitting one batch): per optimizer (the ``optimizer`` field, e.g. ``CD-RGE@512``,
``BPTT-Adam``) the best learning rate is the one that first brings the train loss below the
threshold (default 0.1; fewest steps), else the one with the lowest train loss. Reported: first
and best loss, steps and wall-clock seconds to the threshold (the first *logged* step whose loss is
below it, so the resolution is the log interval), median seconds per step. Plots: train loss
against step and against wall clock (log y), one line per optimizer at its best learning rate.

Table 2 (validation on longer sequences): runs are grouped by task and model; per optimizer the
best learning rate is the one with the highest token accuracy at its last validation (ties: lower
validation loss). Among those best runs of a group:

* equal steps: S = the largest validated step that every run reached (min over runs of their last
  validated step); each run's value is its last validation at a step <= S;
* equal wall clock: W = the largest elapsed time that every run reached (min over runs of the
  ``elapsed_s`` of their last validation; ``elapsed_s`` counts from the start of training and
  includes the run's own validation time); each run's value is its last validation with
  ``elapsed_s`` <= W, and the step it had reached is shown.

Sections are written into the report between ``<!-- BEGIN GENERATED: <id> -->`` and
``<!-- END GENERATED: <id> -->`` (``<id>`` = ``figure1-<tag>`` / ``table2-<tag>``); text
outside the markers is kept, a missing section is appended. Plots go to ``figures/`` beside the
report.

The "Paper scale on H200" section (id ``paper-h200``) renders the time-capped runs of
``scripts/gpu_batch_reproduce.sh`` from its results folder (``figure1/``, ``table2/``, and its
``batch_runs.jsonl`` / ``priority.tsv`` for lanes and progress); a run stopped by its wall-clock cap
(a ``NAME.cut`` file) has status ``cut``. Without runs there, the section says they are pending and
gives the command.

The timing/VRAM section (id ``timing-h200``, issue 6 part 4) renders the newest
``bench/results/bench_step_*.json`` of ``bench/bench_step.py`` (newest by the timestamp in its name):
date, GPU and command, our seconds per CD-RGE step and peak memory per preset beside the paper's code
measured at the same per-GPU load on the same GPU (the rows' ``paper_s`` / ``paper_gib``) and the
paper's README figures (A40; ``PAPER_README_A40_S``, copied from the README), the context sweep, and a
summary of the ``scaling_*.json`` of ``bench/run_scaling.sh`` beside it.

The "7B smoke test and multi-GPU scaling" section (id ``multigpu-h200``) renders, from ``bench/results``
(or ``--multigpu DIR``): one row per ``smoke7b_*.json`` of ``bench/run_smoke_7b.sh`` (GPUs, probes per
step, lr, steps to loss < 0.1, first and final loss, s/step, peak GiB per GPU, replica checksums) beside
the paper's figures (``PAPER_SMOKE_7B``, copied from its README), a sentence on which runs diverged or
reached the target, and the newest ``scaling_*.json`` of ``bench/run_scaling.sh`` (per preset and GPU
count: s/step, speed-up N·T₁/T_N, efficiency T₁/T_N, bytes per step, checksums), with a line when the
8-GPU point is missing. Each row links the ``.md`` beside its JSON. A file that is not a JSON object is
skipped with a note; without files, each part says so in one line. It is written with ``--gpu`` too.

Usage:
  python scripts/report.py                       # every results/figure1/* and results/table2/* dir, the GPU, timing and multi-GPU sections
  python scripts/report.py --gpu results/gpu_runs   # the "Paper scale on H200" and "7B smoke test and multi-GPU scaling" sections
  python scripts/report.py --multigpu            # only the 7B smoke / multi-GPU scaling section (bench/results)
  python scripts/report.py --timing              # only the timing/VRAM table (newest bench/results/bench_step_*.json)
  python scripts/report.py --figure1 results/figure1/cpu --tag cpu --report results/REPORT.md
  python scripts/report.py --table2 logs/ --filter _LSTM_ --tag paper
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import collect  # scripts/collect.py: the JSONL loading shared with the collector

REPO = Path(__file__).resolve().parent.parent
DEFAULT_REPORT = "results/REPORT.md"
DEFAULT_THRESHOLD = 0.1
DEFAULT_GPU_DIR = "results/gpu_runs"
GPU_TAG = "h200"
GPU_SECTION_ID = "paper-h200"
GPU_COMMAND = "scripts/gpu_batch_reproduce.sh --gpus 1,2,3 --budget_s 380"
SIZE_NAMES = ("mini", "tiny", "small", "medium", "large", "xlarge", "xxlarge")

_f = collect._as_float


# ------------------------------------------------------------------- runs --

@dataclass
class RunData:
    name: str
    records: list[dict[str, Any]]
    sources: list[str] = field(default_factory=list)
    failed: bool = False          # a NAME.failed file sits beside the JSON lines
    finished: bool = False        # a NAME.summary.json sits beside the JSON lines
    cut: bool = False             # a NAME.cut file: stopped by its wall-clock cap (gpu_batch_reproduce.sh)

    def first(self, key: str) -> Any:
        return next((r[key] for r in self.records if r.get(key) not in (None, "")), None)

    @property
    def optimizer(self) -> str:
        return str(self.first("optimizer") or optimizer_from_name(self.name) or self.name)

    @property
    def lr(self) -> float | None:
        return _f(self.first("lr"))

    @property
    def task(self) -> str:
        return str(self.first("task") or "?")

    @property
    def model_type(self) -> str:
        return str(self.first("model_type") or "?")

    @property
    def params(self) -> int | None:
        p = _f(self.first("params"))
        return int(p) if p is not None else None

    @property
    def size(self) -> str | None:
        m = re.search(r"_({})_".format("|".join(SIZE_NAMES)), f"_{self.name}_")
        return m.group(1) if m else None

    def last_step(self) -> int | None:
        steps = [_f(r.get("step")) for r in self.records]
        steps = [s for s in steps if s is not None]
        return int(max(steps)) if steps else None

    def seconds_per_step(self) -> float | None:
        """Median step_time_s of the logged steps, the first (warm-up) step left out."""
        times = [(_f(r.get("step")), _f(r.get("step_time_s"))) for r in self.records]
        times = [t for s, t in times if t is not None and s is not None and s > 0] or \
                [t for _, t in times if t is not None]
        return statistics.median(times) if times else None

    def peak_gib(self) -> float | None:
        """The largest peak_mem_bytes of the records (the device allocator's peak on a GPU), in GiB."""
        vals = [_f(r.get("peak_mem_bytes")) for r in self.records]
        vals = [v for v in vals if v is not None]
        return max(vals) / 2**30 if vals else None

    def status(self) -> str:
        if self.failed:
            return "failed"
        if self.finished:
            return "ok"
        return "cut" if self.cut else "unfinished"


def optimizer_from_name(name: str) -> str | None:
    """The optimizer label from a run name (fallback when records lack 'optimizer')."""
    m = re.search(r"(cd|fd)rge(\d+)(adam)?", name)
    if m:
        return f"{m.group(1).upper()}-RGE@{m.group(2)}" + ("+Adam" if m.group(3) else "")
    if "bptt_adam" in name:
        return "BPTT-Adam"
    if "bptt_sgd" in name or "bptt" in name:
        return "BPTT-SGD"
    return None


def optimizer_sort_key(label: str) -> tuple:
    m = re.match(r"(CD|FD)-RGE@(\d+)(\+Adam)?$", label)
    if m:
        return (0, m.group(1) != "CD", bool(m.group(3)), -int(m.group(2)), label)
    if label.startswith("BPTT"):
        return (1, label != "BPTT-SGD", 0, 0, label)
    return (2, 0, 0, 0, label)


def load(paths: Sequence[Path], filters: Sequence[str] = ()) -> dict[str, RunData]:
    result = collect.load_runs(paths)
    runs: dict[str, RunData] = {}
    for name, run in result.runs.items():
        if filters and not any(s in name for s in filters):
            continue
        if not run.records:
            continue
        data = RunData(name=name, records=run.records, sources=list(run.sources))
        for src in run.sources:
            stem = str(Path(src).with_suffix(""))     # names hold dots (lr0.01): no with_suffix here
            data.failed |= Path(stem + ".failed").exists()
            data.finished |= Path(stem + ".summary.json").exists()
            data.cut |= Path(stem + ".cut").exists()
        runs[name] = data
    return runs


def read_run_info(paths: Sequence[Path]) -> dict[str, Any] | None:
    for p in paths:
        info = (p if p.is_dir() else p.parent) / "run_info.json"
        if info.is_file():
            try:
                return json.loads(info.read_text())
            except (OSError, json.JSONDecodeError):
                return None
    return None


# -------------------------------------------------------------- figure 1 --

def steps_to_threshold(run: RunData, threshold: float) -> tuple[int | None, float | None]:
    """(step, elapsed_s) of the first logged record whose train loss is below threshold."""
    for r, t in zip(run.records, collect.time_axis(run.records)):
        loss = _f(r.get("train_loss"))
        if loss is not None and loss < threshold:
            return int(_f(r.get("step"))), t
    return None, None


def figure1_run_row(run: RunData, threshold: float) -> dict[str, Any]:
    losses = [_f(r.get("train_loss")) for r in run.records]
    losses = [v for v in losses if v is not None]
    step, secs = steps_to_threshold(run, threshold)
    return {
        "run": run.name, "optimizer": run.optimizer, "lr": run.lr,
        "first_loss": losses[0] if losses else None,
        "best_loss": min(losses) if losses else None,
        "last_loss": losses[-1] if losses else None,
        "steps_to_threshold": step, "seconds_to_threshold": secs,
        "s_per_step": run.seconds_per_step(), "last_step": run.last_step(),
        "peak_gib": run.peak_gib(), "status": run.status(),
    }


def _figure1_rank(row: dict[str, Any]) -> tuple:
    reached = row["steps_to_threshold"] is not None
    best = row["best_loss"] if row["best_loss"] is not None else math.inf
    return (0 if reached else 1, row["steps_to_threshold"] if reached else best, best)


def figure1_best(runs: dict[str, RunData], threshold: float) -> list[dict[str, Any]]:
    """One row per optimizer: its best-lr run (see the module docstring), with the lrs tried."""
    by_opt: dict[str, list[dict[str, Any]]] = {}
    for run in runs.values():
        by_opt.setdefault(run.optimizer, []).append(figure1_run_row(run, threshold))
    out = []
    for opt in sorted(by_opt, key=optimizer_sort_key):
        rows = sorted(by_opt[opt], key=_figure1_rank)
        best = dict(rows[0])
        best["lrs_tried"] = sorted({r["lr"] for r in rows if r["lr"] is not None}, reverse=True)
        best["runs"] = len(rows)
        out.append(best)
    return out


# --------------------------------------------------------------- table 2 --

def val_records(run: RunData) -> list[dict[str, Any]]:
    """Validation records (with val_accuracy), each with its 'elapsed' wall-clock time."""
    out = []
    for r, t in zip(run.records, collect.time_axis(run.records)):
        if _f(r.get("val_accuracy")) is not None:
            out.append(dict(r, elapsed=t))
    return out


def group_key(run: RunData) -> tuple[str, str, int | None]:
    return (run.task, run.model_type, run.params)


def group_label(runs: Sequence[RunData]) -> str:
    r = runs[0]
    size = next((x.size for x in runs if x.size), None)
    params = f"{r.params:,} params" if r.params is not None else "params ?"
    return f"{r.model_type} {size} ({params})" if size else f"{r.model_type} ({params})"


def _last_at_or_before(recs: list[dict[str, Any]], key: str, limit: float) -> dict[str, Any] | None:
    best = None
    for r in recs:
        v = _f(r.get(key))
        if v is not None and v <= limit + 1e-12:
            best = r
    return best


def table2_best_per_optimizer(runs: Sequence[RunData]) -> list[RunData]:
    by_opt: dict[str, list[RunData]] = {}
    for run in runs:
        if val_records(run):
            by_opt.setdefault(run.optimizer, []).append(run)

    def rank(run: RunData) -> tuple:
        last = val_records(run)[-1]
        loss = _f(last.get("val_loss"))
        return (-_f(last["val_accuracy"]), loss if loss is not None else math.inf, run.name)

    return [min(by_opt[o], key=rank) for o in sorted(by_opt, key=optimizer_sort_key)]


def table2_group(runs: Sequence[RunData]) -> dict[str, Any]:
    """The equal-step / equal-wall-clock comparison of one (task, model) group."""
    best = table2_best_per_optimizer(runs)
    if not best:
        return {"rows": [], "equal_step": None, "equal_time": None}
    vals = {r.name: val_records(r) for r in best}
    equal_step = min(int(_f(v[-1]["step"])) for v in vals.values())
    times = [_f(v[-1].get("elapsed")) for v in vals.values()]
    equal_time = min(times) if all(t is not None for t in times) else None
    rows = []
    for run in best:
        recs = vals[run.name]
        at_step = _last_at_or_before(recs, "step", equal_step)
        at_time = _last_at_or_before(recs, "elapsed", equal_time) if equal_time is not None else None
        last = recs[-1]
        lrs = sorted({x.lr for x in runs if x.optimizer == run.optimizer and x.lr is not None}, reverse=True)
        rows.append({
            "run": run.name, "optimizer": run.optimizer, "lr": run.lr, "lrs_tried": lrs,
            "step_acc": _f(at_step.get("val_accuracy")) if at_step else None,
            "step_seq_acc": _f(at_step.get("val_seq_accuracy")) if at_step else None,
            "step_at_step": int(_f(at_step["step"])) if at_step else None,
            "time_acc": _f(at_time.get("val_accuracy")) if at_time else None,
            "time_seq_acc": _f(at_time.get("val_seq_accuracy")) if at_time else None,
            "time_step": int(_f(at_time["step"])) if at_time else None,
            "final_acc": _f(last.get("val_accuracy")), "final_seq_acc": _f(last.get("val_seq_accuracy")),
            "final_step": int(_f(last["step"])),
            "final_train_loss": _f(last.get("train_loss")),
            "s_per_step": run.seconds_per_step(), "peak_gib": run.peak_gib(), "status": run.status(),
        })
    return {"rows": rows, "equal_step": equal_step, "equal_time": equal_time}


def table2_groups(runs: dict[str, RunData]) -> list[tuple[str, list[RunData]]]:
    groups: dict[tuple, list[RunData]] = {}
    for run in runs.values():
        groups.setdefault(group_key(run), []).append(run)

    def order(k):
        task, model, params = k
        return (task, model, params if params is not None else -1)

    return [(f"{k[0]} / {group_label(groups[k])}", groups[k]) for k in sorted(groups, key=order)]


# ------------------------------------------------------------ formatting --

def fmt(v: Any, kind: str = "g") -> str:
    if v is None:
        return "–"
    if kind == "pct":
        return f"{100 * v:.1f}%"
    if kind == "s":
        return f"{v:.3g} s" if v < 100 else f"{v:.0f} s"
    if kind == "lr":
        return f"{v:g}"
    if kind == "int":
        return f"{int(v):,}"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def fmt_gib(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def scale_label(tag: str) -> str:
    if tag == "cpu":
        return "CPU scale, NOT the paper's scale"
    if tag == "paper":
        return "paper scale"
    if tag == GPU_TAG:
        return "paper scale on H200, time-capped runs"
    return f"tag {tag}"


def scale_note(tag: str) -> list[str]:
    if tag == "cpu":
        note = ("**CPU scale: NOT the paper's scale.** Tiny models, a few hundred steps, scaled-down probe "
                "counts and learning-rate grids; these numbers prove the pipeline, not the paper's claims.")
        return [note, ""]
    if tag == GPU_TAG:
        note = ("**Paper-scale models, but short runs.** Each run had a wall-clock cap of tens of seconds "
                "(start-up included); status `cut` = stopped by its cap, `ok` = ended by its stop loss or "
                "max_iterations. These are the first seconds of each curve, not converged results. Peak GiB: "
                "the largest `peak_mem_bytes` a run logged (`torch.cuda.max_memory_allocated`).")
        return [note, ""]
    return []


def run_info_lines(info: dict[str, Any] | None, source: str, n_runs: int) -> list[str]:
    lines = [f"Source: {n_runs} run(s), JSON lines in `{source}`."]
    if not info:
        return lines
    invocations = info.get("invocations") or [info]
    for inv in invocations:
        machine = f"{inv.get('cpu_cores', '?')} CPU core(s) ({inv.get('cpu_model') or 'unknown CPU'})"
        if inv.get("gpus"):
            machine += f", GPU(s): {inv['gpus']}"
        lines.append(f"Produced by `{inv.get('command', '?')}`, finished {inv.get('date', '?')}: "
                     f"{fmt(_f(inv.get('wall_s')), 'int')} s wall clock for {inv.get('runs_executed', '?')} "
                     f"run(s), {inv.get('jobs', 1)} at a time ({inv.get('runs_failed', 0)} failed, "
                     f"{inv.get('runs_skipped_done', 0)} skipped as done), on {machine}, "
                     f"commit {inv.get('git_commit') or '?'}.")
    if len(invocations) > 1:
        lines.append(f"Total wall clock over the {len(invocations)} invocations: "
                     f"{fmt(_f(info.get('wall_s_total')), 'int')} s.")
    return lines


def _rel(path: Path, start: Path) -> str:
    """path relative to start, with forward slashes (for markdown links)."""
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


# ----------------------------------------------------------------- plots --

def _pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def figure1_plots(runs: dict[str, RunData], best: list[dict[str, Any]], fig_dir: Path, prefix: str,
                  title: str, threshold: float, log_steps: bool = False) -> list[Path]:
    """Train loss against step and against wall clock, one line per optimizer at its best lr;
    log_steps: a symlog step axis (for runs whose step counts differ by orders of magnitude)."""
    plt = _pyplot()
    if plt is None:
        print("warning: matplotlib is not installed; no plots (pip install matplotlib)", file=sys.stderr)
        return []
    fig_dir.mkdir(parents=True, exist_ok=True)
    written = []
    # the threshold line only when some run came near it: otherwise it squeezes every curve (log y) into a sliver
    lowest = min((r["best_loss"] for r in best if r["best_loss"] is not None), default=math.inf)
    for axis, xlabel, suffix in (("step", "step", "loss_vs_step"),
                                 ("time", "wall-clock time (s)", "loss_vs_time")):
        fig, ax = plt.subplots(figsize=(8, 5))
        for row in best:
            run = runs[row["run"]]
            xs, ys = [], []
            for r, t in zip(run.records, collect.time_axis(run.records)):
                loss = _f(r.get("train_loss"))
                x = _f(r.get("step")) if axis == "step" else t
                if loss is not None and loss > 0 and x is not None and (axis == "step" or x > 0):
                    xs.append(x)
                    ys.append(loss)
            if xs:
                ax.plot(xs, ys, label=f"{row['optimizer']} (lr {fmt(row['lr'], 'lr')})", linewidth=1.4)
        if lowest <= 3 * threshold:
            ax.axhline(threshold, color="grey", linestyle=":", linewidth=1)
        ax.set_yscale("log")
        if axis == "time":
            ax.set_xscale("log")   # elapsed_s > 0 from the first step on
        elif log_steps:
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(left=0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("train loss (one fixed batch)")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize="small")
        path = fig_dir / f"{prefix}_{suffix}.png"
        fig.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append(path)
    return written


def table2_plot(group_title: str, best_runs: Sequence[RunData], path: Path, title: str,
                loss_vs_time: bool = False) -> Path | None:
    """Train loss vs step, validation accuracy vs step and vs wall clock (and, with loss_vs_time,
    train loss vs wall clock as a fourth panel)."""
    plt = _pyplot()
    if plt is None:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 4 if loss_vs_time else 3
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 4.2))
    for run in best_runs:
        label = f"{run.optimizer} (lr {fmt(run.lr, 'lr')})"
        tr = [(_f(r.get("step")), _f(r.get("train_loss"))) for r in run.records]
        tr = [(s, v) for s, v in tr if s is not None and v is not None and v > 0]
        line, = axes[0].plot([s for s, _ in tr], [v for _, v in tr], label=label, linewidth=1.3)
        if loss_vs_time:
            tt = [(t, _f(r.get("train_loss"))) for r, t in zip(run.records, collect.time_axis(run.records))]
            tt = [(t, v) for t, v in tt if t is not None and t > 0 and v is not None and v > 0]
            axes[3].plot([t for t, _ in tt], [v for _, v in tt], color=line.get_color(), label=label,
                         linewidth=1.3)
        vals = val_records(run)
        axes[1].plot([_f(r["step"]) for r in vals], [_f(r["val_accuracy"]) for r in vals],
                     marker="o", markersize=3, color=line.get_color(), label=label, linewidth=1.3)
        pts = [(r["elapsed"], _f(r["val_accuracy"])) for r in vals if (r.get("elapsed") or 0) > 0]
        axes[2].plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3,
                     color=line.get_color(), label=label, linewidth=1.3)
    axes[0].set_yscale("log")
    if loss_vs_time:   # the GPU runs: step counts differ by orders of magnitude between optimizers
        for ax in axes[:2]:
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(left=0)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("train loss")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("validation token accuracy")
    axes[2].set_xlabel("wall-clock time (s)")
    axes[2].set_ylabel("validation token accuracy")
    axes[2].set_xscale("log")
    if loss_vs_time:
        axes[3].set_yscale("log")
        axes[3].set_xscale("log")
        axes[3].set_xlabel("wall-clock time (s)")
        axes[3].set_ylabel("train loss")
    for ax in axes:
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize="small")
    fig.suptitle(f"{group_title}: {title}", fontsize=10)
    if loss_vs_time:
        fig.subplots_adjust(wspace=0.3)   # room for the fourth panel's y label
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


# --------------------------------------------------------------- sections --

def figure1_section(runs: dict[str, RunData], *, tag: str, source: str, info: dict[str, Any] | None,
                    fig_dir: Path, report_dir: Path, threshold: float = DEFAULT_THRESHOLD,
                    plots: bool = True, log_steps: bool = False, show_mem: bool = False) -> str:
    """show_mem: a column with each run's peak device memory (peak_mem_bytes; the GPU runs)."""
    best = figure1_best(runs, threshold)
    mem_h = ["peak GiB"] if show_mem else []

    def mem(r: dict[str, Any]) -> list[str]:
        return [fmt_gib(r["peak_gib"])] if show_mem else []

    any_run = next(iter(runs.values()))
    ctx = max((int(_f(r.get("context_len")) or 0) for run in runs.values() for r in run.records), default=0)
    lines = [f"### Figure 1: DNC copy, overfitting one batch ({scale_label(tag)})", ""] + scale_note(tag)
    lines += run_info_lines(info, source, len(runs))
    lines.append(f"Model: {any_run.model_type}, {fmt(any_run.params, 'int')} parameters; "
                 f"longest input {ctx} tokens. Best learning rate per optimizer: the fewest steps to "
                 f"train loss < {threshold:g}, else the lowest loss reached.")
    lines.append("")
    thr = f"{threshold:g}"
    lines.append(md_table(
        ["optimizer", "best lr", "lrs tried", "first loss", "best loss", f"steps to < {thr}",
         f"wall clock to < {thr}", "s/step (median)", "steps run"] + mem_h + ["status"],
        [[r["optimizer"], fmt(r["lr"], "lr"), ", ".join(fmt(x, "lr") for x in r["lrs_tried"]),
          fmt(r["first_loss"]), fmt(r["best_loss"]), fmt(r["steps_to_threshold"], "int"),
          fmt(r["seconds_to_threshold"], "s"), fmt(r["s_per_step"], "s"),
          fmt(None if r["last_step"] is None else r["last_step"] + 1, "int")] + mem(r) + [r["status"]]
         for r in best]))
    lines.append("")
    reached = [r for r in best if r["steps_to_threshold"] is not None]
    zo = [r for r in reached if "RGE" in r["optimizer"]]
    bp = [r for r in reached if r["optimizer"].startswith("BPTT")]
    if zo and bp:
        z = min(zo, key=lambda r: r["steps_to_threshold"])
        b = min(bp, key=lambda r: r["steps_to_threshold"])
        lines.append(f"Steps to < {thr}: best zeroth-order {z['optimizer']} {z['steps_to_threshold']}, best BPTT "
                     f"{b['optimizer']} {b['steps_to_threshold']} (BPTT/ZO step ratio "
                     f"{b['steps_to_threshold'] / max(z['steps_to_threshold'], 1):.2f}).")
    else:
        lines.append(f"Reached < {thr}: " + (", ".join(f"{r['optimizer']} at step {r['steps_to_threshold']}"
                                                     for r in reached) or "none") +
                     "; the others are compared by the best loss reached.")
    lines.append("")
    rows = sorted((figure1_run_row(r, threshold) for r in runs.values()),
                  key=lambda x: (optimizer_sort_key(x["optimizer"]), -(x["lr"] or 0)))
    lines.append("<details><summary>Every run</summary>")
    lines.append("")
    lines.append(md_table(["run", "optimizer", "lr", "first loss", "best loss", "last loss",
                           f"steps to < {thr}", "s/step", "steps run"] + mem_h + ["status"],
                          [[f"`{r['run']}`", r["optimizer"], fmt(r["lr"], "lr"), fmt(r["first_loss"]),
                            fmt(r["best_loss"]), fmt(r["last_loss"]), fmt(r["steps_to_threshold"], "int"),
                            fmt(r["s_per_step"], "s"),
                            fmt(None if r["last_step"] is None else r["last_step"] + 1, "int")] + mem(r) +
                           [r["status"]] for r in rows]))
    lines.append("")
    lines.append("</details>")
    if plots:
        title = f"Figure 1, {tag}: {any_run.model_type} {fmt(any_run.params, 'int')} params, copy overfit"
        paths = figure1_plots(runs, best, fig_dir, f"figure1_{tag}", title, threshold, log_steps=log_steps)
        if paths:
            lines.append("")
            lines += [f"![{p.stem}]({_rel(p, report_dir)})" for p in paths]
    return "\n".join(lines)


def table2_section(runs: dict[str, RunData], *, tag: str, source: str, info: dict[str, Any] | None,
                   fig_dir: Path, report_dir: Path, plots: bool = True, loss_vs_time: bool = False,
                   show_mem: bool = False) -> str:
    """loss_vs_time: a train-loss-against-wall-clock panel; show_mem: a peak device memory column."""
    lines = [f"### Table 2: validation on longer sequences ({scale_label(tag)})", ""] + scale_note(tag)
    lines += run_info_lines(info, source, len(runs))
    lines.append("Per task and model, the best learning rate per optimizer (highest token accuracy at its "
                 "last validation). **Equal steps**: S = the largest validated step every compared run "
                 "reached; each run's last validation at a step <= S. **Equal wall clock**: W = the largest "
                 "`elapsed_s` (training plus the run's own validations, from its start) every compared run "
                 "reached at a validation; each run's last validation with `elapsed_s` <= W, at the step "
                 "shown. Token accuracy = share of scored answer tokens (and EOS) predicted right; "
                 "sequence accuracy = share of validation sequences with every scored token right.")
    lines.append("")
    header = ["task / model", "optimizer", "best lr", "lrs tried", "S", "tok acc @S", "seq acc @S",
              "W", "step @W", "tok acc @W", "seq acc @W", "final train loss", "s/step"] + \
             (["peak GiB"] if show_mem else []) + ["status"]
    body = []
    plot_paths = []
    for title, group in table2_groups(runs):
        g = table2_group(group)
        for i, r in enumerate(g["rows"]):
            body.append([title if i == 0 else "", r["optimizer"], fmt(r["lr"], "lr"),
                         ", ".join(fmt(x, "lr") for x in r["lrs_tried"]),
                         fmt(g["equal_step"], "int"), fmt(r["step_acc"], "pct"), fmt(r["step_seq_acc"], "pct"),
                         fmt(g["equal_time"], "s"), fmt(r["time_step"], "int"), fmt(r["time_acc"], "pct"),
                         fmt(r["time_seq_acc"], "pct"), fmt(r["final_train_loss"]), fmt(r["s_per_step"], "s")] +
                        ([fmt_gib(r["peak_gib"])] if show_mem else []) + [r["status"]])
        if plots and g["rows"]:
            slug = re.sub(r"[^A-Za-z0-9]+", "_", title).strip("_").lower()
            best_runs = [runs[r["run"]] for r in g["rows"]]
            p = table2_plot(title, best_runs, fig_dir / f"table2_{tag}_{slug}.png", tag, loss_vs_time=loss_vs_time)
            if p:
                plot_paths.append(p)
    lines.append(md_table(header, body))
    lines.append("")
    all_rows = sorted(runs.values(), key=lambda r: (group_key(r)[0], group_key(r)[1], group_key(r)[2] or 0,
                                                    optimizer_sort_key(r.optimizer), -(r.lr or 0)))
    lines.append("<details><summary>Every run (last validation)</summary>")
    lines.append("")
    det = []
    for r in all_rows:
        v = val_records(r)
        last = v[-1] if v else {}
        det.append([f"`{r.name}`", r.optimizer, fmt(r.lr, "lr"), fmt(_f(last.get("step")), "int"),
                    fmt(_f(last.get("val_accuracy")), "pct"), fmt(_f(last.get("val_seq_accuracy")), "pct"),
                    fmt(_f(last.get("val_loss"))), fmt(_f(last.get("train_loss"))),
                    fmt(last.get("elapsed"), "s"), r.status()])
    lines.append(md_table(["run", "optimizer", "lr", "step", "tok acc", "seq acc", "val loss", "train loss",
                           "elapsed", "status"], det))
    lines.append("")
    lines.append("</details>")
    if plot_paths:
        lines.append("")
        lines += [f"![{p.stem}]({_rel(p, report_dir)})" for p in plot_paths]
    return "\n".join(lines)


# ----------------------------------------------------------------- report --

def begin_marker(section_id: str) -> str:
    return f"<!-- BEGIN GENERATED: {section_id} (scripts/report.py; edits inside are overwritten) -->"


def end_marker(section_id: str) -> str:
    return f"<!-- END GENERATED: {section_id} -->"


def replace_section(text: str, section_id: str, body: str) -> str:
    """Put body between the section's markers; append the section when it is not there yet."""
    begin_re = re.compile(r"<!-- BEGIN GENERATED: " + re.escape(section_id) + r"(?: [^\n]*?)? -->")
    end = end_marker(section_id)
    block = f"{begin_marker(section_id)}\n{body.rstrip()}\n{end}"
    m = begin_re.search(text)
    e = text.find(end)
    if m and e > m.start():
        return text[:m.start()] + block + text[e + len(end):]
    if m or e >= 0:
        raise ValueError(f"report has an unmatched marker for section {section_id!r}; fix it by hand")
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + block + "\n"


def write_section(report: Path, section_id: str, body: str) -> None:
    text = report.read_text(encoding="utf-8") if report.exists() else "# Reproduction report\n\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(replace_section(text, section_id, body), encoding="utf-8")


def _source_label(paths: Sequence[Path]) -> str:
    out = []
    for p in paths:
        try:
            out.append(p.resolve().relative_to(REPO).as_posix())
        except ValueError:
            out.append(p.as_posix())
    return "`, `".join(out)


def build_section(kind: str, paths: Sequence[Path], *, tag: str, report: Path, filters: Sequence[str] = (),
                  threshold: float = DEFAULT_THRESHOLD, plots: bool = True) -> str | None:
    runs = load(paths, filters)
    if not runs:
        print(f"error: no runs with records in {', '.join(map(str, paths))}", file=sys.stderr)
        return None
    info = read_run_info(paths)
    fig_dir = report.parent / "figures"
    source = _source_label(paths)
    if kind == "figure1":
        return figure1_section(runs, tag=tag, source=source, info=info, fig_dir=fig_dir,
                               report_dir=report.parent, threshold=threshold, plots=plots)
    return table2_section(runs, tag=tag, source=source, info=info, fig_dir=fig_dir,
                          report_dir=report.parent, plots=plots)


# ------------------------------------------------------------ GPU batch --

def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return out
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _read_priority(path: Path) -> list[dict[str, str]]:
    """priority.tsv of gpu_batch_reproduce.sh: rank, tier, experiment, run, cap_s."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, l.split("\t"))) for l in lines[1:] if l.strip()]


def gpu_command(gpu_dir_label: str) -> str:
    return GPU_COMMAND + ("" if gpu_dir_label == DEFAULT_GPU_DIR else f" --out {gpu_dir_label}")


def gpu_pending_lines(gpu_dir_label: str) -> list[str]:
    return [f"**Pending: no GPU runs in `{gpu_dir_label}` yet.** On a machine with GPUs 1, 2 and 3 free, from "
            "the repository root (about 380 s of wall clock per GPU lane; `--dry-run` prints the plan and "
            "launches nothing):",
            "",
            "```bash",
            gpu_command(gpu_dir_label),
            f"python scripts/report.py --gpu {gpu_dir_label}",
            "```"]


def gpu_batch_lines(gpu_dir: Path, label: str) -> list[str]:
    """Lanes and per-run outcomes from batch_runs.jsonl; progress through priority.tsv."""
    lines: list[str] = []
    batch = _read_jsonl(gpu_dir / "batch_runs.jsonl")
    if batch:
        lanes: dict[tuple, dict[str, Any]] = {}
        for r in batch:
            key = (str(r.get("invocation", "?")), int(_f(r.get("lane")) or 0))
            lane = lanes.setdefault(key, {"gpu": r.get("gpu", "?"), "runs": 0, "done": 0, "cut": 0,
                                          "failed": 0, "busy": 0.0})
            lane["runs"] += 1
            if r.get("outcome") in ("done", "cut", "failed"):
                lane[r["outcome"]] += 1
            lane["busy"] += _f(r.get("wall_s")) or 0.0
        lines.append(md_table(["invocation", "lane", "GPU", "runs", "done", "cut by cap", "failed", "busy"],
                              [[f"`{inv}`", str(lane), str(v["gpu"]), str(v["runs"]), str(v["done"]),
                                str(v["cut"]), str(v["failed"]), fmt(v["busy"], "s")]
                               for (inv, lane), v in sorted(lanes.items())]))
        lines.append("")
        lines.append("<details><summary>Every executed run (lane, cap, outcome)</summary>")
        lines.append("")
        lines.append(md_table(["run", "invocation", "lane", "GPU", "tier", "cap", "wall", "outcome",
                               "JSON lines"],
                              [[f"`{r.get('run', '?')}`", f"`{r.get('invocation', '?')}`", str(r.get("lane", "?")),
                                str(r.get("gpu", "?")), str(r.get("tier", "?")), fmt(_f(r.get("cap_s")), "s"),
                                fmt(_f(r.get("wall_s")), "s"), str(r.get("outcome", "?")),
                                str(r.get("jsonl_lines", "?"))] for r in batch]))
        lines.append("")
        lines.append("</details>")
        lines.append("")
    prio = _read_priority(gpu_dir / "priority.tsv")
    if prio:
        def has_result(p: dict[str, str]) -> bool:
            base = gpu_dir / p.get("experiment", "") / p.get("run", "")
            js = Path(str(base) + ".jsonl")
            return js.is_file() and js.stat().st_size > 0
        left = [p for p in prio if not has_result(p)]
        lines.append(f"Priority list: {len(prio) - len(left)} of {len(prio)} runs have JSON lines; "
                     f"{len(left)} not run yet" + (":" if left else "."))
        if left:
            shown = ", ".join(f"`{p['run']}` (tier {p.get('tier', '?')})" for p in left[:8])
            more = f", and {len(left) - 8} more" if len(left) > 8 else ""
            lines.append(f"next in line {shown}{more}. Rerunning `{gpu_command(label)}` continues with them.")
        lines.append("")
    return lines


def gpu_section(gpu_dir: Path, *, report: Path, threshold: float = DEFAULT_THRESHOLD,
                plots: bool = True) -> str:
    """The "Paper scale on H200" section: the runs of scripts/gpu_batch_reproduce.sh (Figure 1 from
    gpu_dir/figure1, Table 2 from gpu_dir/table2), or a pending note with the command."""
    label = _source_label([gpu_dir])
    lines = ["## Paper scale on H200", ""]
    fig1_dir, t2_dir = gpu_dir / "figure1", gpu_dir / "table2"
    fig1 = load([fig1_dir]) if fig1_dir.is_dir() else {}
    t2 = load([t2_dir]) if t2_dir.is_dir() else {}
    if not fig1 and not t2:
        return "\n".join(lines + gpu_pending_lines(label))
    lines.append(f"Runs of `scripts/gpu_batch_reproduce.sh` (results in `{label}`): the paper-scale grids of "
                 "`reproduce_figure1.sh` and `reproduce_table2.sh` in priority order (first the paper's suggested "
                 "learning rates: CD-RGE and FD-RGE 0.01, BPTT-SGD 1e-4, BPTT-Adam 1e-3), one lane per GPU, every "
                 "run under a wall-clock cap (`timeout -s INT`; the JSON lines written until then are kept). "
                 "Every run had its GPU to itself, and in Table 2 the optimizers of one task and size had equal "
                 "caps, so equal wall clock compares like with like; `elapsed_s` counts from the start of "
                 "training (after start-up) and includes the run's own validations.")
    lines.append("")
    lines += gpu_batch_lines(gpu_dir, label)
    fig_dir = report.parent / "figures"
    if fig1:
        lines.append(figure1_section(fig1, tag=GPU_TAG, source=_source_label([fig1_dir]),
                                     info=read_run_info([fig1_dir]), fig_dir=fig_dir, report_dir=report.parent,
                                     threshold=threshold, plots=plots, log_steps=True, show_mem=True))
    else:
        lines.append(f"### Figure 1 ({scale_label(GPU_TAG)})\n\nNo Figure 1 runs in `{label}/figure1` yet.")
    lines.append("")
    if t2:
        lines.append(table2_section(t2, tag=GPU_TAG, source=_source_label([t2_dir]), info=read_run_info([t2_dir]),
                                    fig_dir=fig_dir, report_dir=report.parent, plots=plots, loss_vs_time=True,
                                    show_mem=True))
    else:
        lines.append(f"### Table 2 ({scale_label(GPU_TAG)})\n\nNo Table 2 runs in `{label}/table2` yet.")
    return "\n".join(lines)


# --------------------------------------------------- timing / VRAM bench --

# The paper's README table: seconds per training step on A40 GPUs ("dist × 8" = 8 GPUs), copied from the
# README of the paper's code. Columns: the README's parameter counts, which are our presets' sizes.
PAPER_README_SIZES = {"tiny": "100 k", "small": "1 M", "medium": "10 M", "large": "100 M", "xlarge": "1.1 B"}
PAPER_README_A40_S = {
    "BPTT (series)": {"tiny": 0.10, "small": 0.17, "medium": 33.7},
    "96·CD-RGE (series)": {"tiny": 5.7, "small": 6.0, "medium": 7.8, "large": 24.3, "xlarge": 145.0},
    "512·CD-RGE (series)": {"tiny": 30.0, "small": 31.1, "medium": 40.7, "large": 132.0, "xlarge": 777.0},
    "96·CD-RGE (dist × 8)": {"tiny": 0.05, "small": 0.06, "medium": 0.07, "large": 0.40, "xlarge": 4.4},
    "512·CD-RGE (dist × 8)": {"tiny": 0.25, "small": 0.29, "medium": 0.29, "large": 1.87, "xlarge": 19.3},
}
# One GPU of the README's "dist × 8" rows evaluates 1/8 of the probes: 12 of 96, 64 of 512.
PAPER_README_ROW_PER_GPU_PROBES = {12: "96·CD-RGE (dist × 8)", 64: "512·CD-RGE (dist × 8)"}
DEFAULT_BENCH_DIR = "bench/results"
TIMING_SECTION_ID = "timing-h200"


def fmt_dur(v: float | None) -> str:
    """Seconds as '6.33 ms' / '2.14 s' / '39.4 s'."""
    if v is None:
        return "–"
    if v < 1.0:
        return f"{1000 * v:.3g} ms"
    return f"{v:.3g} s" if v < 100 else f"{v:.0f} s"


def bench_step_files(path: Path) -> list[Path]:
    """bench_step_*.json under path (or path itself), newest first: the name carries the
    timestamp (bench_step_YYYY-MM-DD_HHMMSS.json), so the name orders them, not the file time."""
    if path.is_file():
        return [path]
    return sorted(path.glob("bench_step_*.json"), key=lambda p: p.name, reverse=True) if path.is_dir() else []


TIMING_SIZES = ("tiny", "small", "medium", "large", "xlarge")


def newest_bench(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest bench_step JSON that parses and holds ZO step rows for every preset of TIMING_SIZES
    without CUDA graphs (a whole table; benches of a few sizes, or graphed passes, are skipped), else
    the newest with any ZO step rows."""
    fallback = None
    for f in bench_step_files(path):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not (isinstance(data, dict) and data.get("zo_steps")):
            continue
        sizes = {r.get("size") for r in data["zo_steps"] if isinstance(r, dict)}
        graphed = _forced_graphs(data)
        if set(TIMING_SIZES) <= sizes and not graphed:
            return f, data
        fallback = fallback or (f, data)
    return fallback


def _forced_graphs(data: dict) -> bool:
    """A bench run with --cuda_graphs forced on (older benches stored true; 'auto' is the default run)."""
    return ((data.get("meta") or {}).get("settings") or {}).get("cuda_graphs") in (True, "true")


def newer_rows(path: Path, src: Path) -> list[tuple[Path, dict[str, Any]]]:
    """ZO step rows (status ok) of the benches newer than `src` with CUDA graphs not forced on (benches of a
    few presets, e.g. after a tuning change), the newest per (size, probes, label), in table order."""
    seen: dict[tuple, tuple[Path, dict[str, Any]]] = {}
    for f in bench_step_files(path):
        if f.name <= src.name:
            break
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if not isinstance(data, dict) or _forced_graphs(data):
            continue
        for r in data.get("zo_steps") or []:
            if isinstance(r, dict) and r.get("status") == "ok":
                seen.setdefault((r.get("size"), int(r.get("probes") or 0), r.get("label")), (f, r))
    return sorted(seen.values(), key=lambda fr: (int(fr[1].get("probes") or 0), _size_order(str(fr[1].get("size"))),
                                                fr[1].get("label") is not None))


def newest_with_sweep(path: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest bench_step JSON that parses and holds a context sweep."""
    for f in bench_step_files(path):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and (data.get("context_sweep") or {}).get("rows"):
            return f, data
    return None


def scaling_files(path: Path) -> list[tuple[Path, dict[str, Any]]]:
    """scaling_*.json of bench/run_scaling.sh beside the bench JSON, oldest first."""
    d = path if path.is_dir() else path.parent
    out = []
    for f in sorted(d.glob("scaling_*.json"), key=lambda p: p.name):
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            out.append((f, data))
    return out


def _size_order(size: str) -> int:
    return SIZE_NAMES.index(size) if size in SIZE_NAMES else len(SIZE_NAMES)


def timing_zo_table(rows: list[dict[str, Any]]) -> str:
    header = ["size", "params", "probes (one GPU)", "models/pass", "s/step, ours", "TFLOP/s (% of peak)",
              "peak GiB, ours", "s/step, paper's code (same H200)", "peak GiB, paper's code", "speed-up",
              "paper README, A40 dist × 8 (row)"]
    body = []
    for r in sorted(rows, key=lambda r: (int(r.get("probes") or 0), _size_order(str(r.get("size"))),
                                         r.get("label") is not None)):
        size = str(r.get("size", "?"))
        probes = int(r.get("probes") or 0)
        readme_row = PAPER_README_ROW_PER_GPU_PROBES.get(probes)
        readme = PAPER_README_A40_S.get(readme_row or "", {}).get(size)
        ok = r.get("status") == "ok"
        s = _f(r.get("s_step")) if ok else None
        tf, frac = _f(r.get("tflops")), _f(r.get("peak_frac"))
        paper_s = _f(r.get("paper_s"))
        body.append([
            size + (f" ({r['label']})" if r.get("label") else "") + (" *graphed*" if r.get("graphed") else ""),
            fmt(_f(r.get("params")), "int"), str(probes), fmt(_f(r.get("models_per_pass")), "int"),
            fmt_dur(s) if ok else str(r.get("status", "?")),
            f"{tf:.1f} ({100 * frac:.1f}%)" if ok and tf is not None and frac is not None else "–",
            fmt_gib(_f(r.get("peak_alloc_gib")) if ok else None),
            fmt_dur(paper_s), fmt_gib(_f(r.get("paper_gib"))),
            f"{paper_s / s:.1f}x" if paper_s and s else "–",
            f"{readme:g} s ({readme_row.split(' (')[0]})" if readme is not None and readme_row else "–",
        ])
    return md_table(header, body)


def timing_sweep_lines(sw: dict[str, Any]) -> list[str]:
    rows = [r for r in sw.get("rows") or [] if r.get("status") == "ok"]
    if not rows:
        return []
    lines = [f"**Memory against context length** ({sw.get('size', '?')}, {sw.get('probes', '?')} probes, "
             f"B={sw.get('B', '?')}): peak memory should not grow with T once T exceeds the time chunk "
             "(the forward keeps one chunk of states, not all T).", ""]
    lines.append(md_table(
        ["T", "time chunk", "s/step, ours", "how timed", "peak GiB, ours", "s/step, paper's code", "peak GiB, paper's code"],
        [[fmt(_f(r.get("T")), "int"), fmt(_f(r.get("time_chunk")), "int"), fmt_dur(_f(r.get("s_step"))),
          str(r.get("method", "?")), fmt_gib(_f(r.get("peak_alloc_gib"))), fmt_dur(_f(r.get("paper_s"))),
          fmt_gib(_f(r.get("paper_gib")))] for r in rows]))
    lines.append("")
    peaks = {int(_f(r["T"])): _f(r.get("peak_alloc_gib")) for r in rows if _f(r.get("peak_alloc_gib"))}
    if len(peaks) >= 2:
        ratio = max(peaks.values()) / min(peaks.values())
        text = (f"Peak memory from T = {min(peaks):,} to {max(peaks):,}: max/min {ratio:.3f} "
                f"({'flat within 5%' if ratio <= 1.05 else 'NOT flat within 5%'})")
        chunk = max(int(_f(r.get("time_chunk")) or 0) for r in rows)
        above = {t: v for t, v in peaks.items() if t >= chunk}
        if chunk and 2 <= len(above) < len(peaks):
            r2 = max(above.values()) / min(above.values())
            text += (f"; over T >= {chunk:,} (the largest time chunk of the sweep, so the chunked forward holds "
                     f"one {chunk}-step chunk at every such T): max/min {r2:.3f} "
                     f"({'flat within 5%' if r2 <= 1.05 else 'NOT flat within 5%'})")
        lines.append(text + ".")
        lines.append("")
    return lines


def timing_scaling_lines(bench_path: Path, report_dir: Path) -> list[str]:
    files = scaling_files(bench_path)
    if not files:
        return ["Multi-GPU scaling: no `scaling_*.json` (from `bench/run_scaling.sh`) beside the bench JSON yet."]
    links = ", ".join(f"[`{f.with_suffix('.md').name}`]({_rel(f.with_suffix('.md'), report_dir)})"
                      if f.with_suffix(".md").is_file() else f"`{f.name}`" for f, _ in files)
    lines = [f"**Multi-GPU scaling** (weak scaling: 12 probes per GPU, so N GPUs evaluate N times the probes in "
             f"a step; speed-up = N·T₁/T_N, ideal N). Full tables, per-phase times and commands: {links}.", ""]
    body = []
    for f, data in files:
        env = data.get("env") or {}
        for r in data["rows"]:
            ok = r.get("status") == "ok"
            body.append([f"`{f.stem}`", str(r.get("size", "?")), fmt(_f(r.get("params")), "int"),
                         str(r.get("world", "?")), fmt(_f(r.get("probes_total")), "int"),
                         fmt_dur(_f(r.get("s_per_step"))) if ok else "–",
                         f"{_f(r.get('speedup')):.3f}x" if ok and _f(r.get("speedup")) is not None else "–",
                         fmt(_f(r.get("bytes_per_step")), "int") if ok else "–",
                         "ok" if ok else f"{r.get('status', '?')}: {r.get('reason') or ''}".rstrip(": "),
                         str(env.get("date", "?"))])
    lines.append(md_table(["file", "size", "params", "GPUs", "probes/step", "s/step", "speed-up", "bytes/step",
                           "status", "date"], body))
    return lines


def timing_section(bench_path: Path, *, report: Path) -> str:
    """The timing/VRAM table (issue 6, part 4): the newest bench_step_*.json of bench/bench_step.py beside
    the paper's code measured on the same GPU (the rows' paper_s / paper_gib) and the paper's README table."""
    lines = ["## Timing and memory: ours beside the paper's", ""]
    found = newest_bench(bench_path)
    label = _source_label([bench_path])
    if found is None:
        lines.append(f"**Pending: no `bench_step_*.json` in `{label}` yet.** On a GPU, from the repository root:")
        lines += ["", "```bash", "python bench/bench_step.py --probes 12,64 --sizes tiny,small,medium,large,xlarge "
                  "--sections peak,zo,breakdown,sweep --sweep_T 10,100,1000,10000", "```"]
        return "\n".join(lines)
    path, data = found
    meta = data.get("meta") or {}
    st = meta.get("settings") or {}
    peak = data.get("peak") or {}
    lines.append(f"Source: [`{_source_label([path])}`]({_rel(path, report.parent)}), the newest "
                 f"`bench_step_*.json` in `{label}` with every preset ({', '.join(TIMING_SIZES)}) and CUDA graphs "
                 f"not forced on ({len(bench_step_files(bench_path))} files there; newer ones of a few presets are "
                 "summarised in bench/results/README.md)."
                 + (" Rows marked *graphed* replayed CUDA graphs (`--cuda_graphs auto`, the default for small "
                    "models): the whole step, or the stacked loss alone where the bench's note says so; their peak "
                    "GiB can miss the graph's memory pool."
                    if any(r.get("graphed") for r in data.get("zo_steps") or [] if isinstance(r, dict)) else ""))
    gpu = f"{meta.get('gpu', '?')}"
    if _f(meta.get("gpu_memory_gib")):
        gpu += f" ({_f(meta['gpu_memory_gib']):.1f} GiB, driver {meta.get('driver', '?')})"
    lines.append(f"Measured {meta.get('date', '?')} on one {gpu}; torch {meta.get('torch', '?')}, CUDA "
                 f"{meta.get('cuda', '?')}, commit {meta.get('git', '?')}"
                 + ("" if meta.get("finished", True) else "; **the bench did not finish**") + ". Command:")
    lines += ["", "```bash", str(meta.get("command", "?")), "```", ""]
    lines.append(f"Shapes: LSTM presets, batch {st.get('batch', '?')}, T = {st.get('T', '?')}, vocabulary "
                 f"{st.get('vocab', '?')}, {st.get('dtype', '?')} weights with a {st.get('master_dtype', '?')} "
                 f"master copy; one CD-RGE step (`train.zo_step.zo_step`), median of {st.get('steps', '?')} timed "
                 f"steps after {st.get('warmup', '?')} warm-up steps; peak GiB = `torch.cuda.max_memory_allocated` "
                 "over the timed steps."
                 + (f" Dense bf16 GEMM peak measured in the same run: {_f(peak['tflops']):.1f} TFLOP/s."
                    if _f(peak.get("tflops")) else ""))
    lines.append("")
    lines.append("Columns: *paper's code (same H200)* is the paper's `distributed_rge.py` run by us at the same "
                 "per-GPU load on an H200 (the `paper_s` / `paper_gib` of the JSON rows, from `PAPER_ZO` in "
                 "`bench/bench_step.py`; blank where it was not measured); *paper README, A40 "
                 "dist × 8* is the paper's own figure for a whole 8-GPU step on A40s, whose per-GPU load is "
                 "12 probes (96·CD-RGE) or 64 probes (512·CD-RGE). That last column is not like for like: "
                 "one H200 doing one GPU's share against eight A40s.")
    lines.append("")
    lines.append(timing_zo_table(data["zo_steps"]))
    lines.append("")
    newer = newer_rows(bench_path, path)
    if newer:
        lines.append("**Newer measurements** of some presets (benches after the table's, CUDA graphs not forced on; "
                     "the newest per preset and probe count):")
        lines.append("")
        lines.append(md_table(
            ["size", "probes (one GPU)", "s/step, ours", "peak GiB, ours", "s/step, paper's code", "speed-up", "bench"],
            [[str(r.get("size", "?")) + (f" ({r['label']})" if r.get("label") else "")
              + (" *graphed*" if r.get("graphed") else ""), str(r.get("probes", "?")),
              fmt_dur(_f(r.get("s_step"))), fmt_gib(_f(r.get("peak_alloc_gib"))), fmt_dur(_f(r.get("paper_s"))),
              f"{_f(r['paper_s']) / _f(r['s_step']):.1f}x" if _f(r.get("paper_s")) and _f(r.get("s_step")) else "–",
              f"[`{f.stem}`]({_rel(f.with_suffix('.md'), report.parent)})" if f.with_suffix(".md").is_file()
              else f"`{f.stem}`"] for f, r in newer]))
        lines.append("")
    sweep_src = (path, data) if (data.get("context_sweep") or {}).get("rows") else newest_with_sweep(bench_path)
    if sweep_src is not None and sweep_src[0] != path:
        lines.append(f"The context sweep below is from [`{_source_label([sweep_src[0]])}`]"
                     f"({_rel(sweep_src[0], report.parent)}), the newest bench that ran it.")
        lines.append("")
    lines += timing_sweep_lines(sweep_src[1].get("context_sweep") if sweep_src else {})
    bptt = [r for r in data.get("bptt") or [] if r.get("status") == "ok"]
    if bptt:
        lines.append("BPTT rows (autograd forward + backward + SGD, same shapes):")
        lines.append("")
        lines.append(md_table(["kind", "size", "params", "s/step", "peak GiB", "paper README, A40 BPTT (series)"],
                              [[str(r.get("kind", "?")), str(r.get("size", "?")), fmt(_f(r.get("params")), "int"),
                                fmt_dur(_f(r.get("s_step"))), fmt_gib(_f(r.get("peak_alloc_gib"))),
                                fmt_dur(PAPER_README_A40_S["BPTT (series)"].get(str(r.get("size"))))]
                               for r in bptt]))
        lines.append("")
    else:
        lines.append("Not in this bench: the README's series rows (BPTT, 96·CD-RGE and 512·CD-RGE on one GPU, "
                     "`--sections bptt` and `python rge_series_experiments.py --unittest --device cuda`).")
        lines.append("")
    targets = data.get("targets") or []
    if targets:
        counts: dict[str, int] = {}
        for t in targets:
            counts[str(t.get("status", "?"))] = counts.get(str(t.get("status", "?")), 0) + 1
        tally = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (kv[0] != "met", kv[0])))
        lines.append(f"<details><summary>Issue 4's targets, as the bench checked them: {tally}</summary>")
        lines.append("")
        lines.append(md_table(["target", "measured", "status", "note"],
                              [[str(t.get("target", "?")), str(t.get("measured", "?")), str(t.get("status", "?")),
                                str(t.get("note", ""))] for t in targets]))
        lines.append("")
        lines.append("</details>")
        lines.append("")
    lines.append("<details><summary>The paper's README table (A40, seconds per step; its 100 k … 1.1 B columns are "
                 "our tiny … xlarge presets), as published</summary>")
    lines.append("")
    lines.append(md_table(["# params"] + [PAPER_README_SIZES[s] for s in PAPER_README_SIZES],
                          [[row] + [f"{v[s]:g}" if s in v else "–" for s in PAPER_README_SIZES]
                           for row, v in PAPER_README_A40_S.items()]))
    lines.append("")
    lines.append("</details>")
    lines.append("")
    lines += timing_scaling_lines(bench_path, report.parent)
    return "\n".join(lines)


# ------------------------------------------------ 7B smoke test and multi-GPU scaling --

# The paper's 7B smoke test (README of the paper's code; also the PAPER dict of bench/run_smoke_7b.sh and the
# right-hand column of its smoke7b_*.md files).
PAPER_SMOKE_7B = {"gpus": "8 x A40", "probes_per_step": 96, "steps_to_0.1": 6, "first_loss": 15.95,
                  "final_loss": 0.0469, "s_per_step": 19.64}
MULTIGPU_SECTION_ID = "multigpu-h200"
SMOKE_PREFIX = "smoke7b_"
SCALING_PREFIX = "scaling_"


def read_json_objects(d: Path, prefix: str) -> tuple[list[tuple[Path, dict[str, Any]]], list[Path]]:
    """(parsed, skipped): the PREFIX*.json files in d, oldest first (the name carries the timestamp); a file
    that is unreadable or not a JSON object is skipped."""
    parsed, skipped = [], []
    files = sorted(d.glob(f"{prefix}*.json"), key=lambda p: p.name) if d.is_dir() else []
    for f in files:
        try:
            data = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            data = None
        if isinstance(data, dict):
            parsed.append((f, data))
        else:
            skipped.append(f)
    return parsed, skipped


def skipped_note(skipped: Sequence[Path]) -> list[str]:
    if not skipped:
        return []
    names = ", ".join(f"`{f.name}`" for f in skipped)
    return [f"Skipped as malformed (not a JSON object of the expected form): {names}.", ""]


def _stamp(path: Path, prefix: str) -> str:
    return path.stem[len(prefix):] if path.stem.startswith(prefix) else path.stem


def _md_link(json_path: Path, report_dir: Path, text: str | None = None) -> str:
    """A link to the .md beside a JSON file (its rendering; text: the .md's name by default), or the bare text
    (default: the JSON's name) when there is none."""
    md = json_path.with_suffix(".md")
    if md.is_file():
        return f"[`{text or md.name}`]({_rel(md, report_dir)})"
    return f"`{text or json_path.name}`"


def fmt_dur_fine(v: float | None) -> str:
    """Seconds with four significant figures ('2.100 s', '309.0 ms'): the scaling table's T_N differ by <1%."""
    if v is None:
        return "–"
    return f"{1000 * v:.1f} ms" if v < 1.0 else f"{v:.3f} s"


def _gpu_short(name: Any) -> str:
    return re.sub(r"^NVIDIA\s+", "", str(name)) if name else "GPU"


def fmt_loss(v: float | None) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.4g}"


def fmt_checksums(equal: Any, n: Any, of: Any = None) -> str:
    """'yes (4 of 4 ranks)' / 'no (2 ranks)' / '–' from a checksums_equal flag and rank counts."""
    if equal is None:
        return "–"
    word = "yes" if equal is True else "no"
    n, of = _f(n), _f(of)
    if n is None:
        return word
    ranks = f"{int(n)} of {int(of)}" if of is not None else f"{int(n)}"
    return f"{word} ({ranks} rank{'' if (of if of is not None else n) == 1 else 's'})"


def smoke_lr(data: dict[str, Any]) -> float | None:
    """The learning rate of a smoke run: --learning_rate of its command (the JSON has no lr field)."""
    m = re.search(r"--learning_rate[ =](\S+)", str(data.get("command") or ""))
    return _f(m.group(1)) if m else _f(data.get("lr"))


def smoke_steps_to_target(data: dict[str, Any]) -> int | None:
    step = _f(data.get("steps_to_target"))
    return int(step) if step is not None and data.get("reached_target", True) else None


def smoke_divergence(data: dict[str, Any]) -> tuple[int, float, float, int] | None:
    """(step of the best loss, best loss, final loss, last step) of a run that missed the target and whose
    loss rose after its best; steps numbered from 0, as steps_to_target."""
    if smoke_steps_to_target(data) is not None:
        return None
    losses = [_f(x) for x in data.get("losses") or []]
    if not losses or any(v is None for v in losses):
        return None
    best = min(range(len(losses)), key=losses.__getitem__)
    if best == len(losses) - 1 or losses[-1] <= losses[best]:
        return None
    return best, losses[best], losses[-1], len(losses) - 1


def smoke_row(path: Path, data: dict[str, Any], report_dir: Path) -> list[str]:
    step = smoke_steps_to_target(data)
    n = _f(data.get("steps_recorded"))
    world = _f(data.get("world"))
    peak = _f(data.get("peak_gib_max_over_ranks"))
    peak = peak if peak is not None else _f(data.get("peak_gib_steps_rank0"))
    return [
        _md_link(path, report_dir, _stamp(path, SMOKE_PREFIX)),
        f"{int(world)} x {_gpu_short(data.get('device_name'))}" if world is not None else "?",
        fmt(_f(data.get("probes_per_step")), "int") + (f" ({int(_f(data['probes_per_gpu']))}/GPU)"
                                                       if _f(data.get("probes_per_gpu")) is not None else ""),
        fmt(smoke_lr(data), "lr"),
        str(step) if step is not None else ("not reached in " + fmt(n, "int") if n is not None else "not reached"),
        f"{fmt_loss(_f(data.get('first_loss')))} → {fmt_loss(_f(data.get('final_loss')))}",
        fmt_dur(_f(data.get("s_per_step_median"))),
        fmt_gib(peak),
        fmt_checksums(data.get("checksums_equal"), data.get("summaries"), world),
        str(data.get("status", "?")),
    ]


def smoke_paper_row() -> list[str]:
    p = PAPER_SMOKE_7B
    return ["the paper (README)", p["gpus"], str(p["probes_per_step"]), "–", str(p["steps_to_0.1"]),
            f"{fmt_loss(p['first_loss'])} → {fmt_loss(p['final_loss'])}", fmt_dur(p["s_per_step"]), "–", "–", "–"]


def _run_label(data: dict[str, Any]) -> str:
    world, probes = _f(data.get("world")), _f(data.get("probes_per_step"))
    return f"{int(world) if world is not None else '?'}-GPU / {int(probes) if probes is not None else '?'}-probe"


def smoke_summary(runs: Sequence[tuple[Path, dict[str, Any]]], threshold: float = DEFAULT_THRESHOLD) -> str:
    """One plain sentence: which runs diverged or missed the target, and which reached it (grouped by GPUs
    and probes, with their learning rates and steps)."""
    parts = []
    reached: dict[tuple, list[tuple[float | None, int]]] = {}
    for path, d in runs:
        step = smoke_steps_to_target(d)
        if step is not None:
            key = (_f(d.get("world")), _f(d.get("probes_per_step")), _f(d.get("probes_per_gpu")))
            reached.setdefault(key, []).append((smoke_lr(d), step))
            continue
        div = smoke_divergence(d)
        if div:
            i, best, final, last = div
            parts.append(f"the {_run_label(d)} run (`{_stamp(path, SMOKE_PREFIX)}`) diverged from step {i + 1} on "
                         f"(loss {best:.3g} at step {i}, then rising, to {fmt_loss(final)} at step {last})")
        else:
            parts.append(f"the {_run_label(d)} run (`{_stamp(path, SMOKE_PREFIX)}`) did not reach loss < "
                         f"{threshold:g} in {fmt(_f(d.get('steps_recorded')), 'int')} steps")
    for (world, probes, per_gpu), items in reached.items():
        who = "the" if len(items) == 1 else "both" if len(items) == 2 else f"all {len(items)}"
        paper = "the paper's " if probes == PAPER_SMOKE_7B["probes_per_step"] else ""
        per = f" ({int(per_gpu)} per GPU)" if per_gpu is not None else ""
        how = ", ".join(f"lr {fmt(lr, 'lr')} in {s}" + (" steps" if k == 0 else "") for k, (lr, s) in enumerate(items))
        parts.append(f"{who} {int(world) if world is not None else '?'}-GPU run{'s' if len(items) > 1 else ''} "
                     f"with {paper}{fmt(probes, 'int')} probes per step{per} reached loss < {threshold:g} ({how})")
    if not parts:
        return ""
    text = "; ".join(parts[:-1]) + (", and " if len(parts) > 1 else "") + parts[-1]
    return text[0].upper() + text[1:] + "."


def _rendered(fn, *args) -> Any:
    """fn(*args), or None when a JSON file of the right name holds fields of the wrong type (a malformed file
    is skipped with a note; it never stops the report)."""
    try:
        return fn(*args)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError):
        return None


def smoke_checked_row(path: Path, data: dict[str, Any], report_dir: Path) -> list[str]:
    """smoke_row, with the summary sentence's reading of the file tried too (so one bad file cannot drop it)."""
    smoke_summary([(path, data)])
    return smoke_row(path, data, report_dir)


def smoke_lines(bench_dir: Path, report_dir: Path) -> list[str]:
    lines = ["### 7B smoke test (the paper's `--tokenizer hf --model_type LSTM` line)", ""]
    found, skipped = read_json_objects(bench_dir, SMOKE_PREFIX)
    runs, rows = [], []
    for path, data in found:
        row = _rendered(smoke_checked_row, path, data, report_dir)
        if row is None:
            skipped.append(path)
        else:
            runs.append((path, data))
            rows.append(row)
    label = _source_label([bench_dir])
    if not runs:
        return lines + [f"No `{SMOKE_PREFIX}*.json` (from `bench/run_smoke_7b.sh`) in `{label}` yet.", ""] \
            + skipped_note(skipped)
    params = {int(p) for p in (_f(d.get("params")) for _, d in runs) if p is not None}
    lines.append(f"`distributed_rge.py --task lm --tokenizer hf --model_type LSTM --mode test` (one fixed batch until "
                 f"the train loss is below 0.1), {len(runs)} run(s) of `bench/run_smoke_7b.sh` in `{label}`"
                 + (f", {', '.join(f'{p:,}' for p in sorted(params))} parameters" if params else "")
                 + ". Steps are numbered from 0 (the loss logged at step k follows k updates); s/step is the median "
                 "after the first step; peak GiB/GPU is the allocator peak, max over ranks, the final replica check "
                 "included; checksums: every rank's float64 θ checksum at the end. The run links go to each run's "
                 "full report.")
    lines.append("")
    lines.append(md_table(["run", "GPUs", "probes/step", "lr", f"steps to loss < {DEFAULT_THRESHOLD:g}",
                           "first → final loss", "s/step", "peak GiB/GPU", "checksums equal", "status"],
                          rows + [smoke_paper_row()]))
    lines.append("")
    summary = _rendered(smoke_summary, runs)
    if summary:
        lines += [summary, ""]
    return lines + skipped_note(skipped)


def scaling_rows(rows: Sequence[dict[str, Any]]) -> list[list[str]]:
    """Per preset and world size: T_N, speed-up N·T1/T_N and efficiency T1/T_N (T1: the preset's ok 1-GPU row,
    else the row's t1_s), bytes per step, checksums."""
    t1 = {str(r.get("size")): _f(r.get("s_per_step")) for r in rows
          if r.get("status") == "ok" and _f(r.get("world")) == 1}
    body = []
    for r in sorted(rows, key=lambda r: (_size_order(str(r.get("size"))), str(r.get("size")), _f(r.get("world")) or 0)):
        ok = r.get("status") == "ok"
        n, tn = _f(r.get("world")), _f(r.get("s_per_step"))
        base = t1.get(str(r.get("size"))) or _f(r.get("t1_s"))
        eff = base / tn if ok and base and tn and n else None
        sent = _f(r.get("bytes_sent_per_step"))
        nvals = len(r.get("checksum_values") or []) or None
        body.append([str(r.get("size", "?")), fmt(_f(r.get("params")), "int"), fmt(n, "int"),
                     fmt(_f(r.get("probes_total")), "int"), fmt_dur_fine(tn) if ok else "–",
                     f"{n * eff:.3f}x" if eff is not None else "–", f"{eff:.3f}" if eff is not None else "–",
                     (fmt(_f(r.get("bytes_per_step")), "int") + (f" (sent {fmt(sent, 'int')})" if sent is not None else ""))
                     if ok else "–",
                     fmt_checksums(r.get("checksums_equal"), nvals) if ok else "–",
                     "ok" if ok else f"{r.get('status', '?')}: {r.get('reason') or ''}".rstrip(": ")])
    return body


def scaling_body(path: Path, data: dict[str, Any], report_dir: Path) -> list[str]:
    env = data.get("env") or {}
    rows = [r for r in data["rows"] if isinstance(r, dict)]
    lines = [f"From {_md_link(path, report_dir)} (the rendering of `{path.name}`, the newest readable "
             f"`{SCALING_PREFIX}*.json`; {env.get('date', '?')}, `{env.get('script', '?')}`): weak scaling, "
             f"{env.get('probes_per_gpu', '?')} probes per GPU, batch {env.get('batch', '?')}, {env.get('dtype', '?')}. "
             "T_N = median s/step with N GPUs; speed-up N·T₁/T_N = probe throughput of N GPUs over one GPU (issue 7's "
             "\"efficiency\", ideal N); parallel efficiency T₁/T_N (ideal 1.000); bytes/step = rank 0's all-gather "
             "payload, sent + received.", ""]
    lines.append(md_table(["size", "params", "GPUs", "probes/step", "s/step (T_N)", "speed-up N·T₁/T_N",
                           "efficiency T₁/T_N", "bytes/step", "checksums equal", "status"], scaling_rows(rows)))
    lines.append("")
    worlds = sorted({int(w) for w in (_f(r.get("world")) for r in rows if r.get("status") == "ok") if w is not None})
    if 8 not in worlds:
        names = {_gpu_short(r.get("device_name")) for r in rows if r.get("device_name")}
        gpu = names.pop() if len(names) == 1 else "GPU"
        have = ", ".join(map(str, worlds[:-1])) + (" and " if len(worlds) > 1 else "") + (str(worlds[-1]) if worlds else "")
        lines.append(f"**The 8-GPU point was not run** (the paper's README times 8 GPUs): only "
                     f"{have or 'no'} {gpu}s were available.")
        lines.append("")
    return lines


def scaling_lines(bench_dir: Path, report_dir: Path) -> list[str]:
    """The newest scaling_*.json that renders; newer malformed ones are noted as skipped."""
    lines = ["### Multi-GPU scaling", ""]
    found, skipped = read_json_objects(bench_dir, SCALING_PREFIX)
    valid = [(f, d) for f, d in found if isinstance(d.get("rows"), list)]
    skipped += [f for f, d in found if not isinstance(d.get("rows"), list)]
    for k in range(len(valid) - 1, -1, -1):
        body = _rendered(scaling_body, *valid[k], report_dir)
        if body is not None:
            return lines + body + skipped_note(sorted(skipped, key=lambda p: p.name))
        skipped.append(valid[k][0])
    return lines + [f"No `{SCALING_PREFIX}*.json` (from `bench/run_scaling.sh`) in "
                    f"`{_source_label([bench_dir])}` yet.", ""] + skipped_note(sorted(skipped, key=lambda p: p.name))


def multigpu_section(bench_dir: Path, *, report: Path) -> str:
    """The 7B smoke test (every smoke7b_*.json of bench/run_smoke_7b.sh, beside the paper's figures) and the
    multi-GPU scaling (the newest scaling_*.json of bench/run_scaling.sh) from bench_dir."""
    lines = ["## 7B smoke test and multi-GPU scaling", ""]
    lines += smoke_lines(bench_dir, report.parent)
    lines += scaling_lines(bench_dir, report.parent)
    return "\n".join(lines).rstrip() + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Figure 1 / Table 2 tables, plots and report sections from saved "
                                            "JSON lines (no rerun).")
    p.add_argument("--figure1", nargs="+", type=Path, metavar="PATH",
                   help="JSONL files or directories of the Figure 1 runs")
    p.add_argument("--table2", nargs="+", type=Path, metavar="PATH",
                   help="JSONL files or directories of the Table 2 runs")
    p.add_argument("--gpu", nargs="?", type=Path, const=Path(DEFAULT_GPU_DIR), default=None, metavar="DIR",
                   help=f"the 'Paper scale on H200' section from the results folder of "
                        f"scripts/gpu_batch_reproduce.sh (default {DEFAULT_GPU_DIR}; a pending note when it "
                        f"holds no runs); included by default when no --figure1/--table2/--gpu is given")
    p.add_argument("--timing", nargs="?", type=Path, const=Path(DEFAULT_BENCH_DIR), default=None, metavar="PATH",
                   help=f"the timing/VRAM table from the newest bench_step_*.json in PATH (a folder, default "
                        f"{DEFAULT_BENCH_DIR}, or one JSON file), with the scaling_*.json beside it; included by "
                        f"default when no --figure1/--table2/--gpu/--timing is given")
    p.add_argument("--multigpu", nargs="?", type=Path, const=Path(DEFAULT_BENCH_DIR), default=None, metavar="DIR",
                   help=f"the '7B smoke test and multi-GPU scaling' section from the smoke7b_*.json and the newest "
                        f"scaling_*.json in DIR (default {DEFAULT_BENCH_DIR}); also written with --gpu (from "
                        f"{DEFAULT_BENCH_DIR}) and by default")
    p.add_argument("--tag", default=None,
                   help="section tag, e.g. cpu or paper (default: the input directory's name)")
    p.add_argument("--report", type=Path, default=REPO / DEFAULT_REPORT,
                   help=f"markdown report to update (default {DEFAULT_REPORT}); plots go to figures/ beside it")
    p.add_argument("--filter", action="append", default=[], metavar="SUBSTR",
                   help="keep only runs whose name contains SUBSTR (repeatable: any match)")
    p.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD,
                   help="Figure 1 train-loss threshold for steps-to-loss (default 0.1)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--stdout", action="store_true", help="print the sections instead of writing the report")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    jobs: list[tuple[str, list[Path], str]] = []
    for kind in ("figure1", "table2"):
        paths = getattr(args, kind)
        if paths:
            tag = args.tag or (paths[0].name if paths[0].is_dir() else paths[0].parent.name)
            jobs.append((kind, list(paths), tag))
    gpu_dir, bench, multigpu = args.gpu, args.timing, args.multigpu
    if multigpu is None and gpu_dir is not None:         # the multi-GPU results sit beside the GPU section
        multigpu = REPO / DEFAULT_BENCH_DIR
    if not jobs and gpu_dir is None and bench is None and multigpu is None:   # every saved experiment
        for kind in ("figure1", "table2"):
            base = REPO / "results" / kind
            for d in sorted(base.iterdir()) if base.is_dir() else []:
                if d.is_dir() and any(d.glob("*.jsonl")):
                    jobs.append((kind, [d], d.name))
        gpu_dir = REPO / DEFAULT_GPU_DIR
        bench = multigpu = REPO / DEFAULT_BENCH_DIR
    report = args.report if args.report.is_absolute() else Path.cwd() / args.report
    status = 0
    for src, section, section_id in ((bench, timing_section, TIMING_SECTION_ID),
                                     (multigpu, multigpu_section, MULTIGPU_SECTION_ID)):
        if src is None:
            continue
        body = section(src if src.is_absolute() else Path.cwd() / src, report=report)
        if args.stdout:
            print(body)
        else:
            write_section(report, section_id, body)
            print(f"wrote section {section_id} of {report}")
    if gpu_dir is not None:
        gpu_dir = gpu_dir if gpu_dir.is_absolute() else Path.cwd() / gpu_dir
        body = gpu_section(gpu_dir, report=report, threshold=args.threshold, plots=not args.no_plots)
        if args.stdout:
            print(body)
        else:
            write_section(report, GPU_SECTION_ID, body)
            print(f"wrote section {GPU_SECTION_ID} of {report}")
    for kind, paths, tag in jobs:
        body = build_section(kind, paths, tag=tag, report=report, filters=args.filter,
                             threshold=args.threshold, plots=not args.no_plots)
        if body is None:
            status = 1
            continue
        section_id = f"{kind}-{tag}"
        if args.stdout:
            print(body)
        else:
            write_section(report, section_id, body)
            print(f"wrote section {section_id} of {report}")
    return status


if __name__ == "__main__":
    sys.exit(main())
