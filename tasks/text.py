"""Character-level language modelling on a local text (file or string).

Layout: a window of ``L + 1`` consecutive tokens ``w_0 .. w_L`` is cut at a random
offset; ``inputs = w_0 .. w_{L-1}`` and ``targets = w_1 .. w_L``. Every target is
scored (no BOS/EOS: a window is a slice of running text). When :meth:`CharLMTask.batch`
draws per-sample lengths, positions ``t >= L`` of a shorter sample are PAD in the
inputs and ``IGNORE_INDEX`` in the targets.

The text is tokenised once; the last ``val_fraction`` of the tokens is the
validation split, the rest is the training split.
"""

from __future__ import annotations

import os

import torch

from .base import Task, check_int
from .batch import Batch
from .loss import IGNORE_INDEX
from .tokenizers import PAD_ID, CharTokenizer

__all__ = ["CharLMTask"]

SPLITS = ("train", "val")


class CharLMTask(Task):
    """Random-window language modelling over one text.

    Exactly one of ``path`` (a UTF-8 text file) or ``text`` must be given.
    ``train_batch``/``val_batch`` return windows of exactly ``seq_length`` positions
    (``min(max_len, seq_length)`` when a curriculum passes ``max_len``).
    """

    name = "lm_char"

    def __init__(
        self,
        *,
        path: str | os.PathLike | None = None,
        text: str | None = None,
        seq_length: int = 128,
        tokenizer=None,
        val_fraction: float = 0.1,
    ) -> None:
        super().__init__(seq_length=seq_length)
        if (path is None) == (text is None):
            raise ValueError("CharLMTask needs exactly one of path= (a text file) or text= (a string)")
        if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be a float in (0, 1), got {val_fraction!r}")
        if path is not None:
            if not os.path.isfile(path):
                raise ValueError(f"text file not found: {os.fspath(path)!r}")
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        elif not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        self.path = None if path is None else os.fspath(path)
        self.tokenizer = CharTokenizer() if tokenizer is None else tokenizer
        self.val_fraction = float(val_fraction)

        if hasattr(self.tokenizer, "encode_tensor"):
            tokens = self.tokenizer.encode_tensor(text)
        else:
            tokens = torch.tensor(self.tokenizer.encode(text), dtype=torch.long)
        n = tokens.numel()
        n_val = int(n * self.val_fraction)
        window = seq_length + 1
        if n - n_val < window or n_val < window:
            raise ValueError(
                f"text too short: {n} tokens give a train split of {n - n_val} and a val split of {n_val} "
                f"tokens, but each split needs at least seq_length + 1 = {window}; use a longer text, "
                "a smaller seq_length or a different val_fraction"
            )
        self._splits = {"train": tokens[: n - n_val], "val": tokens[n - n_val :]}
        self._on_device: dict[tuple[str, str], torch.Tensor] = {}

    def split_tokens(self, split: str) -> torch.Tensor:
        """The 1-D token tensor of ``split`` ("train" or "val")."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        return self._splits[split]

    def _tokens_on(self, split: str, device: torch.device) -> torch.Tensor:
        tokens = self.split_tokens(split)
        if tokens.device == device:
            return tokens
        key = (split, str(device))
        if key not in self._on_device:
            self._on_device[key] = tokens.to(device)
        return self._on_device[key]

    @property
    def train_length_range(self) -> tuple[int, int]:
        return (self.seq_length, self.seq_length)

    @property
    def val_length_range(self) -> tuple[int, int]:
        return (self.seq_length, self.seq_length)

    def batch(
        self,
        *,
        batch_size: int,
        min_len: int,
        max_len: int,
        generator: torch.Generator,
        split: str = "train",
    ) -> Batch:
        self._check_batch_args(batch_size, min_len, max_len, generator)
        device = generator.device
        tokens = self._tokens_on(split, device)
        window = max_len + 1
        if tokens.numel() < window:
            raise ValueError(
                f"max_len={max_len} needs windows of {window} tokens but the {split} split has only "
                f"{tokens.numel()}"
            )
        lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=generator, device=device)
        starts = torch.randint(0, tokens.numel() - window + 1, (batch_size,), generator=generator, device=device)
        T = int(lengths.max())
        t = torch.arange(T + 1, device=device).unsqueeze(0)
        w = tokens[starts.unsqueeze(1) + t]
        valid = t[:, :-1] < lengths.unsqueeze(1)
        inputs = torch.where(valid, w[:, :-1], PAD_ID)
        targets = torch.where(valid, w[:, 1:], IGNORE_INDEX)
        return Batch(inputs=inputs, targets=targets)

    def train_batch(self, *, batch_size: int, generator: torch.Generator, max_len: int | None = None) -> Batch:
        L = self.seq_length
        if max_len is not None:
            L = min(check_int("max_len", max_len, minimum=1), L)
        return self.batch(batch_size=batch_size, min_len=L, max_len=L, generator=generator, split="train")

    def val_batch(self, *, batch_size: int, generator: torch.Generator) -> Batch:
        L = self.seq_length
        return self.batch(batch_size=batch_size, min_len=L, max_len=L, generator=generator, split="val")

    def __repr__(self) -> str:
        src = self.path if self.path is not None else "<text>"
        return (
            f"CharLMTask(source={src!r}, seq_length={self.seq_length}, train_tokens={self._splits['train'].numel()}, "
            f"val_tokens={self._splits['val'].numel()})"
        )
