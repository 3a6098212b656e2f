"""Learning-rate schedules: pure functions of the step."""
from __future__ import annotations

import math

SCHEDULES = ("constant", "cosine")


def learning_rate(step: int, *, base_lr: float, schedule: str = "constant", warmup_iters: int = 0,
                  cosine_wavelength: int = 0, min_lr_ratio: float = 0.0) -> float:
    """Linear warmup over `warmup_iters` steps, then constant or cosine.

    Cosine: lr follows base * (min + (1 - min) * (1 + cos(pi * k / wavelength)) / 2) with k the
    steps after warmup taken modulo 2*wavelength, i.e. it decays over `cosine_wavelength` steps
    and comes back up (the paper's 'wavelength'); a wavelength of 0 means constant."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {SCHEDULES}")
    if warmup_iters > 0 and step < warmup_iters:
        return base_lr * (step + 1) / warmup_iters
    if schedule == "constant" or cosine_wavelength <= 0:
        return base_lr
    k = (step - warmup_iters) % (2 * cosine_wavelength)
    frac = 0.5 * (1.0 + math.cos(math.pi * k / cosine_wavelength))
    return base_lr * (min_lr_ratio + (1.0 - min_lr_ratio) * frac)
