"""The algorithmic tasks: copy, repeat_copy, reverse, sort, add.

All tasks use :class:`~tasks.tokenizers.NumericTokenizer` and build whole batches
with tensor ops (no per-sample Python loops).

Sequence layout (one sample)::

    seq = [BOS] prompt... [SEP] answer... [EOS] [PAD]...

``inputs = seq[:, :-1]`` and ``targets = seq[:, 1:]``; a target is scored only when
it is an answer token or the final EOS, i.e. the positions from the SEP input up to
the last answer input. Every other target (prompt, SEP itself, padding) is
``IGNORE_INDEX``. Padding runs to the longest sample of the batch. Each sample
draws its own length ``L`` uniformly in ``[min_len, max_len]``.

Per task (numbers are drawn uniformly in ``[0, max_num)``):

* ``copy``:        prompt = x_1..x_L;               answer = x_1..x_L
* ``reverse``:     prompt = x_1..x_L;               answer = x_L..x_1
* ``sort``:        prompt = x_1..x_L;               answer = x sorted ascending
* ``repeat_copy``: prompt = x_1..x_L, xk (a count token, k uniform in [1, max_repeats]);
                   answer = x_1..x_L repeated k times (length k*L)
* ``add``:         prompt = a_0..a_{L-1} + b_0..b_{L-1};  answer = s_0..s_L
                   where a, b are L-digit numbers in base ``max_num`` written
                   least-significant digit first (leading zeros allowed), and
                   s = a + b has L+1 digits, also least-significant first.
"""

from __future__ import annotations

import torch

from .base import Task, check_int
from .batch import Batch, first_scored
from .loss import IGNORE_INDEX
from .tokenizers import BOS_ID, EOS_ID, PAD_ID, SEP_ID, NumericTokenizer

__all__ = ["SyntheticTask", "CopyTask", "RepeatCopyTask", "ReverseTask", "SortTask", "AddTask"]


def assemble(prompt: torch.Tensor, p_len: torch.Tensor, answer: torch.Tensor, a_len: torch.Tensor) -> Batch:
    """Build ``[BOS] prompt [SEP] answer [EOS]`` for every row and split into a Batch.

    ``prompt`` [B, P] and ``answer`` [B, A] hold token ids left-aligned; only the first
    ``p_len[b]`` / ``a_len[b]`` entries of row ``b`` are used.
    """
    B = prompt.shape[0]
    device = prompt.device
    total = p_len + a_len + 3
    N = int(total.max())
    j = torch.arange(N, device=device).unsqueeze(0)
    pl = p_len.unsqueeze(1)
    sep_pos = pl + 1
    eos_pos = pl + 2 + a_len.unsqueeze(1)
    p_vals = prompt.gather(1, (j - 1).clamp(0, prompt.shape[1] - 1).expand(B, N))
    a_vals = answer.gather(1, (j - sep_pos - 1).clamp(0, answer.shape[1] - 1).expand(B, N))
    seq = torch.full((B, N), PAD_ID, dtype=torch.long, device=device)
    seq = torch.where(j < eos_pos, a_vals, seq)
    seq = torch.where(j == eos_pos, EOS_ID, seq)
    seq = torch.where(j == sep_pos, SEP_ID, seq)
    seq = torch.where(j < sep_pos, p_vals, seq)
    seq = torch.where(j == 0, BOS_ID, seq)
    t = j[:, :-1]
    scored = (t >= sep_pos) & (t < eos_pos)
    targets = torch.where(scored, seq[:, 1:], IGNORE_INDEX)
    # on the CPU the first scored step costs no device sync: chunks before it skip their logits
    return Batch(inputs=seq[:, :-1], targets=targets,
                 scored_from=first_scored(targets) if device.type == "cpu" else 0)


class SyntheticTask(Task):
    """Base of the algorithmic tasks; subclasses implement :meth:`_make`."""

    def __init__(self, *, seq_length: int = 20, max_num: int = 15, max_repeats: int = 3) -> None:
        super().__init__(seq_length=seq_length)
        self.max_num = check_int("max_num", max_num, minimum=2)
        self.tokenizer = NumericTokenizer(max_num, max_repeats=max_repeats)

    def batch(self, *, batch_size: int, min_len: int, max_len: int, generator: torch.Generator) -> Batch:
        self._check_batch_args(batch_size, min_len, max_len, generator)
        device = generator.device
        lengths = torch.randint(min_len, max_len + 1, (batch_size,), generator=generator, device=device)
        # Numbers for every row up to max_len; entries at positions >= L are masked below.
        numbers = torch.randint(0, self.max_num, (batch_size, max_len), generator=generator, device=device)
        valid = torch.arange(max_len, device=device).unsqueeze(0) < lengths.unsqueeze(1)
        numbers = torch.where(valid, numbers, 0)
        prompt, p_len, answer, a_len = self._make(numbers, lengths, valid, generator)
        return assemble(prompt, p_len, answer, a_len)

    def _make(self, numbers, lengths, valid, generator):
        """Return (prompt ids, prompt lengths, answer ids, answer lengths)."""
        raise NotImplementedError

    def _ids(self, numbers: torch.Tensor) -> torch.Tensor:
        return numbers + self.tokenizer.num_offset

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seq_length={self.seq_length}, max_num={self.max_num})"


class CopyTask(SyntheticTask):
    """Answer = the prompt."""

    name = "copy"

    def _make(self, numbers, lengths, valid, generator):
        ids = self._ids(numbers)
        return ids, lengths, ids, lengths


class ReverseTask(SyntheticTask):
    """Answer = the prompt reversed."""

    name = "reverse"

    def _make(self, numbers, lengths, valid, generator):
        ids = self._ids(numbers)
        i = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0)
        rev = ids.gather(1, (lengths.unsqueeze(1) - 1 - i).clamp(min=0))
        return ids, lengths, rev, lengths


class SortTask(SyntheticTask):
    """Answer = the prompt sorted ascending."""

    name = "sort"

    def _make(self, numbers, lengths, valid, generator):
        ids = self._ids(numbers)
        # Padding sorts after every real number, so the first L entries are the answer.
        ordered = torch.where(valid, numbers, self.max_num).sort(dim=1).values
        return ids, lengths, self._ids(ordered), lengths


class RepeatCopyTask(SyntheticTask):
    """Prompt = x_1..x_L followed by a count token ``xk``; answer = the numbers repeated k times.

    ``k`` is uniform in ``[1, max_repeats]`` (default 3).
    """

    name = "repeat_copy"

    def __init__(self, *, seq_length: int = 20, max_num: int = 15, max_repeats: int = 3) -> None:
        super().__init__(seq_length=seq_length, max_num=max_num, max_repeats=max_repeats)
        self.max_repeats = max_repeats

    def _make(self, numbers, lengths, valid, generator):
        B, Lmax = numbers.shape
        device = numbers.device
        ids = self._ids(numbers)
        k = torch.randint(1, self.max_repeats + 1, (B,), generator=generator, device=device)
        prompt = torch.cat([ids, torch.zeros(B, 1, dtype=ids.dtype, device=device)], dim=1)
        prompt.scatter_(1, lengths.unsqueeze(1), (k + self.tokenizer.repeat_offset - 1).unsqueeze(1))
        i = torch.arange(Lmax * self.max_repeats, device=device).unsqueeze(0)
        answer = ids.gather(1, i.remainder(lengths.unsqueeze(1)).expand(B, -1))
        return prompt, lengths + 1, answer, k * lengths


class AddTask(SyntheticTask):
    """Prompt = ``a + b`` as L digits each in base ``max_num``, least-significant first;
    answer = the L+1 digits of ``a + b``, least-significant first."""

    name = "add"

    def _make(self, numbers, lengths, valid, generator):
        B, Lmax = numbers.shape
        device = numbers.device
        base = self.max_num
        a = numbers
        b = torch.randint(0, base, (B, Lmax), generator=generator, device=device)
        b = torch.where(valid, b, 0)
        # Digits past L are zero, so the carry out of digit L-1 lands in s_L and the rest stay 0.
        s = torch.zeros(B, Lmax + 1, dtype=torch.long, device=device)
        carry = torch.zeros(B, dtype=torch.long, device=device)
        for pos in range(Lmax):
            total = a[:, pos] + b[:, pos] + carry
            s[:, pos] = total.remainder(base)
            carry = total.div(base, rounding_mode="floor")
        s[:, Lmax] = carry
        # prompt = a digits, PLUS, b digits
        a_ids, b_ids = self._ids(a), self._ids(b)
        L = lengths.unsqueeze(1)
        j = torch.arange(2 * Lmax + 1, device=device).unsqueeze(0)
        b_vals = b_ids.gather(1, (j - L - 1).clamp(0, Lmax - 1).expand(B, -1))
        a_vals = a_ids.gather(1, j.clamp(max=Lmax - 1).expand(B, -1))
        prompt = torch.where(j < L, a_vals, torch.where(j == L, self.tokenizer.plus_id, b_vals))
        return prompt, 2 * lengths + 1, self._ids(s), lengths + 1
