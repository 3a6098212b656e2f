"""Recurrence backends of the head-structured LSTM: one entry point, named backends.

    hs_TNBD, (h_NBD, c_NBD) = recurrence(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, backend="torch")

Legend: T time, N heads, B batch, D head size, 4 gates in the order i, f, z, o.
`xg` holds the input projection of every step, without the bias. Gates of one head see only that
head's hidden units: pre[g, n] = x[g, n] + h[n] @ R[g, n] + b[g, n].

Backends:
- `torch`: the pure-torch reference; runs on CPU and GPU; every other backend is tested against it.
- `fused`: for the model's chunk forward, one Triton kernel per step computing the recurrent GEMM
  with the LSTM cell as its epilogue and the input projection looked up per token; for a bare
  recurrence (as here, with precomputed input gates, e.g. the DNC's controller), cuBLAS baddbmm + one
  Triton cell kernel per step. Heads are zero-padded (models/lstm_fused.py).
- `fused_bmm`: the cuBLAS baddbmm + Triton cell path for the chunk forward too (kept for comparison).
- `auto`: `fused` when it is available and passes a one-time numeric check against `torch` on this
  device, else `torch`; the choice is printed once. It never picks a FlashRNN backend.
- `flashrnn_vanilla`, `flashrnn_cuda`, `flashrnn_cuda_fused`, `flashrnn_triton_fused`: FlashRNN's backends
  (models/lstm_flashrnn.py; flashrnn is imported on first use, from requirements-gpu.txt).
A backend that is asked for by name and is not available raises a clear error; no silent fallback.
"""
from __future__ import annotations

import torch

import sys

from models.lstm_flashrnn import FLASHRNN_BACKENDS, recurrence_flashrnn

BACKENDS = ("torch", "fused", "fused_bmm", "auto") + FLASHRNN_BACKENDS
_AUTO_CHOICE: dict = {}


def lstm_pointwise(pre_NB4D: torch.Tensor, c_NBD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM cell update from gate pre-activations (at least fp32 math; states kept in it)."""
    pre = pre_NB4D.to(state_dtype(pre_NB4D.dtype))
    i, f, z, o = pre.unbind(-2)
    c = torch.sigmoid(f) * c_NBD + torch.sigmoid(i) * torch.tanh(z)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and gate math run in fp32 (fp64 when the weights are fp64)."""
    return torch.promote_types(dtype, torch.float32)


def fuse_recurrent_weight(R_4NDD: torch.Tensor) -> torch.Tensor:
    """R [4, N, D, D] -> [N, D, 4D] so one batched matmul per step gives all four gates."""
    G, N, D, _ = R_4NDD.shape
    return R_4NDD.permute(1, 2, 0, 3).reshape(N, D, G * D)


def recurrence_torch(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD):
    T, N, B, G, D = xg_TNB4D.shape
    Rf = fuse_recurrent_weight(R_4NDD)                      # [N, D, 4D]
    sdt = state_dtype(R_4NDD.dtype)
    bias = b_4ND.permute(1, 0, 2).unsqueeze(1).to(sdt)      # [N, 1, 4, D]
    hs = torch.empty(T, N, B, D, dtype=sdt, device=xg_TNB4D.device)
    for t in range(T):
        rec = torch.bmm(h_NBD.to(Rf.dtype), Rf).view(N, B, G, D)
        h_NBD, c_NBD = lstm_pointwise(xg_TNB4D[t].to(sdt) + rec.to(sdt) + bias, c_NBD.to(sdt))
        hs[t] = h_NBD
    return hs, (h_NBD, c_NBD)


def _check_fused(device: torch.device, dtype: torch.dtype) -> tuple[bool, str]:
    """One-time numeric check of the fused backend against the reference on this device."""
    from models import lstm_fused
    ok, why = lstm_fused.available()
    if not ok:
        return False, why
    g = torch.Generator().manual_seed(1234)
    T, N, B, D = 5, 3, 7, 20
    xg = (torch.randn(T, N, B, 4, D, generator=g) * 0.5).to(device=device, dtype=dtype)
    R = (torch.randn(4, N, D, D, generator=g) / D ** 0.5).to(device=device, dtype=dtype)
    b = (torch.randn(4, N, D, generator=g) * 0.1).to(device=device, dtype=dtype)
    h = torch.randn(N, B, D, generator=g).to(device) * 0.1
    c = torch.randn(N, B, D, generator=g).to(device) * 0.1
    try:
        ref, (hr, cr) = recurrence_torch(xg, R, b, h, c)
        out, (ho, co) = lstm_fused.recurrence_fused(xg, R, b, h, c)
        err_chunk = _check_fused_chunk(device, dtype)
    except Exception as e:  # a broken toolchain must not take the run down: report and use torch
        return False, f"fused backend failed its check: {type(e).__name__}: {e}"
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    err = max(float((ref.float() - out.float()).abs().max()), float((cr - co).abs().max()), err_chunk)
    return (err < tol), f"max abs error {err:.2e} vs reference (tolerance {tol:g})"


def _check_fused_chunk(device: torch.device, dtype: torch.dtype) -> float:
    """Max abs logit difference of the fused chunk forward (GEMM + cell kernel) against the torch
    path, two stacked models, two chunks, a batch that is not a multiple of the kernel's tile."""
    from models.config import ModelConfig
    from models.lstm import LSTMModel
    from models import lstm_fused
    g = torch.Generator().manual_seed(4321)
    cfg = ModelConfig(vocab_size=13, input_size=10, hidden_size=60, num_heads=3, dtype=str(dtype).replace("torch.", ""),
                      backend="torch")
    m = LSTMModel(cfg, generator=g, device=device)
    P = {n: torch.stack([p, p * 0.9]) for n, p in m.named_parameters()}
    tok = torch.randint(0, 13, (37, 6), generator=g).to(device)
    with torch.inference_mode():
        ref, st = m.forward_chunk_stacked(P, tok[:, :3], m.init_state_stacked(P, 37))
        ref2, _ = m.forward_chunk_stacked(P, tok[:, 3:], st)
        Pf = lstm_fused.prepare_fused(P, num_heads=3)
        out, st = lstm_fused.forward_chunk_stacked_fused(Pf, tok[:, :3], m.init_state_stacked(P, 37), num_heads=3)
        out2, _ = lstm_fused.forward_chunk_stacked_fused(Pf, tok[:, 3:], st, num_heads=3)
    return max(float((ref.float() - out.float()).abs().max()), float((ref2.float() - out2.float()).abs().max()))


def resolve_backend(backend: str, device, dtype: torch.dtype) -> str:
    """The concrete backend for a request; `auto` is decided once per (device, dtype) and printed."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown LSTM backend {backend!r}; available: {BACKENDS}")
    if backend != "auto":
        return backend
    device = torch.device(device)
    key = (device.type, dtype)
    if key not in _AUTO_CHOICE:
        if device.type != "cuda":
            _AUTO_CHOICE[key] = "torch"
        else:
            ok, why = _check_fused(device, dtype)
            _AUTO_CHOICE[key] = "fused" if ok else "torch"
            print(f"[lstm backend] auto -> {_AUTO_CHOICE[key]} on {device.type}/{str(dtype).replace('torch.', '')}"
                  f" ({'passed' if ok else 'NOT used'}: {why})", file=sys.stderr, flush=True)
    return _AUTO_CHOICE[key]


def recurrence(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, *, backend: str = "torch"):
    backend = resolve_backend(backend, R_4NDD.device, R_4NDD.dtype)
    if backend == "torch":
        return recurrence_torch(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD)
    if backend in FLASHRNN_BACKENDS:
        return recurrence_flashrnn(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, backend=backend)
    from models import lstm_fused
    ok, why = lstm_fused.available()
    if not ok:
        raise ValueError(f"LSTM backend {backend!r} is not available here: {why}. Use --lstm_backend torch.")
    return lstm_fused.recurrence_fused(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD)
