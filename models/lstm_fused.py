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


def _cell_out(pre, bias, c, h_view, hs_t, *, B: int, N: int, hs_k_stride: int, block: int = 1024) -> None:
    import triton
    from models._lstm_cell_triton import lstm_cell_out_kernel
    total = c.numel()
    Dp = c.shape[-1]
    assert pre.is_contiguous() and c.is_contiguous() and bias.is_contiguous() and c.dtype == torch.float32
    assert h_view.stride(-1) == 1
    h_stride = h_view.stride(1)
    assert h_view.stride(0) == B * h_stride, "h rows must be evenly strided"
    grid = (triton.cdiv(total, block),)
    lstm_cell_out_kernel[grid](pre, bias, c, h_view, hs_t, total, Dp, B, N, h_stride, hs_k_stride,
                               BLOCK=block, num_warps=4)


def forward_chunk_stacked_fused(P: dict, tokens_BT: torch.Tensor, state, *, num_heads: int, pad_to: int = 8):
    """Logits [K, B, Tc, V] of K stacked LSTMs (parameters on a leading axis of each tensor of P).

    Per step and head, one GEMM computes the input and recurrent gates together:
        pre[kn] = [x_t | h[kn]] @ [W_in[kn] ; R[kn]]        A = [K*N, B, Ip+Dp], Wcat = [K*N, Ip+Dp, 4*Dp]
    (I padded to a multiple of 8 and D to a multiple of pad_to, all padding zero)
    so the [B, T, 4H] input projection is never materialised (memory is flat in T and in the
    number of stacked models' gates). The bias is added inside the cell kernel, which writes h
    straight into the next step's A and into hs for the output projection.

    state: (h, c) as [K*N, B, D] (any float dtype; padded [K*N, B, Dp] also accepted);
    returns (logits, (h [K*N, B, Dp] weight dtype, c [K*N, B, Dp] fp32))."""
    W_in, R, b, W_out, b_out = P["W_in"], P["R"], P["b"], P["W_out"], P["b_out"]
    K, I, G4H = W_in.shape
    N = num_heads
    D = R.shape[-1]
    Dp = padded_size(D, pad_to)
    Ip = padded_size(I, 8)              # keeps the GEMM rows 16-byte aligned (sm90 kernels need it)
    V = W_out.shape[-1]
    B, T = tokens_BT.shape
    dt, dev = W_in.dtype, W_in.device
    KN = K * N
    # Per-forward weight layouts (zero padding)
    Wcat = torch.zeros(K, N, Ip + Dp, 4, Dp, dtype=dt, device=dev)
    Wcat[:, :, :I, :, :D] = W_in.view(K, I, 4, N, D).permute(0, 3, 1, 2, 4)
    Wcat[:, :, Ip:Ip + D, :, :D] = R.permute(0, 2, 3, 1, 4)                # [K, N, Din, 4, Dout]
    Wcat = Wcat.view(KN, Ip + Dp, 4 * Dp)
    bias = torch.zeros(K, N, 4, Dp, dtype=torch.float32, device=dev)
    bias[..., :D] = b.permute(0, 2, 1, 3)
    bias = bias.view(KN, 4 * Dp)
    Wout = torch.zeros(K, N, Dp, V, dtype=dt, device=dev)
    Wout[:, :, :D] = W_out.view(K, N, D, V)
    Wout = Wout.view(K, N * Dp, V)
    # State
    h0, c0 = state
    A = torch.empty(KN, B, Ip + Dp, dtype=dt, device=dev)
    A[..., I:] = 0
    A[..., Ip:Ip + h0.shape[-1]] = h0
    c = torch.zeros(KN, B, Dp, dtype=torch.float32, device=dev)
    c[..., :c0.shape[-1]] = c0
    x = P["embedding"][:, tokens_BT]                                        # [K, B, T, I]
    hs = torch.empty(K, T, B, N * Dp, dtype=dt, device=dev)
    A4 = A.view(K, N, B, Ip + Dp)
    h_view = A[..., Ip:]
    for t in range(T):
        A4[..., :I] = x[:, :, t].unsqueeze(1)                               # x_t to every head of its model
        pre = torch.bmm(A, Wcat)                                            # [KN, B, 4Dp]
        _cell_out(pre, bias, c, h_view, hs[:, t], B=B, N=N, hs_k_stride=T * B * N * Dp)
    logits = torch.baddbmm(b_out.unsqueeze(1), hs.view(K, T * B, N * Dp), Wout)   # [K, T*B, V]
    logits = logits.view(K, T, B, V).transpose(1, 2)
    return logits, (h_view.contiguous(), c)
