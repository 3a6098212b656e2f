"""Metrics sinks: stdout lines, JSON lines, optional wandb (imported only when asked for)."""
from __future__ import annotations

import json
import math
import os
import sys
import time


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class JsonlWriter:
    """Appends one JSON object per line; flushes every line so a crash loses nothing."""

    def __init__(self, path: str | None, *, append: bool = False):
        self.path = path
        self._f = None
        if path:
            d = os.path.dirname(os.path.abspath(path))
            os.makedirs(d, exist_ok=True)
            self._f = open(path, "a" if append else "w", encoding="utf-8")

    def write(self, record: dict) -> None:
        if self._f is None:
            return
        self._f.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")
        self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class WandbLogger:
    """wandb run; offline mode when no API key is set. Missing wandb: one clear message, no crash."""

    def __init__(self, *, project: str | None, run_name: str | None, config: dict):
        self.run = None
        if not project:
            return
        try:
            import wandb  # noqa: PLC0415 (optional dependency)
        except ImportError:
            print(f"[wandb] --wandb_proj {project!r} was given but wandb is not installed; "
                  f"metrics go to stdout/JSON lines only (pip install wandb to enable).", file=sys.stderr)
            return
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
        if mode == "offline":
            print("[wandb] no WANDB_API_KEY: logging offline (sync later with `wandb sync`).", file=sys.stderr)
        self.run = wandb.init(project=project, name=run_name, config=config, mode=mode)

    def log(self, record: dict, step: int) -> None:
        if self.run is not None:
            self.run.log({k: _jsonable(v) for k, v in record.items() if v is not None}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class Stopwatch:
    def __init__(self):
        self.t0 = time.perf_counter()

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
