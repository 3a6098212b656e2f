"""The single masked loss and accuracy used by every trainer.

Targets equal to ``IGNORE_INDEX`` are not scored. All functions take logits of
shape ``[B, T, V]`` (any float dtype) and targets of shape ``[B, T]``; they
compute in fp32 (sums accumulate in fp64 internally), never synchronise with
the host, and work both under ``torch.inference_mode()`` and with autograd.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100

__all__ = [
    "IGNORE_INDEX",
    "masked_ce_sum",
    "masked_cross_entropy",
    "masked_accuracy",
    "LossAccumulator",
]


def _check_shapes(logits: torch.Tensor, targets: torch.Tensor) -> None:
    if logits.dim() != 3:
        raise ValueError(f"logits must have shape [B, T, V], got {tuple(logits.shape)}")
    if targets.shape != logits.shape[:2]:
        raise ValueError(
            f"targets must have shape [B, T] = {tuple(logits.shape[:2])} matching the logits, "
            f"got {tuple(targets.shape)}"
        )


def _ce_sum64(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position fp32 cross entropy, summed in fp64, plus the scored count."""
    _check_shapes(logits, targets)
    V = logits.shape[-1]
    nll = F.cross_entropy(
        logits.float().reshape(-1, V),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    count = (targets != IGNORE_INDEX).sum()
    return nll.double().sum(), count


def masked_ce_sum(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy summed over scored positions.

    Returns ``(loss_sum, count)``: an fp32 scalar and an int64 scalar tensor.
    """
    loss_sum, count = _ce_sum64(logits, targets)
    return loss_sum.float(), count


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy over scored positions (fp32 scalar; 0 when nothing is scored)."""
    loss_sum, count = _ce_sum64(logits, targets)
    return (loss_sum / count.clamp(min=1)).float()


def _correct_stats(
    logits: torch.Tensor, targets: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (correct count, scored count, per-seq all-correct [B], per-seq has-scored [B])."""
    _check_shapes(logits, targets)
    scored = targets != IGNORE_INDEX
    hit = (logits.detach().argmax(dim=-1) == targets) & scored
    seq_ok = (hit | ~scored).all(dim=1)
    seq_has = scored.any(dim=1)
    return hit.sum(), scored.sum(), seq_ok, seq_has


def _seq_fraction(seq_ok: torch.Tensor, seq_has: torch.Tensor) -> torch.Tensor:
    good = (seq_ok & seq_has).sum()
    return (good.double() / seq_has.sum().clamp(min=1)).float()


def masked_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Argmax accuracy over scored positions.

    Returns ``(token_acc, seq_acc)`` as fp32 scalars. ``seq_acc`` is the fraction of
    sequences with at least one scored position whose scored positions are all correct.
    """
    correct, count, seq_ok, seq_has = _correct_stats(logits, targets)
    token_acc = (correct.double() / count.clamp(min=1)).float()
    return token_acc, _seq_fraction(seq_ok, seq_has)


class LossAccumulator:
    """Accumulates loss and accuracy over chunks of the time axis.

    Feeding ``logits[:, a:b]`` / ``targets[:, a:b]`` for consecutive chunks gives the
    same results as one call of :func:`masked_cross_entropy` /
    :func:`masked_accuracy` on the whole sequence. All chunks must share the batch
    size. State lives on the device of the first chunk; nothing syncs with the host.
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._loss_sum: torch.Tensor | None = None  # fp64
        self._count: torch.Tensor | None = None
        self._correct: torch.Tensor | None = None
        self._seq_ok: torch.Tensor | None = None  # bool [B]: every scored position so far is correct
        self._seq_has: torch.Tensor | None = None  # bool [B]: at least one scored position so far

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        loss_sum, count = _ce_sum64(logits, targets)
        correct, _, seq_ok, seq_has = _correct_stats(logits, targets)
        if self._loss_sum is None:
            self._loss_sum, self._count, self._correct = loss_sum, count, correct
            self._seq_ok, self._seq_has = seq_ok, seq_has
            return
        if seq_ok.shape != self._seq_ok.shape:
            raise ValueError(
                f"all chunks must have the same batch size: got {seq_ok.shape[0]} after {self._seq_ok.shape[0]}"
            )
        self._loss_sum = self._loss_sum + loss_sum
        self._count = self._count + count
        self._correct = self._correct + correct
        self._seq_ok = self._seq_ok & seq_ok
        self._seq_has = self._seq_has | seq_has

    def _require(self) -> None:
        if self._loss_sum is None:
            raise ValueError("LossAccumulator is empty: call update(logits, targets) first")

    @property
    def loss_sum(self) -> torch.Tensor:
        """fp32 scalar: summed cross entropy over scored positions so far."""
        self._require()
        return self._loss_sum.float()

    @property
    def count(self) -> torch.Tensor:
        """int64 scalar: number of scored positions so far."""
        self._require()
        return self._count

    def loss(self) -> torch.Tensor:
        self._require()
        return (self._loss_sum / self._count.clamp(min=1)).float()

    def token_accuracy(self) -> torch.Tensor:
        self._require()
        return (self._correct.double() / self._count.clamp(min=1)).float()

    def seq_accuracy(self) -> torch.Tensor:
        self._require()
        return _seq_fraction(self._seq_ok, self._seq_has)


def masked_ce_sum_stacked(logits_KBTV: torch.Tensor, targets_BT: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-model cross-entropy sums for K models evaluated on the same batch.

    Returns ``(loss_sum [K] fp64, count)``; model k's sum equals ``masked_ce_sum`` of
    ``logits_KBTV[k]`` up to summation order. Used when several probes run in one forward."""
    if logits_KBTV.dim() != 4:
        raise ValueError(f"stacked logits must have shape [K, B, T, V], got {tuple(logits_KBTV.shape)}")
    K, B, T, V = logits_KBTV.shape
    if targets_BT.shape != (B, T):
        raise ValueError(f"targets must have shape {(B, T)}, got {tuple(targets_BT.shape)}")
    nll = F.cross_entropy(logits_KBTV.float().reshape(K * B * T, V), targets_BT.reshape(1, B * T).expand(K, B * T).reshape(-1),
                          ignore_index=IGNORE_INDEX, reduction="none")
    return nll.view(K, B * T).double().sum(dim=1), (targets_BT != IGNORE_INDEX).sum()
