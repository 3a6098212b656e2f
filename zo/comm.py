"""The collective interface the ZO step talks to, and its single-process implementation.

A distributed implementation with the same methods lives in zo/dist.py (the only module that
imports torch.distributed). Everything that crosses ranks is a handful of scalars per probe.
"""
from __future__ import annotations

import torch


class ReplicaMismatchError(RuntimeError):
    """The replicas' parameter checksums differ; raised on every rank alike (all see all checksums)."""

    def __init__(self, step: int, checksums):
        self.step = step
        self.checksums = list(checksums)
        detail = ", ".join(f"rank {r}: {c!r}" for r, c in enumerate(self.checksums))
        super().__init__(f"replicas diverged: parameter checksums differ after step {step} ({detail}). "
                         f"The ranks no longer hold the same weights; resume from the last checkpoint "
                         f"(--load_from_checkpoint) and report this as a bug.")


class LocalComm:
    """World of one process: every collective is the identity."""
    rank = 0
    world_size = 1
    local_rank = 0
    is_main = True
    backend = "none"

    def __init__(self, device="cpu"):
        self.device = torch.device(device)
        self.bytes_communicated = 0  # cumulative bytes this rank sent in collectives

    def shard(self, n: int) -> tuple[int, int]:
        """[lo, hi) of the n probe seeds this rank evaluates."""
        return 0, n

    def all_gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        return local

    def all_reduce_max_scalar(self, x: float) -> float:
        return x

    def check_replicas(self, checksum: float, *, step: int) -> None:
        return None

    def barrier(self) -> None:
        return None

    def broadcast_tensors(self, tensors) -> None:
        return None

    def close(self) -> None:
        return None


def shard_range(n: int, rank: int, world_size: int) -> tuple[int, int]:
    if n % world_size:
        raise ValueError(f"{n} probes do not split evenly over {world_size} ranks")
    m = n // world_size
    return rank * m, (rank + 1) * m
