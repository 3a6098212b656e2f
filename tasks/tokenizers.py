"""Tokenizers shared by all tasks.

Every tokenizer reserves the same four special ids so that models, losses and
decoders can rely on them regardless of the task:

    PAD_ID = 0   padding (never scored, dropped when decoding)
    BOS_ID = 1   beginning of sequence, rendered ``<bos>``
    EOS_ID = 2   end of sequence, rendered ``<eos>``
    SEP_ID = 3   prompt/answer separator, rendered ``<sep>``

Ordinary tokens start at id 4.

Subword tokenizers from ``transformers`` (``--tokenizer hf`` = GPT-2 with added
``<bos>``/``<eos>``/``<pad>``, or ``--tokenizer_path DIR``) keep their own id layout;
:class:`HFTokenizer` adapts them to the same surface as the built-in ones:
``vocab_size``, ``encode``, ``encode_batch``, ``decode``, ``bos_id``, ``eos_id``,
``pad_id`` and ``fingerprint`` (a content hash used as a cache key). Load them with
:func:`load_text_tokenizer`, which turns "offline and not cached" into a clear
``ValueError``.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    "HFTokenizer",
    "TOKENIZERS",
    "TEXT_TOKENIZERS",
    "HF_TOKENIZER_NAME",
    "get_tokenizer",
    "load_text_tokenizer",
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
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

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

    def encode_batch(self, texts: Sequence[str]) -> list[torch.Tensor]:
        """Encode several texts; one 1-D LongTensor each."""
        return [self.encode_tensor(t) for t in texts]

    @property
    def fingerprint(self) -> str:
        """Stable identity of the vocabulary (a cache key)."""
        return "char100-v1"

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
    pad_id = PAD_ID
    bos_id = BOS_ID
    eos_id = EOS_ID

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


# --------------------------------------------------------------------------- transformers tokenizers

HF_TOKENIZER_NAME = "gpt2"
# The paper's added specials: GPT-2's 50257 ids + <bos>, <eos>, <pad> = 50260.
PAPER_SPECIALS = {"bos_token": "<bos>", "eos_token": "<eos>", "pad_token": "<pad>"}


class HFTokenizer:
    """Adapter giving a ``transformers`` tokenizer the built-in tokenizers' surface.

    ``vocab_size`` is ``len(tokenizer)`` (added tokens included). ``encode`` never adds
    special tokens; ``decode`` drops padding and renders the other specials as their
    text (``<bos>``, ``<eos>``). Its ids do NOT follow PAD=0/BOS=1/EOS=2: use
    ``pad_id``/``bos_id``/``eos_id``.
    """

    def __init__(self, tokenizer, *, name: str, source: str) -> None:
        for attr in ("bos_token_id", "eos_token_id", "pad_token_id"):
            if getattr(tokenizer, attr, None) is None:
                raise ValueError(f"tokenizer from {source!r} has no {attr[:-3]}; it cannot frame LM windows")
        self._tok = tokenizer
        self.name = name
        self.source = source
        self.bos_id: int = int(tokenizer.bos_token_id)
        self.eos_id: int = int(tokenizer.eos_token_id)
        self.pad_id: int = int(tokenizer.pad_token_id)
        self.vocab_size: int = len(tokenizer)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # A tokenizer.json may carry truncation/padding settings; LM data wants neither.
            backend.no_truncation()
            backend.no_padding()
        self._backend = backend
        self._fingerprint: str | None = None

    @property
    def hf_tokenizer(self):
        """The wrapped ``transformers`` tokenizer."""
        return self._tok

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        texts = list(texts)
        if not texts:
            return []
        if self._backend is not None:
            return [e.ids for e in self._backend.encode_batch(texts, add_special_tokens=False)]
        return self._tok(texts, add_special_tokens=False, verbose=False)["input_ids"]

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"encode expects a str, got {type(text).__name__}")
        return self.encode_batch([text])[0]

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        out = []
        for i in _as_id_list(ids):
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"id {i} is outside the vocabulary [0, {self.vocab_size}) of {self.source!r}")
            if i != self.pad_id:
                out.append(i)
        return self._tok.decode(out, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    @property
    def fingerprint(self) -> str:
        """sha256 of the full tokenizer definition and the special ids (a cache key)."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            if self._backend is not None:
                h.update(self._backend.to_str().encode("utf-8"))
            else:
                h.update(json.dumps(sorted(self._tok.get_vocab().items())).encode("utf-8"))
            h.update(f"|{type(self._tok).__name__}|{self.vocab_size}|{self.bos_id}|{self.eos_id}|{self.pad_id}".encode())
            self._fingerprint = "hf-" + h.hexdigest()[:24]
        return self._fingerprint

    def __repr__(self) -> str:
        return (f"HFTokenizer(source={self.source!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id}, "
                f"eos_id={self.eos_id}, pad_id={self.pad_id})")


def _ways_out_tokenizer() -> str:
    return (
        "Three ways out:\n"
        f"  1. warm the cache: on a machine with network access and the same HF_HOME, run\n"
        f"     python -c \"from transformers import AutoTokenizer; AutoTokenizer.from_pretrained('{HF_TOKENIZER_NAME}')\"\n"
        "     (or python -m tasks.prepare_lm --tokenizer hf), then copy HF_HOME here or share it;\n"
        "  2. give a local tokenizer directory (one written by save_pretrained, e.g. a saved copy of\n"
        f"     '{HF_TOKENIZER_NAME}'): --tokenizer_path DIR;\n"
        "  3. use the built-in 100-symbol character tokenizer, which needs no files: --tokenizer char."
    )


def _gpt2_from_hub():
    """``AutoTokenizer.from_pretrained('gpt2')``: cache first, the network only when reachable."""
    from transformers import AutoTokenizer

    from .hub import hf_cache_desc, offline_reason, short_cause

    try:
        return AutoTokenizer.from_pretrained(HF_TOKENIZER_NAME, local_files_only=True)
    except Exception as e:  # not cached (or a broken cache entry)
        cached_err = e
    reason = offline_reason()
    if reason is not None:
        raise ValueError(
            f"--tokenizer hf needs the GPT-2 tokenizer ('{HF_TOKENIZER_NAME}' on the Hugging Face hub: "
            f"tokenizer.json / vocab.json / merges.txt), but it is not in the local Hugging Face cache "
            f"({hf_cache_desc()}) and the hub cannot be used: {reason}.\n{_ways_out_tokenizer()}\n"
            f"(cause: {short_cause(cached_err)})"
        ) from None
    try:
        return AutoTokenizer.from_pretrained(HF_TOKENIZER_NAME)
    except Exception as e:
        raise ValueError(
            f"--tokenizer hf could not download the GPT-2 tokenizer '{HF_TOKENIZER_NAME}' "
            f"({hf_cache_desc()}).\n{_ways_out_tokenizer()}\n(cause: {short_cause(e)})"
        ) from None


def _from_local_dir(path: str):
    if not os.path.isdir(path):
        kind = "a file" if os.path.exists(path) else "missing"
        raise ValueError(
            f"--tokenizer_path {path!r} is {kind}; it must be a directory written by a tokenizer's "
            "save_pretrained (tokenizer.json and/or tokenizer_config.json)"
        )
    from transformers import AutoTokenizer

    from .hub import short_cause

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ValueError(
            f"--tokenizer_path {path!r}: could not load a tokenizer from this directory ({short_cause(e)}); "
            "it must be a directory written by save_pretrained (tokenizer.json and/or tokenizer_config.json), "
            "or use --tokenizer char"
        ) from None


def load_text_tokenizer(kind: str | None = None, *, path: str | os.PathLike | None = None):
    """A tokenizer for text LM tasks.

    * ``kind="char"`` (or None without ``path``): :class:`CharTokenizer`.
    * ``kind="hf"``: GPT-2 via ``transformers.AutoTokenizer.from_pretrained("gpt2")`` (or from
      ``path`` when given, e.g. a saved copy) plus the paper's ``<bos>``, ``<eos>``, ``<pad>``
      (50260 ids for GPT-2).
    * ``path`` alone (``kind`` None or ``"path"``): any local tokenizer directory; missing
      bos/eos/pad are added as ``<bos>``/``<eos>``/``<pad>``.

    Every failure (offline and not cached, bad directory, numeric for text) is a ``ValueError``
    naming what is missing and how to get past it.
    """
    if kind not in (None, "char", "hf", "path", "numeric"):
        raise ValueError(f"unknown tokenizer {kind!r} for a text task; valid: char, hf (or --tokenizer_path DIR)")
    if kind == "numeric":
        raise ValueError("the numeric tokenizer encodes numbers for the synthetic tasks, not text; "
                         "use --tokenizer char or --tokenizer hf for a language-modelling task")
    if path is not None:
        path = os.path.abspath(os.path.expanduser(os.fspath(path)))
    if kind == "char":
        if path is not None:
            raise ValueError("--tokenizer char and --tokenizer_path both given; drop one (the char tokenizer "
                             "has no files)")
        return CharTokenizer()
    if kind is None and path is None:
        return CharTokenizer()
    if kind == "path" and path is None:
        raise ValueError("tokenizer 'path' needs --tokenizer_path DIR")
    if path is not None:
        tok = _from_local_dir(path)
        source = path
    else:
        tok = _gpt2_from_hub()
        source = HF_TOKENIZER_NAME
    if kind == "hf":
        tok.add_special_tokens(dict(PAPER_SPECIALS))
    else:
        missing = {k: v for k, v in PAPER_SPECIALS.items() if getattr(tok, k + "_id", None) is None}
        if missing:
            tok.add_special_tokens(missing)
    return HFTokenizer(tok, name="hf" if kind == "hf" else "path", source=source)


TOKENIZERS: dict[str, Callable[..., object]] = {
    "char": CharTokenizer,
    "numeric": NumericTokenizer,
    "hf": lambda **kwargs: load_text_tokenizer("hf", **kwargs),
}
# Tokenizers that can encode free text (the LM tasks accept these, or --tokenizer_path DIR).
TEXT_TOKENIZERS = ("char", "hf")


def get_tokenizer(name: str, **kwargs):
    """Build a tokenizer by name (see ``TOKENIZERS``); keyword args go to its constructor."""
    if name not in TOKENIZERS:
        raise ValueError(f"unknown tokenizer {name!r}; valid names: {sorted(TOKENIZERS)}")
    return TOKENIZERS[name](**kwargs)
