"""The output projection and the masked cross entropy of K stacked models in one kernel.

After a chunk of the recurrence, the unfused path runs one batched GEMM for the logits [K, T*B, V]
(bf16, written to memory), then casts them to fp32, reorders them and scores them: for the paper's
small models (V = 100) these passes over the logits take as long as the GEMM, and together 25-45%
of a forward. `ce_sum_stacked` reads the hidden states once and returns only the per-model loss
sums; the logits exist only in registers. It serves vocabularies up to `MAX_VOCAB` (a row's logits
must fit one tile); larger ones take the unfused path (`fits`).
"""
from __future__ import annotations

import os

import torch

MAX_VOCAB = 256
_KERNEL = None


def fits(V: int, device) -> bool:
    """Whether the fused kernel serves this vocabulary on this device (else: logits + masked_ce_sum_stacked)."""
    from models import lstm_fused
    return V <= MAX_VOCAB and lstm_fused.available()[0] and (torch.device(device).type == "cuda" or _interpreted())


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        from models._logits_ce_triton import logits_ce_kernel
        _KERNEL = logits_ce_kernel
    return _KERNEL


def ce_sum_stacked(h_KRH: torch.Tensor, W_KHV: torch.Tensor, b_KV: torch.Tensor, targets_BT: torch.Tensor, *,
                   ignore_index: int, BM: int = 0, BH: int = 64) -> torch.Tensor:
    """Cross-entropy sums [K] (fp64) of logits = h @ W + b against targets, unscored where the target
    is `ignore_index`; equal to `tasks.loss.masked_ce_sum_stacked` of those logits (computed in W's
    dtype) up to summation order.

    h: [K, R, H] with R = T*B rows ordered (t, b) (the layout the fused forward keeps its hidden
    states in); W: [K, H, V]; b: [K, V]; targets: [B, T]. Per tile of rows the sum is fp32 (the rows
    of one tile), the tiles are summed in fp64 in a fixed order: the result is deterministic."""
    import triton
    K, R, H = h_KRH.shape
    V = W_KHV.shape[-1]
    B, T = targets_BT.shape
    if R != B * T or W_KHV.shape != (K, H, V) or b_KV.shape != (K, V):
        raise ValueError(f"ce_sum_stacked: h {tuple(h_KRH.shape)}, W {tuple(W_KHV.shape)}, b {tuple(b_KV.shape)} "
                         f"and targets {tuple(targets_BT.shape)} do not fit [K, T*B, H], [K, H, V], [K, V], [B, T]")
    if V > MAX_VOCAB:
        raise ValueError(f"ce_sum_stacked serves vocabularies up to {MAX_VOCAB}, got {V}: use the unfused loss")
    if h_KRH.stride(2) != 1 or h_KRH.stride(1) != H or W_KHV.stride(2) != 1 or W_KHV.stride(1) != V:
        raise ValueError("ce_sum_stacked needs h rows and W rows contiguous")
    tgt = targets_BT if targets_BT.dtype == torch.int64 else targets_BT.long()
    if BM <= 0:      # enough programs to fill the GPU when K is small (xlarge: K = 1)
        BM = 128 if K * triton.cdiv(R, 128) >= 256 else 64
    VP = max(16, triton.next_power_of_2(V))
    grid = (triton.cdiv(R, BM), K)
    out = torch.empty(K, grid[0], dtype=torch.float32, device=h_KRH.device)
    ieee = h_KRH.dtype == torch.float32
    _kernel()[grid](h_KRH, W_KHV, b_KV, tgt, out, R, B, H, V, h_KRH.stride(0), W_KHV.stride(0), b_KV.stride(0),
                    tgt.stride(0), tgt.stride(1), ignore_index, BM=BM, BH=BH, VP=VP, IEEE=ieee, H_LOOP=H if _interpreted() else -1,
                    num_warps=8 if VP * BM >= 128 * 128 else 4)
    return out.double().sum(dim=1)
