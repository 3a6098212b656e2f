"""Language-modelling tasks.

* :class:`LMTask` (``lm``) and :class:`PennTreebankTask` (``penn_tree_bank``): next-token
  prediction with the paper's ``<bos>``/``<eos>`` framing over any corpus (embedded
  default, local files, hub datasets), any text tokenizer, a tokenise-once disk cache and
  vectorised window sampling. Build them with :func:`build_lm_task`, the one entry point
  the CLIs call: every user error (bad path, offline and not cached, numeric tokenizer)
  is a ``ValueError`` raised there, before any model exists.
* :class:`CharLMTask` (``lm_char``): the older in-memory char task, described next.

Character-level language modelling on a local text (file or string).

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

from .base import Task, check_generator, check_int
from .batch import Batch
from .corpus import PTB_HUB_NAME, default_cache_dir, resolve_source
from .lm_data import build_token_cache, greedy_samples, lm_metrics, load_token_cache
from .loss import IGNORE_INDEX
from .tokenizers import PAD_ID, CharTokenizer, load_text_tokenizer

__all__ = ["CharLMTask", "LMTask", "PennTreebankTask", "LM_TASKS", "build_lm_task"]

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


# --------------------------------------------------------------------------- corpus LM tasks


class LMTask(Task):
    """Next-token prediction on a corpus, framed as in the paper.

    A batch row is a window of ``L`` corpus tokens ``w0 .. w_{L-1}`` (``L = seq_length``, or
    ``min(max_len, seq_length)`` when a curriculum passes ``max_len``), cut short at the end
    of a document (``n <= L`` tokens)::

        inputs  = <bos> w0 w1 ... w_{n-1} <pad> ...   [B, L + 1]
        targets = IGN   w1 w2 ... <eos>   IGN   ...   [B, L + 1]

    The model reads ``<bos> w0 .. w_{n-1}`` and is scored on predicting ``w1 .. w_{n-1} <eos>``:
    ``<bos>`` plus the first token are the prompt (x), the rest plus ``<eos>`` the answer (y).
    The target of ``<bos>`` (``w0``) and padding are ``IGNORE_INDEX``; padding inputs are the
    tokenizer's ``pad_id``. Special ids come from the tokenizer (0/1/2 for char).

    Data: ``dataset`` None → the embedded corpus; a path → local .txt/.jsonl/.parquet files;
    otherwise a Hugging Face dataset name (``NAME[:CONFIG]``). ``tokenizer``: ``"char"``
    (default), ``"hf"`` (GPT-2 + ``<bos>``/``<eos>``/``<pad>``), or a local dir through
    ``tokenizer_path``. The corpus is tokenised once into ``cache_dir`` (default
    ``$ZO_RNN_CACHE`` or ``~/.cache/zo_rnn``) and memory-mapped; windows are drawn only from
    the ``generator`` passed to the batch methods, so equal seeds give equal batches on every
    rank. Validation comes from the source's validation split when it has one, else from
    documents chosen by ``split_seed`` (``val_fraction`` of the chunks; see ``tasks.lm_data``).
    ``max_tokens`` caps each split (useful with ``streaming`` for very large corpora).
    """

    name = "lm"
    default_dataset: str | None = None
    min_train_len = 1

    def __init__(
        self,
        *,
        dataset: str | os.PathLike | None = None,
        tokenizer=None,
        tokenizer_path: str | os.PathLike | None = None,
        seq_length: int = 128,
        cache_dir: str | os.PathLike | None = None,
        streaming: bool = False,
        split_seed: int = 0,
        val_fraction: float = 0.1,
        max_tokens: int | None = None,
        text_field: str | None = None,
        log=None,
    ) -> None:
        super().__init__(seq_length=seq_length)
        if not isinstance(val_fraction, (int, float)) or isinstance(val_fraction, bool) or not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be a float in (0, 1), got {val_fraction!r}")
        check_int("split_seed", split_seed, minimum=0)
        if max_tokens is not None:
            check_int("max_tokens", max_tokens, minimum=2)
        if not isinstance(streaming, bool):
            raise ValueError(f"streaming must be a bool, got {streaming!r}")
        if tokenizer is None or isinstance(tokenizer, str):
            self.tokenizer = load_text_tokenizer(tokenizer, path=tokenizer_path)
        else:
            for attr in ("vocab_size", "encode", "decode", "bos_id", "eos_id", "pad_id", "fingerprint"):
                if not hasattr(tokenizer, attr):
                    raise ValueError(f"tokenizer object {tokenizer!r} lacks {attr!r}")
            self.tokenizer = tokenizer
        tok = self.tokenizer
        if len({tok.bos_id, tok.eos_id, tok.pad_id}) != 3:
            raise ValueError(f"{tok!r}: bos_id, eos_id and pad_id must differ, got {tok.bos_id}, {tok.eos_id}, "
                             f"{tok.pad_id}")
        dataset = self.default_dataset if dataset is None else dataset
        self.dataset = None if dataset is None else os.fspath(dataset)
        self.cache_dir = default_cache_dir(cache_dir)
        tail = ""
        if getattr(tok, "name", None) == "hf":
            tail += " --tokenizer hf"
        if getattr(tok, "source", None) and os.path.isabs(tok.source):
            tail += f" --tokenizer_path {tok.source}"
        if streaming:
            tail += " --streaming"
        if split_seed:
            tail += f" --split_seed {split_seed}"
        if max_tokens is not None:
            tail += f" --max_tokens {max_tokens}"  # part of the cache key, like the tokenizer
        source = resolve_source(dataset, task=self.name, streaming=streaming, text_field=text_field,
                                cache_dir=self.cache_dir, cmd_tail=tail)
        self.source_description = source.description
        self.cache_path = build_token_cache(source, tok, cache_dir=self.cache_dir, val_fraction=float(val_fraction),
                                            split_seed=split_seed, max_tokens=max_tokens, log=log)
        self.meta, self._splits = load_token_cache(self.cache_path)
        for split, ts in self._splits.items():
            if ts.num_tokens < self.seq_length:
                raise ValueError(
                    f"the {split} split of {source.description} has only {ts.num_tokens} tokens, fewer than "
                    f"seq_length={self.seq_length}; use a longer text or a smaller --seq_length"
                )

    # ------------------------------------------------------------------ data
    def split(self, split: str):
        """The :class:`tasks.lm_data.TokenSplit` of ``split`` ("train" or "val")."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
        return self._splits[split]

    def split_tokens(self, split: str) -> torch.Tensor:
        """The 1-D (memory-mapped, int32) token tensor of ``split``."""
        return self.split(split).tokens

    @property
    def train_length_range(self) -> tuple[int, int]:
        return (self.seq_length, self.seq_length)

    @property
    def val_length_range(self) -> tuple[int, int]:
        return (self.seq_length, self.seq_length)

    def batch(self, *, batch_size: int, min_len: int, max_len: int, generator: torch.Generator,
              split: str = "train") -> Batch:
        """Windows of ``[min_len, max_len]`` tokens (shape ``[B, max_len + 1]``) from ``split``."""
        self._check_batch_args(batch_size, min_len, max_len, generator)
        tok = self.tokenizer
        return self.split(split).window_batch(batch_size=batch_size, min_len=min_len, max_len=max_len,
                                              generator=generator, bos_id=tok.bos_id, eos_id=tok.eos_id,
                                              pad_id=tok.pad_id)

    def train_batch(self, *, batch_size: int, generator: torch.Generator, max_len: int | None = None) -> Batch:
        """Training windows of ``L = min(max_len, seq_length)`` tokens; ``max_len`` is the curriculum hook."""
        L = self.seq_length
        if max_len is not None:
            L = min(check_int("max_len", max_len, minimum=1), L)
        return self.batch(batch_size=batch_size, min_len=L, max_len=L, generator=check_generator(generator))

    def val_batch(self, *, batch_size: int, generator: torch.Generator) -> Batch:
        L = self.seq_length
        return self.batch(batch_size=batch_size, min_len=L, max_len=L, generator=generator, split="val")

    # ------------------------------------------------------------------ metrics
    def chars_per_token(self, split: str = "val") -> float:
        """Characters per token of ``split`` (1.0 for the char tokenizer)."""
        return self.split(split).chars_per_token

    def metrics(self, mean_loss: float, *, split: str = "val") -> dict:
        """``lm_metrics`` of a mean CE: loss, perplexity, bits_per_token and bits_per_char."""
        return lm_metrics(mean_loss, chars_per_token=self.chars_per_token(split))

    def unigram_entropy_bits(self, split: str = "train") -> float:
        """Entropy of the unigram token distribution of ``split``, in bits per token."""
        return self.split(split).unigram_entropy_bits(self.vocab_size)

    def greedy_samples(self, model, *, generator: torch.Generator, n: int = 2, prompt_len: int = 8,
                       n_tokens: int = 32) -> list[str]:
        """Greedy continuations of validation prompts, one log line each."""
        return greedy_samples(model, self, generator=generator, n=n, prompt_len=prompt_len, n_tokens=n_tokens)

    def describe(self) -> dict:
        """A JSON-able summary for logs and run configs."""
        tok = self.tokenizer
        out = {
            "task": self.name,
            "dataset": self.source_description,
            "tokenizer": getattr(tok, "name", type(tok).__name__),
            "tokenizer_source": getattr(tok, "source", None),
            "vocab_size": self.vocab_size,
            "bos_id": tok.bos_id,
            "eos_id": tok.eos_id,
            "pad_id": tok.pad_id,
            "seq_length": self.seq_length,
            "cache": self.cache_path,
        }
        for split, ts in self._splits.items():
            out[f"{split}_tokens"] = ts.num_tokens
            out[f"{split}_chars"] = ts.num_chars
            out[f"{split}_segments"] = int(ts.seg_starts.numel())
            out[f"{split}_chars_per_token"] = ts.chars_per_token
        return out

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(dataset={self.source_description!r}, tokenizer={self.tokenizer!r}, "
                f"seq_length={self.seq_length}, train_tokens={self._splits['train'].num_tokens}, "
                f"val_tokens={self._splits['val'].num_tokens})")


class PennTreebankTask(LMTask):
    """:class:`LMTask` on Penn Treebank (the paper's ``penn_tree_bank``).

    Default data: the hub dataset ``ptb-text-only/ptb_text_only`` (its ``sentence`` rows of each
    split joined with newlines, like the classic ``ptb.train.txt``; its validation split is the
    validation data). ``dataset=PATH`` takes a local copy instead, e.g. a directory with
    ``ptb.train.txt`` and ``ptb.valid.txt``.
    """

    name = "penn_tree_bank"
    default_dataset = PTB_HUB_NAME


LM_TASKS: dict[str, type[LMTask]] = {"lm": LMTask, "penn_tree_bank": PennTreebankTask}


def build_lm_task(
    name: str,
    *,
    dataset: str | os.PathLike | None = None,
    tokenizer: str | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    seq_length: int,
    cache_dir: str | os.PathLike | None = None,
    streaming: bool = False,
    split_seed: int = 0,
    val_fraction: float = 0.1,
    max_tokens: int | None = None,
    text_field: str | None = None,
    log=None,
) -> LMTask:
    """Build the LM task ``name`` ("lm" or "penn_tree_bank"): the one entry point of the CLIs.

    ``dataset``: None (embedded corpus for ``lm``, PTB from the hub for ``penn_tree_bank``), a
    local .txt/.jsonl/.parquet file or directory, or a hub dataset name such as
    ``haritzpuerto/the_pile_00_OpenWebText2``. ``tokenizer``: None/"char", "hf", or None with
    ``tokenizer_path`` = a local tokenizer directory. ``log``: optional callable for progress
    lines (e.g. "tokenising ... once").

    Loads the tokenizer, resolves the source and builds or opens the token cache, so every
    user error surfaces here as a ``ValueError`` with the remedy in its message, before any
    model is built. When the hub is needed but offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE
    set, or the endpoint unreachable) and the asset is not cached, the message names what is
    missing and the three ways out: warm the cache, give a local path, or use ``--tokenizer
    char`` / the embedded corpus.
    """
    if name not in LM_TASKS:
        raise ValueError(f"unknown language-modelling task {name!r}; valid names: {sorted(LM_TASKS)}")
    return LM_TASKS[name](dataset=dataset, tokenizer=tokenizer, tokenizer_path=tokenizer_path,
                          seq_length=seq_length, cache_dir=cache_dir, streaming=streaming, split_seed=split_seed,
                          val_fraction=val_fraction, max_tokens=max_tokens, text_field=text_field, log=log)
