"""The `fused` LSTM recurrence backend: one cuBLAS batched GEMM and one Triton kernel per step.

Per time step t, for all heads (and all stacked probe models, folded into the head axis):

    pre_NB(4Dp) = xgb[t] + h_NBDp @ Rp_ND(4Dp)        torch.baddbmm: the input gates and bias ride
                                                     in the GEMM's C operand (no separate add)
    c, h        = lstm_cell(pre, c)                  one Triton kernel: gates, c and h in fp32 regs,
                                                     h written in the weight dtype straight into hs[t]

Padded heads: head size D is padded to Dp (a multiple of `pad_to`, 8 by default) so the GEMM runs
on tensor-core-friendly shapes. The padding is zero in the recurrent weight, the input gates, the
bias and the initial state, so every padded unit sees pre-activation 0 on every gate and keeps
c = 0.5*c + 0.5*tanh(0) = 0 and h = 0.5*tanh(0) = 0 exactly: the model is still the paper's model
and the padding never appears among the parameters (nothing to perturb or update).

Triton is imported lazily; `available()` says whether this backend can run here (a CUDA device
with Triton, or the Triton interpreter with TRITON_INTERPRET=1 on CPU tensors for tests).
"""
from __future__ import annotations

import os

import torch

_KERNEL = None


def available() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed (pip install triton)"
    if not (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
        return False, "no CUDA device (the fused backend needs a GPU, or TRITON_INTERPRET=1 for tests)"
    return True, ""


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        from models._lstm_cell_triton import lstm_cell_kernel
        _KERNEL = lstm_cell_kernel
    return _KERNEL


def lstm_cell_(pre_NB4D: torch.Tensor, c_NBD: torch.Tensor, h_out_NBD: torch.Tensor, *, block: int = 1024) -> None:
    """In place: c <- f*c + i*z, h_out <- o*tanh(c), gates read from pre [N, B, 4*Dp] (i, f, z, o blocks)."""
    import triton
    total = c_NBD.numel()
    Dp = c_NBD.shape[-1]
    assert pre_NB4D.is_contiguous() and c_NBD.is_contiguous() and h_out_NBD.is_contiguous()
    assert c_NBD.dtype == torch.float32 and pre_NB4D.numel() == 4 * total
    grid = (triton.cdiv(total, block),)
    _kernel()[grid](pre_NB4D, c_NBD, h_out_NBD, total, Dp, BLOCK=block, num_warps=4)


def padded_size(D: int, pad_to: int) -> int:
    return -(-D // pad_to) * pad_to


def recurrence_fused(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, *, pad_to: int = 8):
    """Same contract as lstm_backends.recurrence_torch; hs comes back in the weight dtype."""
    T, N, B, G, D = xg_TNB4D.shape
    Dp = padded_size(D, pad_to)
    dt = R_4NDD.dtype
    dev = R_4NDD.device
    Rp = torch.zeros(N, Dp, G, Dp, dtype=dt, device=dev)
    Rp[:, :D, :, :D] = R_4NDD.permute(1, 2, 0, 3)
    Rp = Rp.view(N, Dp, G * Dp)
    # Input gates plus bias in the GEMM's C layout [T, N, B, 4*Dp]: one copy and one in-place add in
    # the weight dtype (no fp32 temporaries of the chunk's size).
    bias = b_4ND.permute(1, 0, 2).unsqueeze(1).unsqueeze(0).to(dt)   # [1, N, 1, 4, D]
    if Dp == D:
        xgb = torch.empty(T, N, B, G, D, dtype=dt, device=dev)
        xgb.copy_(xg_TNB4D)
        xgb.add_(bias)
    else:
        xgb = torch.zeros(T, N, B, G, Dp, dtype=dt, device=dev)
        xgb[..., :D].copy_(xg_TNB4D)
        xgb[..., :D].add_(bias)
    xgb = xgb.view(T, N, B, G * Dp)
    c = torch.zeros(N, B, Dp, dtype=torch.float32, device=dev)
    c[..., :D] = c_NBD
    hs = torch.empty(T, N, B, Dp, dtype=dt, device=dev)
    h = torch.zeros(N, B, Dp, dtype=dt, device=dev)
    h[..., :D] = h_NBD
    for t in range(T):
        pre = torch.baddbmm(xgb[t], h, Rp)
        lstm_cell_(pre, c, hs[t])
        h = hs[t]
    hs_out = hs[..., :D] if Dp != D else hs
    return hs_out, (h[..., :D].float(), c[..., :D].contiguous())
