"""Tokenizers shared by all tasks.

Every tokenizer reserves the same four special ids so that models, losses and
decoders can rely on them regardless of the task:

    PAD_ID = 0   padding (never scored, dropped when decoding)
    BOS_ID = 1   beginning of sequence, rendered ``<bos>``
    EOS_ID = 2   end of sequence, rendered ``<eos>``
    SEP_ID = 3   prompt/answer separator, rendered ``<sep>``

Ordinary tokens start at id 4.
"""

from __future__ import annotations

import string
from typing import Callable, Iterable, Sequence

import torch

PAD_ID = 0
BOS_ID = 1
EOS_ID = 2
SEP_ID = 3
NUM_SPECIAL = 4

SPECIAL_NAMES = {BOS_ID: "<bos>", EOS_ID: "<eos>", SEP_ID: "<sep>"}
_SPECIAL_BY_NAME = {v: k for k, v in SPECIAL_NAMES.items()}

__all__ = [
    "PAD_ID",
    "BOS_ID",
    "EOS_ID",
    "SEP_ID",
    "NUM_SPECIAL",
    "SPECIAL_NAMES",
    "CharTokenizer",
    "NumericTokenizer",
    "TOKENIZERS",
    "get_tokenizer",
]


def _as_id_list(ids: Iterable[int] | torch.Tensor) -> list[int]:
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(f"decode expects a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}")
        return ids.tolist()
    return [int(i) for i in ids]


class CharTokenizer:
    """Character tokenizer with a fixed vocabulary of exactly 100 ids.

    Ids 0..3 are the specials; ids 4..99 are the 96 characters of
    ``string.printable`` without ``'\\t'``, ``'\\r'``, ``'\\x0b'`` and ``'\\x0c'``
    (in ``string.printable`` order: digits, lowercase, uppercase, punctuation,
    ``' '``, ``'\\n'``).

    Encoding normalises ``'\\r\\n'`` and ``'\\r'`` to ``'\\n'``, ``'\\t'`` to ``' '``,
    and every other character outside the vocabulary (vertical tab, form feed,
    control characters, non-ASCII) to ``'?'``.
    """

    name = "char"
    UNKNOWN_CHAR = "?"

    def __init__(self) -> None:
        dropped = set("\t\r\x0b\x0c")
        self.chars: tuple[str, ...] = tuple(c for c in string.printable if c not in dropped)
        assert len(self.chars) == 96
        self.vocab_size: int = NUM_SPECIAL + len(self.chars)
        self._char_to_id = {c: NUM_SPECIAL + i for i, c in enumerate(self.chars)}
        unk = self._char_to_id[self.UNKNOWN_CHAR]
        lut = torch.full((256,), unk, dtype=torch.long)
        for c, i in self._char_to_id.items():
            lut[ord(c)] = i
        lut[ord("\t")] = self._char_to_id[" "]
        lut[ord("\r")] = self._char_to_id["\n"]
        self._lut = lut
        self._id_to_str = ["", *(SPECIAL_NAMES[i] for i in (BOS_ID, EOS_ID, SEP_ID)), *self.chars]

    def encode_tensor(self, text: str) -> torch.Tensor:
        """Encode ``text`` to a 1-D LongTensor, vectorised through a byte lookup table."""
        if not isinstance(text, str):
            raise ValueError(f"CharTokenizer.encode_tensor expects a str, got {type(text).__name__}")
        # One byte per character: non-ASCII characters become '?' here already.
        raw = text.replace("\r\n", "\n").encode("ascii", errors="replace")
        if not raw:
            return torch.empty(0, dtype=torch.long)
        codes = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
        return self._lut[codes]

    def encode(self, text: str) -> list[int]:
        """Encode ``text`` to a list of ids (same result as :meth:`encode_tensor`)."""
        return self.encode_tensor(text).tolist()

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Decode ids to text; specials are shown as ``<bos>``/``<eos>``/``<sep>``, padding is dropped."""
        out = []
        for i in _as_id_list(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the char vocabulary [0, {self.vocab_size})")
            out.append(self._id_to_str[i])
        return "".join(out)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class NumericTokenizer:
    """Tokenizer for the algorithmic tasks: numbers ``0..max_num-1`` plus operators.

    Id layout (``M = max_num``, ``R = max_repeats``)::

        0..3                specials (PAD, BOS, EOS, SEP)
        4 .. 4+M-1          the numbers 0 .. M-1          (rendered "0", "1", ...)
        4+M                 PLUS, used by ``add``         (rendered "+")
        4+M+1 .. 4+M+R      repeat counts 1 .. R, used by ``repeat_copy``
                                                          (rendered "x1", "x2", ...)

    ``vocab_size == 4 + M + 1 + R``.
    """

    name = "numeric"

    def __init__(self, max_num: int = 15, *, max_repeats: int = 3) -> None:
        if isinstance(max_num, bool) or not isinstance(max_num, int) or max_num < 2:
            raise ValueError(f"max_num must be an int >= 2, got {max_num!r}")
        if isinstance(max_repeats, bool) or not isinstance(max_repeats, int) or max_repeats < 1:
            raise ValueError(f"max_repeats must be an int >= 1, got {max_repeats!r}")
        self.max_num = max_num
        self.max_repeats = max_repeats
        self.num_offset = NUM_SPECIAL
        self.plus_id = NUM_SPECIAL + max_num
        self.repeat_offset = self.plus_id + 1  # id of count k is repeat_offset + k - 1
        self.vocab_size: int = self.repeat_offset + max_repeats
        self._id_to_str = [
            "",
            *(SPECIAL_NAMES[i] for i in (BOS_ID, EOS_ID, SEP_ID)),
            *(str(n) for n in range(max_num)),
            "+",
            *(f"x{k}" for k in range(1, max_repeats + 1)),
        ]
        assert len(self._id_to_str) == self.vocab_size
        self._str_to_id = {s: i for i, s in enumerate(self._id_to_str) if s}

    def number_id(self, n: int) -> int:
        if not 0 <= n < self.max_num:
            raise ValueError(f"number {n} is outside [0, {self.max_num}); raise max_num to encode it")
        return self.num_offset + n

    def repeat_id(self, k: int) -> int:
        if not 1 <= k <= self.max_repeats:
            raise ValueError(f"repeat count {k} is outside [1, {self.max_repeats}]; raise max_repeats")
        return self.repeat_offset + k - 1

    def encode(self, tokens: str | Sequence[int]) -> list[int]:
        """Encode either a whitespace-separated string as produced by :meth:`decode`
        (e.g. ``"<bos> 3 1 + 4 <sep>"``) or a sequence of plain numbers."""
        if isinstance(tokens, str):
            out = []
            for tok in tokens.split():
                if tok not in self._str_to_id:
                    raise ValueError(
                        f"unknown numeric token {tok!r}; expected a number in [0, {self.max_num}), "
                        f"'+', x1..x{self.max_repeats} or one of {sorted(_SPECIAL_BY_NAME)}"
                    )
                out.append(self._str_to_id[tok])
            return out
        return [self.number_id(int(n)) for n in tokens]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Render ids space-separated; specials as ``<bos>``/``<eos>``/``<sep>``, padding dropped."""
        out = []
        for i in _as_id_list(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the numeric vocabulary [0, {self.vocab_size})")
            if i != PAD_ID:
                out.append(self._id_to_str[i])
        return " ".join(out)

    def __repr__(self) -> str:
        return f"NumericTokenizer(max_num={self.max_num}, max_repeats={self.max_repeats})"


TOKENIZERS: dict[str, Callable[..., object]] = {
    "char": CharTokenizer,
    "numeric": NumericTokenizer,
}


def get_tokenizer(name: str, **kwargs):
    """Build a tokenizer by name (see ``TOKENIZERS``); keyword args go to its constructor."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; valid names: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name](**kwargs)
