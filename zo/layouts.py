"""Layouts the ZO engine can write a parameter's perturbed copies in, for a model that declares one.

By default `ZOEngine.evaluate_stacked` hands the stacked loss a dict name -> [M, *shape] of M perturbed
copies of every parameter. A model whose forward re-lays a parameter out on every pass (the LSTM's
fused step kernels read the recurrent weight in gate tiles) can declare that layout instead; the
engine then writes the perturbed values straight into it, with the same bits, and the [M, *shape]
copy is neither written nor read back. The engine stays model-agnostic: a layout here is a plain
description of where each element goes, and the writing kernel lives in zo/kernels.py.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class GateTiles:
    """A [4, N, D, D] weight (gate, head, input unit, output unit) as [M, N, Dk, Dk // BD, 4, BD]: for
    each model and head, rows of Dk input units (D real, the rest zero), each the Dk // BD tiles of BD
    output units with the four gates' columns side by side, zero past D. This is the layout of
    `models.lstm_fused.tile_recurrent_weight` ([M*N, Dk, 4*Dk] viewed with its tile axes)."""

    N: int
    D: int
    Dk: int
    BD: int

    def __post_init__(self):
        if self.Dk < self.D or self.BD < 1 or self.Dk % self.BD:
            raise ValueError(f"GateTiles needs Dk >= D and BD dividing Dk (got D {self.D}, Dk {self.Dk}, "
                             f"BD {self.BD})")

    def fits(self, shape) -> bool:
        """Whether a parameter of this shape is the [4, N, D, D] weight the layout describes."""
        return tuple(shape) == (4, self.N, self.D, self.D)

    def shape(self, M: int) -> tuple[int, ...]:
        return (M, self.N, self.Dk, self.Dk // self.BD, 4, self.BD)
