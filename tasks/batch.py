"""The batch container every task produces."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tasks.loss import IGNORE_INDEX

__all__ = ["Batch", "first_scored"]


@dataclass
class Batch:
    """A teacher-forcing batch.

    ``inputs``  [B, T] token ids fed to the model.
    ``targets`` [B, T] next-token targets; ``IGNORE_INDEX`` where a position is not scored.
    ``scored_from`` a promise, known on the host, that no target before this time step is scored
    (0: no promise). Losses computed in time chunks skip the output projection of chunks that lie
    wholly before it and only advance the state. Checked against the targets when they are on the
    CPU (where it costs no device sync); `first_scored` computes it from CPU targets.
    """

    inputs: torch.Tensor
    targets: torch.Tensor
    scored_from: int = 0

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape or self.inputs.dim() != 2:
            raise ValueError(
                f"inputs and targets must both be [B, T]; got {tuple(self.inputs.shape)} "
                f"and {tuple(self.targets.shape)}"
            )
        T = self.inputs.shape[1]
        if not isinstance(self.scored_from, int) or not 0 <= self.scored_from <= T:
            raise ValueError(f"scored_from must be an int in [0, {T}] (the sequence length); got {self.scored_from!r}")
        if self.scored_from and self.targets.device.type == "cpu" and first_scored(self.targets) < self.scored_from:
            raise ValueError(f"scored_from={self.scored_from} but a target at time step {first_scored(self.targets)} "
                             f"is scored; pass scored_from=first_scored(targets) or 0")

    def to(self, device, *, non_blocking: bool = False) -> "Batch":
        return Batch(
            inputs=self.inputs.to(device, non_blocking=non_blocking),
            targets=self.targets.to(device, non_blocking=non_blocking),
            scored_from=self.scored_from,
        )

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]


def first_scored(targets: torch.Tensor) -> int:
    """The first time step of [B, T] targets at which any row is scored (T if none is). Reads the
    targets on the host: call it on CPU targets (on a device it would wait for the device)."""
    scored = (targets != IGNORE_INDEX).any(dim=0).nonzero()
    return int(scored[0]) if scored.numel() else targets.shape[1]
