"""Common task interface and helpers shared by the concrete tasks."""

from __future__ import annotations

import torch

from .batch import Batch
from .loss import IGNORE_INDEX

__all__ = ["Task", "sample_predictions", "check_int"]

VAL_EXTRA = 50  # validation lengths are [seq_length + 1, seq_length + VAL_EXTRA]


def check_int(name: str, value, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an int, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_generator(generator) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            "generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)); "
            f"got {type(generator).__name__}"
        )
    return generator


class Task:
    """Base class of all tasks.

    Subclasses set ``name`` and ``tokenizer`` and implement :meth:`batch`.
    Every random draw comes from the ``generator`` argument; tensors are created
    on ``generator.device``.

    Length splits:
      * :meth:`train_batch`: lengths in ``[2, seq_length]`` (``[2, min(max_len, seq_length)]``
        when a curriculum passes ``max_len``).
      * :meth:`val_batch`: lengths in ``[seq_length + 1, seq_length + 50]``
        (length generalisation).
    """

    name: str = "task"
    tokenizer = None
    min_train_len: int = 2

    def __init__(self, *, seq_length: int) -> None:
        self.seq_length = check_int("seq_length", seq_length, minimum=2)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size

    @property
    def train_length_range(self) -> tuple[int, int]:
        return (self.min_train_len, self.seq_length)

    @property
    def val_length_range(self) -> tuple[int, int]:
        return (self.seq_length + 1, self.seq_length + VAL_EXTRA)

    def batch(self, *, batch_size: int, min_len: int, max_len: int, generator: torch.Generator) -> Batch:
        raise NotImplementedError

    def _check_batch_args(self, batch_size, min_len, max_len, generator) -> None:
        check_int("batch_size", batch_size, minimum=1)
        check_int("min_len", min_len, minimum=1)
        check_int("max_len", max_len, minimum=1)
        if min_len > max_len:
            raise ValueError(f"min_len ({min_len}) must be <= max_len ({max_len})")
        check_generator(generator)

    def train_batch(self, *, batch_size: int, generator: torch.Generator, max_len: int | None = None) -> Batch:
        lo, hi = self.train_length_range
        if max_len is not None:
            check_int("max_len", max_len, minimum=lo)
            hi = min(max_len, hi)
        return self.batch(batch_size=batch_size, min_len=lo, max_len=hi, generator=generator)

    def val_batch(self, *, batch_size: int, generator: torch.Generator) -> Batch:
        lo, hi = self.val_length_range
        return self.batch(batch_size=batch_size, min_len=lo, max_len=hi, generator=generator)

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seq_length={self.seq_length}, vocab_size={self.vocab_size})"


def sample_predictions(task: Task, batch: Batch, logits: torch.Tensor, *, n: int = 3) -> list[str]:
    """Human-readable ``"in: ... | target: ... | pred: ..."`` lines for the first ``n`` sequences.

    ``in`` shows the inputs before the first scored position (the prompt), or the whole
    input when the first position is already scored; ``target`` and ``pred`` show the scored targets and the argmax
    prediction at those positions.
    """
    check_int("n", n, minimum=0)
    if logits.dim() != 3 or logits.shape[:2] != batch.targets.shape:
        raise ValueError(
            f"logits must be [B, T, V] with [B, T] = {tuple(batch.targets.shape)}, got {tuple(logits.shape)}"
        )
    k = min(n, batch.batch_size)
    inputs = batch.inputs[:k].cpu()
    targets = batch.targets[:k].cpu()
    # Models may pad their vocabulary; only ids the tokenizer knows can be predicted.
    preds = logits[:k, :, : task.vocab_size].detach().argmax(dim=-1).cpu()
    lines = []
    for i in range(k):
        scored = targets[i] != IGNORE_INDEX
        first = int(scored.nonzero()[0, 0]) if bool(scored.any()) else 0
        prompt = inputs[i, :first] if first > 0 else inputs[i]
        lines.append(
            f"in: {task.decode(prompt)} | target: {task.decode(targets[i][scored])} "
            f"| pred: {task.decode(preds[i][scored])}"
        )
    return lines
