"""Tokenise-once token caches, vectorised LM windows, LM metrics and greedy decoding.

Token cache
-----------
A corpus is tokenised once per (source, tokenizer, split settings) and written under
``<cache>/tokens/<key>/`` (``<cache>`` = ``cache_dir``, ``$ZO_RNN_CACHE`` or
``~/.cache/zo_rnn``; ``key`` = sha256 of the JSON identity of all of those):

* ``train.tokens.i32`` / ``val.tokens.i32``: the split's tokens, flat little-endian int32;
* ``train.segments.i64`` / ``val.segments.i64``: start offsets of the split's segments;
* ``meta.json``: counts (tokens, characters, segments), the identity and the tokenizer.

A *segment* is a run of text that is contiguous in the source: a document, or the part
of one that landed in this split. Windows never cross a segment end.

Building streams documents: each is cut into chunks of at most ``CHUNK_CHARS`` characters
at a line break (or space) and tokenised in batches. Without explicit validation data a
chunk goes to ``val`` when a hash of ``(split_seed, chunk index)`` falls below
``val_fraction`` (deterministic, order-free, streaming-friendly); if a corpus is so small
that a split ends up empty, the last ``val_fraction`` of the tokens becomes ``val``.
Builders take a file lock, write to a temp dir and rename it, so concurrent ranks build
a cache once and never read a partial one. The token files are memory-mapped, so a
corpus larger than RAM only costs the pages a batch touches.

Windows (the paper's split)
---------------------------
A window of ``L`` tokens ``w0 .. w_{L-1}`` starts at a uniformly drawn token position;
it is cut short at a segment end (``n <= L`` tokens). With ``T = L + 1``::

    inputs  = <bos> w0  w1 ... w_{n-1} <pad> ...     (shape [B, L + 1])
    targets = IGN   w1  w2 ... <eos>   IGN   ...     (IGN = IGNORE_INDEX)

The model reads ``<bos> w0`` as its prompt (x = ``<bos>`` + first token) and is scored on
``w1 .. w_{n-1} <eos>`` (y = the rest + ``<eos>``): ``n`` scored targets per row, the target
of ``<bos>`` (``w0``) is never scored, padding positions are ``pad_id`` in the inputs and
IGNORE_INDEX in the targets. All randomness comes from the ``torch.Generator`` passed in,
so ranks with equal generator seeds draw identical batches.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from typing import Iterable, Iterator

import numpy as np
import torch

from .batch import Batch
from .loss import IGNORE_INDEX

__all__ = [
    "CACHE_FORMAT",
    "CHUNK_CHARS",
    "SPLITS",
    "TokenSplit",
    "build_token_cache",
    "load_token_cache",
    "chunk_document",
    "lm_window_batch",
    "lm_metrics",
    "greedy_decode",
    "greedy_samples",
]

CACHE_FORMAT = 1
CHUNK_CHARS = 1 << 14
ENCODE_BATCH_CHARS = 1 << 20
DEVICE_COPY_LIMIT_BYTES = 1 << 30  # split tensors up to this size are copied to the generator's device
SPLITS = ("train", "val")


# --------------------------------------------------------------------------- chunking and split assignment


def _cut_point(s: str, limit: int) -> int:
    head = s[:limit]
    for sep in ("\n", " "):
        i = head.rfind(sep)
        if i >= limit // 2:
            return i + 1
    return limit


def chunk_document(pieces: Iterable[str], limit: int = CHUNK_CHARS) -> Iterator[str]:
    """Cut a document given as text pieces into chunks of at most ``limit`` characters,
    preferably right after a line break (else a space) in the second half of the chunk."""
    buf: list[str] = []
    size = 0
    for piece in pieces:
        if not piece:
            continue
        buf.append(piece)
        size += len(piece)
        if size >= limit:
            s = "".join(buf)
            while len(s) >= limit:
                cut = _cut_point(s, limit)
                yield s[:cut]
                s = s[cut:]
            buf, size = ([s], len(s)) if s else ([], 0)
    if size:
        yield "".join(buf)


def _is_val_chunk(split_seed: int, index: int, val_fraction: float) -> bool:
    h = hashlib.blake2b(f"{split_seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") / 2.0**64 < val_fraction


# --------------------------------------------------------------------------- cache writing


class _SplitWriter:
    def __init__(self, directory: str, split: str) -> None:
        self.split = split
        self.tok_path = os.path.join(directory, f"{split}.tokens.i32")
        self.seg_path = os.path.join(directory, f"{split}.segments.i64")
        self._f = open(self.tok_path, "wb")
        self.tokens = 0
        self.chars = 0
        self.segments: list[int] = []

    def append(self, ids, n_chars: int, new_segment: bool) -> None:
        arr = ids.to(torch.int32).numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, dtype=np.int64)
        if arr.size == 0:
            return
        if arr.dtype != np.int32:
            if arr.min() < 0 or arr.max() >= 2**31:
                raise ValueError(f"token ids must lie in [0, 2**31), got [{arr.min()}, {arr.max()}]")
            arr = arr.astype(np.int32)
        if new_segment or not self.segments:
            self.segments.append(self.tokens)
        self._f.write(arr.astype("<i4", copy=False).tobytes())
        self.tokens += int(arr.size)
        self.chars += int(n_chars)

    def close(self) -> None:
        self._f.close()
        np.asarray(self.segments, dtype="<i8").tofile(self.seg_path)


def _rebalance(writers: dict, val_fraction: float) -> None:
    """Give an empty split the tail (val) or head (train) of the other; only tiny corpora get here."""
    tr, va = writers["train"], writers["val"]
    if tr.tokens and va.tokens:
        return
    full = tr if tr.tokens else va
    n = full.tokens
    if n < 2:
        raise ValueError(f"the corpus has only {n} token(s); it needs at least a few hundred")
    toks = np.fromfile(full.tok_path, dtype="<i4")
    segs = np.fromfile(full.seg_path, dtype="<i8")
    k = min(max(1, int(round(n * val_fraction))), n - 1)
    cut = n - k
    parts = {"train": (toks[:cut], [s for s in segs.tolist() if s < cut]),
             "val": (toks[cut:], [0] + [s - cut for s in segs.tolist() if s > cut])}
    chars = full.chars
    for name, w in writers.items():
        t, sg = parts[name]
        t.tofile(w.tok_path)
        np.asarray(sg, dtype="<i8").tofile(w.seg_path)
        w.tokens = int(t.size)
        w.segments = sg
        w.chars = int(round(chars * t.size / n))


def _cache_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:24]


@contextlib.contextmanager
def _file_lock(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl

            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - non-POSIX: no cross-process lock, the rename stays atomic
            pass
        yield


def build_token_cache(source, tokenizer, *, cache_dir: str, val_fraction: float = 0.1, split_seed: int = 0,
                      max_tokens: int | None = None, log=None) -> str:
    """Tokenise ``source`` (a :class:`tasks.corpus.Source`) with ``tokenizer`` into the token cache,
    unless it is already there; returns the cache directory. ``max_tokens`` caps each split."""
    identity = {
        "format": CACHE_FORMAT,
        "source": source.identity,
        "tokenizer": tokenizer.fingerprint,
        "val_fraction": val_fraction,
        "split_seed": split_seed,
        "max_tokens": max_tokens,
        "chunk_chars": CHUNK_CHARS,
    }
    key = _cache_key(identity)
    base = os.path.join(cache_dir, "tokens")
    final = os.path.join(base, key)
    if os.path.isfile(os.path.join(final, "meta.json")):
        return final
    with _file_lock(os.path.join(base, f"{key}.lock")):
        if os.path.isfile(os.path.join(final, "meta.json")):
            return final
        if log:
            log(f"tokenising {source.description} with {tokenizer!r} into {final} (once)")
        tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=base)
        os.chmod(tmp, 0o755)  # readable like any other cache dir once renamed
        try:
            _write_cache(tmp, source, tokenizer, identity, val_fraction, split_seed, max_tokens)
            if os.path.isdir(final):  # a stale partial dir (no meta.json): replace it
                shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _write_cache(tmp, source, tokenizer, identity, val_fraction, split_seed, max_tokens) -> None:
    writers = {s: _SplitWriter(tmp, s) for s in SPLITS}
    encode_batch = getattr(tokenizer, "encode_batch", None) or (lambda ts: [tokenizer.encode(t) for t in ts])
    last: dict[str, tuple[int, int] | None] = {s: None for s in SPLITS}  # (doc, chunk) last written per split
    full = {s: False for s in SPLITS}
    pending: list[tuple[str, bool, str]] = []
    pending_chars = 0

    def flush() -> None:
        nonlocal pending, pending_chars
        encoded = encode_batch([text for _, _, text in pending])
        for (split, new_seg, text), ids in zip(pending, encoded):
            w = writers[split]
            if full[split]:
                continue
            n_chars = len(text)
            if max_tokens is not None and w.tokens + len(ids) >= max_tokens:
                keep = max_tokens - w.tokens
                n_chars = int(round(n_chars * keep / max(len(ids), 1)))
                ids = ids[:keep]
                full[split] = True
            w.append(ids, n_chars, new_seg)
        pending, pending_chars = [], 0

    chunk_index = 0
    try:
        for explicit, documents in source.splits():
            for doc_index, doc in enumerate(documents()):
                for j, chunk in enumerate(chunk_document(doc)):
                    if explicit is None:
                        split = "val" if _is_val_chunk(split_seed, chunk_index, val_fraction) else "train"
                    else:
                        split = explicit
                    chunk_index += 1
                    new_seg = last[split] != (doc_index, j - 1) or j == 0
                    last[split] = (doc_index, j)
                    pending.append((split, new_seg, chunk))
                    pending_chars += len(chunk)
                    if pending_chars >= ENCODE_BATCH_CHARS:
                        flush()
                    if explicit is None and full["train"] or explicit is not None and full[explicit]:
                        break
                if explicit is None and full["train"] or explicit is not None and full[explicit]:
                    break
            for s in SPLITS:
                last[s] = None  # documents of the next part never continue this part's
            if pending:
                flush()
    finally:
        for w in writers.values():
            w.close()
    _rebalance(writers, val_fraction)
    meta = {
        "format": CACHE_FORMAT,
        "identity": identity,
        "byteorder": "little",
        "vocab_size": int(tokenizer.vocab_size),
        "source": source.description,
        "notes": list(getattr(source, "notes", [])),
        "splits": {s: {"tokens": w.tokens, "chars": w.chars, "segments": len(w.segments)} for s, w in writers.items()},
    }
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)


# --------------------------------------------------------------------------- cache reading and windows


class TokenSplit:
    """One split of a token cache: memory-mapped tokens plus segment starts and counts."""

    def __init__(self, directory: str, split: str, meta: dict) -> None:
        info = meta["splits"][split]
        self.split = split
        self.num_tokens: int = int(info["tokens"])
        self.num_chars: int = int(info["chars"])
        path = os.path.join(directory, f"{split}.tokens.i32")
        if self.num_tokens == 0:
            raise ValueError(f"the {split} split of the token cache {directory} is empty")
        if os.path.getsize(path) != 4 * self.num_tokens:
            raise ValueError(f"token cache {directory} is damaged ({path} has the wrong size); delete that "
                             "directory and rerun to rebuild it")
        self.tokens = torch.from_file(path, shared=False, size=self.num_tokens, dtype=torch.int32)
        starts = np.fromfile(os.path.join(directory, f"{split}.segments.i64"), dtype="<i8")
        self.seg_starts = torch.from_numpy(starts.astype(np.int64))
        self.seg_ends = torch.cat([self.seg_starts[1:], torch.tensor([self.num_tokens])])
        self._on_device: dict[str, tuple[torch.Tensor | None, torch.Tensor, torch.Tensor]] = {}

    @property
    def chars_per_token(self) -> float:
        return self.num_chars / self.num_tokens

    def unigram_entropy_bits(self, vocab_size: int) -> float:
        """Entropy (bits per token) of the split's unigram token distribution."""
        counts = torch.zeros(vocab_size, dtype=torch.int64)
        step = 1 << 24
        for i in range(0, self.num_tokens, step):
            counts += torch.bincount(self.tokens[i : i + step].long(), minlength=vocab_size)[:vocab_size]
        p = counts[counts > 0].double() / self.num_tokens
        return float(-(p * p.log2()).sum())

    def on(self, device: torch.device):
        key = str(device)
        if key not in self._on_device:
            fits = 4 * self.num_tokens <= DEVICE_COPY_LIMIT_BYTES
            toks = self.tokens if device.type == "cpu" else (self.tokens.to(device) if fits else None)
            self._on_device[key] = (toks, self.seg_starts.to(device), self.seg_ends.to(device))
        return self._on_device[key]

    def window_batch(self, *, batch_size: int, min_len: int, max_len: int, generator: torch.Generator,
                     bos_id: int, eos_id: int, pad_id: int) -> Batch:
        """``batch_size`` windows of ``[min_len, max_len]`` tokens (see the module docstring)."""
        return lm_window_batch(self, batch_size=batch_size, min_len=min_len, max_len=max_len,
                               generator=generator, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)

    def __repr__(self) -> str:
        return (f"TokenSplit({self.split}, tokens={self.num_tokens}, chars={self.num_chars}, "
                f"segments={self.seg_starts.numel()})")


def lm_window_batch(split: TokenSplit, *, batch_size: int, min_len: int, max_len: int,
                    generator: torch.Generator, bos_id: int, eos_id: int, pad_id: int) -> Batch:
    dev = generator.device
    tokens, seg_starts, seg_ends = split.on(dev)
    N, B, L = split.num_tokens, batch_size, max_len
    start_B = torch.randint(0, N, (B,), generator=generator, device=dev)
    if min_len == max_len:
        want_B = torch.full((B,), L, dtype=torch.long, device=dev)
    else:
        want_B = torch.randint(min_len, max_len + 1, (B,), generator=generator, device=dev)
    seg_B = torch.searchsorted(seg_starts, start_B, right=True) - 1
    n_B = torch.minimum(seg_ends[seg_B] - start_B, want_B)                     # tokens in the window, >= 1
    j_L = torch.arange(L, device=dev)
    idx_BL = (start_B.unsqueeze(1) + j_L).clamp_(max=N - 1)
    if tokens is not None:
        w_BL = tokens[idx_BL].long()
    else:  # the split is too large for the device: gather on the host
        w_BL = split.tokens[idx_BL.cpu()].long().to(dev, non_blocking=True)
    valid_BL = j_L < n_B.unsqueeze(1)                                           # w_j exists
    inputs = torch.empty(B, L + 1, dtype=torch.long, device=dev)
    inputs[:, 0] = bos_id
    inputs[:, 1:] = torch.where(valid_BL, w_BL, pad_id)
    targets = torch.full((B, L + 1), IGNORE_INDEX, dtype=torch.long, device=dev)
    targets[:, 1:L] = torch.where(valid_BL[:, 1:], w_BL[:, 1:], IGNORE_INDEX)  # position j predicts w_j
    targets.scatter_(1, n_B.unsqueeze(1), eos_id)                              # after w_{n-1} comes <eos>
    return Batch(inputs=inputs, targets=targets)


def load_token_cache(directory: str) -> tuple[dict, dict[str, TokenSplit]]:
    with open(os.path.join(directory, "meta.json")) as f:
        meta = json.load(f)
    if meta.get("format") != CACHE_FORMAT or meta.get("byteorder") != "little" or sys.byteorder != "little":
        raise ValueError(f"token cache {directory} has an unsupported format; delete it to rebuild")
    return meta, {s: TokenSplit(directory, s, meta) for s in SPLITS}


# --------------------------------------------------------------------------- metrics


def lm_metrics(mean_loss: float, *, chars_per_token: float | None = None) -> dict:
    """Perplexity and bits from a mean cross entropy in nats per scored token.

    Returns ``loss``, ``perplexity`` (``inf`` past overflow), ``bits_per_token`` and, when
    ``chars_per_token`` is given (characters per token of the split; 1.0 for the char
    tokenizer), ``bits_per_char = bits_per_token / chars_per_token``. Scored tokens include
    the ``<eos>`` ending each window, which has no characters; for a subword tokenizer the
    ratio therefore slightly overstates bits per character.
    """
    loss = float(mean_loss)
    bpt = loss / math.log(2.0)
    out = {"loss": loss, "perplexity": math.exp(loss) if loss < 700 else float("inf"), "bits_per_token": bpt}
    if chars_per_token is not None:
        if not chars_per_token > 0:
            raise ValueError(f"chars_per_token must be > 0, got {chars_per_token}")
        out["bits_per_char"] = bpt / chars_per_token
    return out


# --------------------------------------------------------------------------- greedy decoding


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def greedy_decode(model, task, prompt_ids, n_tokens: int, *, stop_at_eos: bool = True):
    """Greedy continuation of ``prompt_ids`` through ``model.init_state``/``model.forward_chunk``.

    ``prompt_ids``: a 1-D sequence (returns ``list[int]``) or ``[B, P]`` tensor (returns a list
    of lists) of token ids; ``<bos>`` is prepended unless the prompt already starts with it,
    as in training. Only ids the tokenizer knows are predicted (a padded model vocabulary is
    cut), never ``<pad>`` or ``<bos>``. With ``stop_at_eos`` a row ends after its first
    ``<eos>``. Runs under ``torch.inference_mode()``.
    """
    if isinstance(n_tokens, bool) or not isinstance(n_tokens, int) or n_tokens < 0:
        raise ValueError(f"n_tokens must be an int >= 0, got {n_tokens!r}")
    tok = task.tokenizer
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long)
    single = prompt.dim() == 1
    if single:
        prompt = prompt.unsqueeze(0)
    if prompt.dim() != 2:
        raise ValueError(f"prompt_ids must be 1-D or [B, P], got shape {tuple(prompt.shape)}")
    if prompt.shape[1] == 0 or not bool((prompt[:, 0] == tok.bos_id).all()):
        prompt = torch.cat([torch.full((prompt.shape[0], 1), tok.bos_id, dtype=torch.long), prompt], dim=1)
    V = task.vocab_size
    device = _model_device(model)
    out = []
    with torch.inference_mode():
        B = prompt.shape[0]
        state = model.init_state(B)
        logits, state = model.forward_chunk(prompt.to(device), state)
        for _ in range(n_tokens):
            last = logits[:, -1, :V].float()
            last[:, tok.pad_id] = -math.inf
            last[:, tok.bos_id] = -math.inf
            nxt = last.argmax(dim=-1)
            out.append(nxt)
            logits, state = model.forward_chunk(nxt.unsqueeze(1), state)
    gen = torch.stack(out, dim=1).cpu().tolist() if out else [[] for _ in range(prompt.shape[0])]
    if stop_at_eos:
        gen = [row[: row.index(tok.eos_id) + 1] if tok.eos_id in row else row for row in gen]
    return gen[0] if single else gen


def _oneline(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n")


def greedy_samples(model, task, *, generator: torch.Generator, n: int = 2, prompt_len: int = 8,
                   n_tokens: int = 32, split: str = "val") -> list[str]:
    """``n`` log lines ``prompt: ... | greedy: ...``, prompts being the first ``prompt_len``
    tokens of windows drawn from ``split`` with ``generator`` (newlines shown as ``\\n``)."""
    b = task.batch(batch_size=n, min_len=prompt_len, max_len=prompt_len, generator=generator, split=split)
    lines = []
    for i in range(n):
        row = b.inputs[i].cpu()
        row = row[row != task.tokenizer.pad_id]
        cont = greedy_decode(model, task, row, n_tokens)
        lines.append(f"prompt: {_oneline(task.decode(row[1:]))} | greedy: {_oneline(task.decode(cont))}")
    return lines
