"""The masked cross entropy of K stacked models' logits in one kernel.

The unfused loss (tasks.loss.masked_ce_sum_stacked) casts the logits to fp32, reorders them to
[K, B, T, V] and runs log-softmax and a gather over them: for the paper's small models these passes
take longer than the output GEMM that produced the logits. `ce_sum_stacked` reads the logits once,
in the layout the fused LSTM forward writes them ([K, T*B, V], rows (t, b)), and returns only the
per-model sums; row tiles without a scored target (the paper's 2 input tokens) are not read.
"""
from __future__ import annotations

import torch

from models.lstm_fused import available, interpreted

_KERNEL = None


def fits(device) -> bool:
    """Whether the kernel runs here (a CUDA device with triton, or the interpreter for tests)."""
    return available()[0] and (torch.device(device).type == "cuda" or interpreted())


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        from models._logits_ce_triton import ce_rows_kernel
        _KERNEL = ce_rows_kernel
    return _KERNEL


def ce_sum_stacked(logits_KRV: torch.Tensor, targets_BT: torch.Tensor, *, ignore_index: int, BM: int = 32,
                   VB: int = 0) -> torch.Tensor:
    """Cross-entropy sums [K] (fp64) of logits [K, R, V] (rows r = t*B + b, last dim contiguous, any
    row stride: a view of wider padded logits is fine) against targets [B, T], unscored where the
    target is `ignore_index`; equal to `tasks.loss.masked_ce_sum_stacked` of the same logits up to
    summation order: the row sums of `ce_tile_sums_stacked`, in fp64."""
    return ce_tile_sums_stacked(logits_KRV, targets_BT, ignore_index=ignore_index, BM=BM, VB=VB).double().sum(dim=1)


def ce_tile_sums_stacked(logits_KRV: torch.Tensor, targets_BT: torch.Tensor, *, ignore_index: int, BM: int = 32,
                         VB: int = 0) -> torch.Tensor:
    """The cross-entropy sums of `ce_sum_stacked` per tile of BM rows, unsummed: fp32 [K, cdiv(R, BM)]
    (0 for a tile with no scored target). A caller scoring several chunks sums all their tiles in
    one reduction instead of one per chunk."""
    import triton
    K, R, V = logits_KRV.shape
    B, T = targets_BT.shape
    if R != B * T:
        raise ValueError(f"ce_sum_stacked: logits {tuple(logits_KRV.shape)} do not have T*B = {T * B} rows "
                         f"for targets {tuple(targets_BT.shape)}")
    if logits_KRV.stride(2) != 1:
        raise ValueError("ce_sum_stacked needs the logits' last dimension contiguous")
    tgt = targets_BT if targets_BT.dtype == torch.int64 else targets_BT.long()
    VB = VB or min(256, max(16, triton.next_power_of_2(V)))
    grid = (triton.cdiv(R, BM), K)
    out = torch.empty(K, grid[0], dtype=torch.float32, device=logits_KRV.device)
    _kernel()[grid](logits_KRV, tgt, out, R, B, V, logits_KRV.stride(0), logits_KRV.stride(1), tgt.stride(0),
                    tgt.stride(1), ignore_index, BM=BM, VB=VB, V_LOOP=V if interpreted() else -1, num_warps=4)
    return out
