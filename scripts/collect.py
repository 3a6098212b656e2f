#!/usr/bin/env python3
"""Collect the JSONL metrics written by the sweep runs into CSV tables and plots.

Each input line is a JSON object with at least ``step``. Keys read when
present: ``run`` (else the file stem names the run), ``train_loss``,
``val_loss``, ``val_accuracy``, ``elapsed_s`` (wall clock since start) and
``step_time_s`` (used, cumulatively summed, when ``elapsed_s`` is absent).
Every other key is carried into ``runs.csv`` as its own column; ``optimizer``,
``task`` and ``model_type`` are also copied into ``summary.csv``.

Outputs (under ``--out``, default ``results/collected``):
  runs.csv                  every record; columns ``run``, ``step``, then the
                            union of the other keys in first-seen order
  summary.csv               one row per run
  loss_vs_step.png          train_loss against step, log-y, one line per run
  loss_vs_time.png          train_loss against wall-clock seconds
  val_accuracy_vs_step.png  only when some run logs val_accuracy

Usage:
  python scripts/collect.py [PATH ...] [--out DIR] [--filter SUBSTR] [--no-plots]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

DEFAULT_INPUT = "logs"
DEFAULT_OUT = "results/collected"
DEFAULT_LOSS_THRESHOLD = 0.1
CARRIED_KEYS = ("task", "model_type", "optimizer")


@dataclass
class Run:
    name: str
    records: List[Dict[str, Any]] = field(default_factory=list)
    sources: List[str] = field(default_factory=list)
    skipped_lines: int = 0


@dataclass
class LoadResult:
    runs: Dict[str, Run]
    skipped_lines: int
    warnings: List[str]
    files: List[Path]


def find_jsonl_files(paths: Iterable[Path]) -> tuple[List[Path], List[str]]:
    """Expand files and directories (searched recursively) into JSONL files."""
    files: List[Path] = []
    warnings: List[str] = []
    seen = set()
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.rglob("*.jsonl") if p.is_file())
        elif path.is_file():
            found = [path]
        else:
            warnings.append(f"{path}: no such file or directory")
            continue
        for f in found:
            key = f.resolve()
            if key not in seen:
                seen.add(key)
                files.append(f)
    return files, warnings


def _warn(message: str, warnings: List[str]) -> None:
    warnings.append(message)
    print(f"warning: {message}", file=sys.stderr)


def load_runs(paths: Iterable[Path]) -> LoadResult:
    """Read every JSONL file under ``paths`` into runs keyed by run name.

    Blank lines are ignored. Lines that are not JSON objects with a ``step``
    are skipped with a warning naming file:line and counted against the run
    the file belongs to (the run of the nearest valid record in that file).
    """
    files, warnings = find_jsonl_files(paths)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    runs: Dict[str, Run] = {}
    total_skipped = 0

    def get_run(name: str) -> Run:
        if name not in runs:
            runs[name] = Run(name)
        return runs[name]

    for path in files:
        current: Optional[Run] = None
        pending_skips = 0
        try:
            handle = path.open("r", encoding="utf-8", errors="replace")
        except OSError as exc:
            _warn(f"{path}: cannot read ({exc})", warnings)
            continue
        with handle:
            for lineno, line in enumerate(handle, start=1):
                text = line.strip()
                if not text:
                    continue
                problem = None
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as exc:
                    problem = f"invalid JSON ({exc.msg})"
                    record = None
                if problem is None and not isinstance(record, dict):
                    problem = "not a JSON object"
                if problem is None and _as_float(record.get("step")) is None:
                    problem = "missing or non-numeric 'step'"
                if problem is not None:
                    _warn(f"{path}:{lineno}: skipped line: {problem}", warnings)
                    total_skipped += 1
                    if current is None:
                        pending_skips += 1
                    else:
                        current.skipped_lines += 1
                    continue
                name = str(record.get("run") or path.stem)
                current = get_run(name)
                if pending_skips:
                    current.skipped_lines += pending_skips
                    pending_skips = 0
                if str(path) not in current.sources:
                    current.sources.append(str(path))
                row = dict(record)
                row["run"] = name
                current.records.append(row)
        if pending_skips:
            orphan = get_run(path.stem)
            orphan.skipped_lines += pending_skips
            if str(path) not in orphan.sources:
                orphan.sources.append(str(path))

    for run in runs.values():
        run.records.sort(key=lambda r: _as_float(r.get("step")))
    return LoadResult(runs=runs, skipped_lines=total_skipped, warnings=warnings, files=files)


def _as_float(value: Any) -> Optional[float]:
    """A finite float from a JSON value, else None (bools are not numbers)."""
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _step_value(value: Any) -> Any:
    f = _as_float(value)
    if f is not None and f.is_integer():
        return int(f)
    return f


def time_axis(records: Sequence[Dict[str, Any]]) -> List[Optional[float]]:
    """Wall-clock seconds for each record.

    ``elapsed_s`` when the run logs it (records without it get None);
    otherwise the cumulative sum of ``step_time_s`` (None when a run has
    neither key).
    """
    if any(_as_float(r.get("elapsed_s")) is not None for r in records):
        return [_as_float(r.get("elapsed_s")) for r in records]
    if not any(_as_float(r.get("step_time_s")) is not None for r in records):
        return [None] * len(records)
    total = 0.0
    out: List[Optional[float]] = []
    for r in records:
        total += _as_float(r.get("step_time_s")) or 0.0
        out.append(round(total, 9))
    return out


def _series(records: Sequence[Dict[str, Any]], key: str) -> List[tuple]:
    """(step, value) pairs with a finite value for ``key``."""
    pairs = []
    for r in records:
        v = _as_float(r.get(key))
        if v is not None:
            pairs.append((_step_value(r.get("step")), v))
    return pairs


def threshold_column(threshold: float) -> str:
    return f"steps_to_loss_{threshold:g}"


def summarize_run(run: Run, loss_threshold: float = DEFAULT_LOSS_THRESHOLD) -> Dict[str, Any]:
    records = run.records
    train = _series(records, "train_loss")
    val = _series(records, "val_loss")
    acc = _series(records, "val_accuracy")
    times = [t for t in time_axis(records) if t is not None]
    reached = next((step for step, loss in train if loss < loss_threshold), None)

    row: Dict[str, Any] = {"run": run.name}
    for key in CARRIED_KEYS:
        row[key] = next((r[key] for r in records if r.get(key) not in (None, "")), None)
    row.update({
        "num_records": len(records),
        "last_step": _step_value(records[-1].get("step")) if records else None,
        "first_train_loss": train[0][1] if train else None,
        "last_train_loss": train[-1][1] if train else None,
        "best_train_loss": min(v for _, v in train) if train else None,
        "best_val_loss": min(v for _, v in val) if val else None,
        "best_val_accuracy": max(v for _, v in acc) if acc else None,
        threshold_column(loss_threshold): reached,
        "wall_clock_s": max(times) if times else None,
        "skipped_lines": run.skipped_lines,
    })
    return row


def summarize(runs: Dict[str, Run], loss_threshold: float = DEFAULT_LOSS_THRESHOLD) -> List[Dict[str, Any]]:
    return [summarize_run(runs[name], loss_threshold) for name in sorted(runs)]


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)
    return value


def write_csv(path: Path, rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _csv_cell(row.get(c)) for c in columns})


def record_columns(runs: Dict[str, Run]) -> List[str]:
    columns = ["run", "step"]
    seen = set(columns)
    for name in sorted(runs):
        for record in runs[name].records:
            for key in record:
                if key not in seen:
                    seen.add(key)
                    columns.append(key)
    return columns


def all_records(runs: Dict[str, Run]) -> List[Dict[str, Any]]:
    return [r for name in sorted(runs) for r in runs[name].records]


def _format_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def format_table(rows: Sequence[Dict[str, Any]], columns: Sequence[str]) -> str:
    cells = [[_format_cell(row.get(c)) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines.append("  ".join("-" * w for w in widths))
    for r in cells:
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    return "\n".join(lines)


def _import_pyplot():
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _finish_plot(plt, fig, ax, path: Path, n_lines: int) -> None:
    if n_lines > 12:
        ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    else:
        ax.legend(fontsize="small")
    ax.grid(True, which="both", alpha=0.3)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def make_plots(runs: Dict[str, Run], out_dir: Path) -> List[Path]:
    """Write the PNG plots; returns the paths written (none without matplotlib)."""
    plt = _import_pyplot()
    if plt is None:
        print("warning: matplotlib is not installed; skipping plots (pip install matplotlib)",
              file=sys.stderr)
        return []
    out_dir.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    names = sorted(runs)

    def positive_loss(records):
        xs_steps, xs_time, ys = [], [], []
        for r, t in zip(records, time_axis(records)):
            loss = _as_float(r.get("train_loss"))
            if loss is None or loss <= 0:
                continue
            xs_steps.append(_as_float(r.get("step")))
            xs_time.append(t)
            ys.append(loss)
        return xs_steps, xs_time, ys

    loss_data = {n: positive_loss(runs[n].records) for n in names}
    loss_runs = [n for n in names if loss_data[n][2]]
    if loss_runs:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for n in loss_runs:
            steps, _, ys = loss_data[n]
            ax.plot(steps, ys, label=n, linewidth=1.2)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel("train loss")
        ax.set_title("Train loss vs step")
        path = out_dir / "loss_vs_step.png"
        _finish_plot(plt, fig, ax, path, len(loss_runs))
        written.append(path)

        fig, ax = plt.subplots(figsize=(9, 5.5))
        plotted = 0
        for n in loss_runs:
            _, times, ys = loss_data[n]
            pts = [(t, y) for t, y in zip(times, ys) if t is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=n, linewidth=1.2)
                plotted += 1
        ax.set_yscale("log")
        ax.set_xlabel("wall-clock time (s)")
        ax.set_ylabel("train loss")
        ax.set_title("Train loss vs wall-clock time")
        if plotted == 0:
            ax.text(0.5, 0.5, "no elapsed_s / step_time_s logged", ha="center",
                    va="center", transform=ax.transAxes)
        path = out_dir / "loss_vs_time.png"
        if plotted:
            _finish_plot(plt, fig, ax, path, plotted)
        else:
            _save_plain(plt, fig, path)
        written.append(path)
    else:
        print("note: no positive train_loss values; skipping loss plots", file=sys.stderr)

    acc_runs = [n for n in names if _series(runs[n].records, "val_accuracy")]
    if acc_runs:
        fig, ax = plt.subplots(figsize=(9, 5.5))
        for n in acc_runs:
            pairs = _series(runs[n].records, "val_accuracy")
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], label=n, linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_ylabel("validation accuracy")
        ax.set_title("Validation accuracy vs step")
        path = out_dir / "val_accuracy_vs_step.png"
        _finish_plot(plt, fig, ax, path, len(acc_runs))
        written.append(path)
    return written


def _save_plain(plt, fig, path: Path) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def _default_inputs() -> List[Path]:
    local = Path(DEFAULT_INPUT)
    if local.exists():
        return [local]
    repo_logs = Path(__file__).resolve().parent.parent / DEFAULT_INPUT
    return [repo_logs if repo_logs.exists() else local]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Collect sweep JSONL metrics into runs.csv, summary.csv and plots.")
    parser.add_argument("paths", nargs="*", type=Path,
                        help="JSONL files or directories searched for *.jsonl (default: logs/)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                        help=f"output directory (default: {DEFAULT_OUT})")
    parser.add_argument("--filter", action="append", default=[], metavar="SUBSTR",
                        help="keep only runs whose name contains SUBSTR (repeatable: any match)")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    parser.add_argument("--loss-threshold", type=float, default=DEFAULT_LOSS_THRESHOLD,
                        help="train-loss level for the steps_to_loss_<x> column (default: 0.1)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    inputs = args.paths or _default_inputs()
    result = load_runs(inputs)
    if not result.files:
        print(f"error: no .jsonl files found in: {', '.join(str(p) for p in inputs)}",
              file=sys.stderr)
        return 1

    runs = result.runs
    if args.filter:
        runs = {n: r for n, r in runs.items() if any(s in n for s in args.filter)}
        if not runs:
            print(f"error: no run name contains any of: {', '.join(args.filter)}", file=sys.stderr)
            return 1

    out_dir: Path = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(out_dir / "runs.csv", all_records(runs), record_columns(runs))
    summary = summarize(runs, args.loss_threshold)
    summary_columns = list(summary[0].keys()) if summary else ["run"]
    write_csv(out_dir / "summary.csv", summary, summary_columns)

    plots: List[Path] = [] if args.no_plots else make_plots(runs, out_dir)

    shown = [c for c in summary_columns if c not in CARRIED_KEYS]
    print(format_table(summary, shown))
    print()
    n_records = sum(len(r.records) for r in runs.values())
    print(f"{len(runs)} run(s), {n_records} record(s) from {len(result.files)} file(s); "
          f"skipped {result.skipped_lines} malformed line(s)")
    print(f"wrote {out_dir / 'runs.csv'}, {out_dir / 'summary.csv'}"
          + "".join(f", {p}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
