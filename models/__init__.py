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


def _fused_chunk(cfg: ModelConfig, device) -> bool:
    """Whether the LSTM's chunk forward takes the fused path on this device (auto resolved once)."""
    if cfg.model_type != "LSTM":
        return False
    from models.lstm_backends import resolve_backend
    return resolve_backend(cfg.backend, device, getattr(torch, cfg.dtype)) in ("fused", "fused_bmm")


def _pass_hint(cfg: ModelConfig, device, batch_size: int) -> dict:
    """The models per pass and time chunk measured for this GPU and shape (models/step_tuning.json,
    `lstm_fused.pass_tuning`), fused LSTM only; {} elsewhere."""
    if not _fused_chunk(cfg, device):
        return {}
    from models.lstm_fused import pass_tuning, step_tiles
    return pass_tuning(Dk=step_tiles(cfg.lstm_head_size)[0], B=batch_size, heads=cfg.lstm_heads, device=device)


def forward_flops(cfg: ModelConfig, *, batch_size: int, T: int) -> float:
    """Model FLOPs of one forward: 2 * params * tokens (the bench's and the paper's convention)."""
    return 2.0 * param_count(cfg) * batch_size * T


def stacked_model_bytes(cfg: ModelConfig, *, batch_size: int, time_chunk: int, fused: bool = True) -> int:
    """Device bytes one more stacked model adds to a forward pass: its perturbed parameters and its
    share of the working set (fused LSTM: padded recurrent weight, input table, c, hs of Tc+1 steps)."""
    P, b = param_count(cfg), cfg.dtype_bytes
    H, V = cfg.hidden_size, cfg.vocab_size
    if fused:
        from models.lstm_fused import step_tiles
        N = cfg.lstm_heads
        Dk = step_tiles(cfg.lstm_head_size)[0]
        rows = min(cfg.vocab_size, batch_size * time_chunk)       # input table, or a chunk's input gates
        work = (N * Dk * 4 * Dk * b + rows * N * 4 * Dk * b + batch_size * N * Dk * (4 + (time_chunk + 1) * b)
                + N * Dk * V * b + time_chunk * batch_size * V * 4 * 3)
    else:
        work = estimate_memory_bytes(cfg, batch_size=batch_size, time_chunk=time_chunk, zo=False) - \
            estimate_memory_bytes(cfg, batch_size=0, time_chunk=0, zo=False)
    return int(P * b + work)


def auto_models_per_pass(cfg: ModelConfig, *, device, batch_size: int, time_chunk: int, wanted: int,
                         budget_fraction: float = 0.25, work_flops: float = 3e12) -> int:
    """How many perturbed copies of the model to evaluate per forward pass.

    Enough that one pass carries `work_flops` of model FLOPs (so launch and per-pass costs stay a few
    percent of it), never more than `wanted`, and all within `budget_fraction` of the free memory.
    Small models get every probe in one pass; a 1B model gets one (the per-probe path, which needs no
    stacked copy at all); the count is even where possible (a probe's two signs share a pass). Where
    this GPU and shape have a measured count (`_pass_hint`), it replaces the FLOP rule."""
    one = stacked_model_bytes(cfg, batch_size=batch_size, time_chunk=time_chunk, fused=_fused_chunk(cfg, device))
    fit = int(budget_fraction * available_memory_bytes(device) // max(one, 1))
    enough = -(-int(work_flops) // max(1, int(forward_flops(cfg, batch_size=batch_size, T=time_chunk))))
    enough = _pass_hint(cfg, device, batch_size).get("models_per_pass", enough)
    m = max(1, min(wanted, fit, enough))
    if m < wanted:
        passes = -(-wanted // m)
        m = -(-wanted // passes)                # the same number of passes, filled evenly
        if m > 1 and m % 2:
            m = m + 1 if m + 1 <= min(wanted, fit) else m - 1
    return m


def auto_time_chunk(cfg: ModelConfig, *, device, batch_size: int, models: int = 1, T: int = 64,
                    budget_fraction: float = 0.125, floor_bytes: int = 1 << 30) -> int:
    """Time steps per forward chunk; memory then stays flat in the sequence length.

    Fused LSTM: the chunk's hidden states (Tc+1 steps of [B, H] per model) are kept within half the
    models' parameter bytes, or 1 GiB, whichever is more; so a 1B model runs one step per chunk and
    small models whole sequences; a measured chunk for this GPU and shape (`_pass_hint`) replaces that
    rule. Other paths: about three [B, Tc, 4H] input-gate buffers per model within `budget_fraction` of
    the free memory."""
    if _fused_chunk(cfg, device):
        hint = _pass_hint(cfg, device, batch_size).get("time_chunk")
        if hint:
            return max(1, min(T, hint))
        per_step = models * batch_size * cfg.hidden_size * 1.1 * cfg.dtype_bytes
        budget = max(0.5 * models * param_count(cfg) * cfg.dtype_bytes, floor_bytes)
        return max(1, min(T, int(budget // per_step) - 1))
    per_step = 3 * models * batch_size * 4 * cfg.hidden_size * cfg.dtype_bytes
    fit = int(budget_fraction * available_memory_bytes(device) // max(per_step, 1))
    return max(1, min(T, fit))


__all__ = ["auto_time_chunk", "stacked_model_bytes", "forward_flops", "supports_stacked", "auto_models_per_pass", "ModelConfig", "MODEL_TYPES", "SIZE_PRESETS", "preset", "apply_scale", "param_count",
           "estimate_memory_bytes", "format_bytes", "build_model", "check_fits", "available_memory_bytes"]
