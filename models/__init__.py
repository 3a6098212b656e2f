"""Models: head-structured LSTM and DNC, size presets, parameter counts, memory checks.

    cfg = ModelConfig(model_type="LSTM", hidden_size=240, num_heads=12)
    check_fits(cfg, device=dev, batch_size=1024, time_chunk=16)   # refuse before allocating
    model = build_model(cfg, generator=torch.Generator().manual_seed(0), device=dev)
"""
from __future__ import annotations

import os

import torch

from models.config import (MODEL_TYPES, SIZE_PRESETS, ModelConfig, apply_scale, estimate_memory_bytes, format_bytes,
                           param_count, preset)


def build_model(cfg: ModelConfig, *, generator: torch.Generator, device="cpu"):
    if cfg.model_type == "LSTM":
        from models.lstm import LSTMModel
        return LSTMModel(cfg, generator=generator, device=device)
    from models.dnc import DNCModel
    return DNCModel(cfg, generator=generator, device=device)


def available_memory_bytes(device) -> int:
    """Free memory on the device: CUDA free memory, or the host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))


def check_fits(cfg: ModelConfig, *, device, batch_size: int, time_chunk: int, zo: bool = True,
               master_bytes: int | None = None, probes_in_flight: int = 1, headroom: float = 0.9) -> int:
    """Raise a clear ValueError if the model will not fit on `device`; return the estimate."""
    need = estimate_memory_bytes(cfg, batch_size=batch_size, time_chunk=time_chunk, zo=zo,
                                 master_bytes=master_bytes, probes_in_flight=probes_in_flight)
    have = available_memory_bytes(device)
    if need > headroom * have:
        fits = [n for n, (h, k) in SIZE_PRESETS.items()
                if estimate_memory_bytes(cfg.replace(hidden_size=h, num_heads=k, head_size=0), batch_size=batch_size,
                                         time_chunk=time_chunk, zo=zo, master_bytes=master_bytes,
                                         probes_in_flight=probes_in_flight) <= headroom * have
                and cfg.model_type == "LSTM"]
        hint = (f"presets that fit: {', '.join(fits)} (set --hidden_size/--num_heads accordingly)" if fits
                else "lower --hidden_size, --batch_size or the vocabulary (e.g. --tokenizer char)")
        raise ValueError(f"model of {param_count(cfg):,} parameters needs about {format_bytes(need)} on {device}, "
                         f"but only {format_bytes(have)} is available; {hint}.")
    return need


def supports_stacked(model) -> bool:
    """Whether the model can evaluate several parameter sets in one forward."""
    return hasattr(model, "forward_chunk_stacked")


def auto_models_per_pass(cfg: ModelConfig, *, device, batch_size: int, time_chunk: int, wanted: int,
                         budget_fraction: float = 0.25) -> int:
    """How many perturbed copies of the model to evaluate per forward: as many as `wanted`, within
    `budget_fraction` of the free memory (each copy holds its parameters and its working set)."""
    one = estimate_memory_bytes(cfg, batch_size=batch_size, time_chunk=time_chunk, zo=False) - \
        estimate_memory_bytes(cfg, batch_size=0, time_chunk=0, zo=False) + param_count(cfg) * cfg.dtype_bytes
    fit = int(budget_fraction * available_memory_bytes(device) // max(one, 1))
    return max(1, min(wanted, fit))


def auto_time_chunk(cfg: ModelConfig, *, device, batch_size: int, models: int = 1, T: int = 64,
                    budget_fraction: float = 0.125) -> int:
    """Time steps per forward chunk: the largest (at most T) whose input-gate buffers for `models`
    stacked copies (about three of [B, Tc, 4H] in the weight dtype) fit in `budget_fraction` of the
    free memory. Memory then stays flat in the sequence length."""
    per_step = 3 * models * batch_size * 4 * cfg.hidden_size * cfg.dtype_bytes
    fit = int(budget_fraction * available_memory_bytes(device) // max(per_step, 1))
    return max(1, min(T, fit))


__all__ = ["auto_time_chunk", "supports_stacked", "auto_models_per_pass", "ModelConfig", "MODEL_TYPES", "SIZE_PRESETS", "preset", "apply_scale", "param_count",
           "estimate_memory_bytes", "format_bytes", "build_model", "check_fits", "available_memory_bytes"]
