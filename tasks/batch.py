"""The batch container every task produces."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["Batch"]


@dataclass
class Batch:
    """A teacher-forcing batch.

    ``inputs``  [B, T] token ids fed to the model.
    ``targets`` [B, T] next-token targets; ``IGNORE_INDEX`` where a position is not scored.
    """

    inputs: torch.Tensor
    targets: torch.Tensor

    def __post_init__(self) -> None:
        if self.inputs.shape != self.targets.shape or self.inputs.dim() != 2:
            raise ValueError(
                f"inputs and targets must both be [B, T]; got {tuple(self.inputs.shape)} "
                f"and {tuple(self.targets.shape)}"
            )

    def to(self, device, *, non_blocking: bool = False) -> "Batch":
        return Batch(
            inputs=self.inputs.to(device, non_blocking=non_blocking),
            targets=self.targets.to(device, non_blocking=non_blocking),
        )

    @property
    def batch_size(self) -> int:
        return self.inputs.shape[0]

    @property
    def seq_len(self) -> int:
        return self.inputs.shape[1]
