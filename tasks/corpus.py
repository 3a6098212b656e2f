"""Text sources for the language-modelling tasks.

A source yields *documents*; a document is an iterable of text pieces (one string for a
JSONL row, a stream of blocks for a large ``.txt`` file). Sources never hold a whole
corpus in memory: files are read block by block, JSONL line by line, Parquet batch by
batch, and hub datasets row batch by row batch (``datasets`` streaming when asked).

Sources (resolved by :func:`resolve_source` from ``--dataset``):

* the **embedded corpus** (``--dataset`` unset, or ``embedded``): English documentation
  that ships with CPython, assembled at first use and cached (see
  :func:`load_embedded_corpus`);
* a **local path**: a ``.txt``, ``.jsonl`` (a ``text`` field per line) or ``.parquet``
  (a ``text`` column) file, a directory of them, or a directory written by
  ``datasets``' ``save_to_disk``;
* a **hub dataset** through ``datasets.load_dataset`` (``NAME`` or ``NAME:CONFIG``), e.g.
  the paper's OpenWebText shard ``haritzpuerto/the_pile_00_OpenWebText2`` or Penn Treebank
  ``ptb-text-only/ptb_text_only``. Offline and not cached is a ``ValueError`` naming the
  three ways out.

Splits: a source either has explicit train/validation parts (hub ``validation`` split,
local files named ``*valid*``/``*val*``/``*dev*``) or the tokeniser cache derives the
validation split from the documents (see ``tasks.lm_data``).
"""

from __future__ import annotations

import ast
import collections
import hashlib
import json
import math
import os
import re
import sys
import sysconfig
import tokenize
import unicodedata
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

__all__ = [
    "EMBEDDED_NAME",
    "EMBEDDED_VERSION",
    "PTB_HUB_NAME",
    "OWT_HUB_NAME",
    "DATASET_ALIASES",
    "TEXT_EXTENSIONS",
    "default_cache_dir",
    "normalise_text",
    "unigram_entropy_bits",
    "assemble_embedded_documents",
    "load_embedded_corpus",
    "EmbeddedCorpus",
    "Source",
    "resolve_source",
]

EMBEDDED_NAME = "embedded"
EMBEDDED_VERSION = 1
PTB_HUB_NAME = "ptb-text-only/ptb_text_only"
OWT_HUB_NAME = "haritzpuerto/the_pile_00_OpenWebText2"

# Short names accepted by --dataset; values are (hub name, text field or None, join rows into one document).
DATASET_ALIASES: dict[str, tuple[str, str | None, bool]] = {
    "ptb": (PTB_HUB_NAME, "sentence", True),
    "ptb_text_only": (PTB_HUB_NAME, "sentence", True),
    "penn_tree_bank": (PTB_HUB_NAME, "sentence", True),
    "penn_treebank": (PTB_HUB_NAME, "sentence", True),
    PTB_HUB_NAME: (PTB_HUB_NAME, "sentence", True),
    "owt": (OWT_HUB_NAME, "text", False),
    "owt2": (OWT_HUB_NAME, "text", False),
    "openwebtext2": (OWT_HUB_NAME, "text", False),
    OWT_HUB_NAME: (OWT_HUB_NAME, "text", False),
}
TEXT_EXTENSIONS = (".txt", ".jsonl", ".parquet")
VAL_MARKERS = {"valid", "validation", "val", "dev"}
TEST_MARKERS = {"test"}
READ_BLOCK_CHARS = 1 << 20

Document = Iterable[str]


def default_cache_dir(cache_dir: str | os.PathLike | None = None) -> str:
    """``cache_dir``, else ``$ZO_RNN_CACHE``, else ``~/.cache/zo_rnn``."""
    if cache_dir is not None:
        return os.path.abspath(os.path.expanduser(os.fspath(cache_dir)))
    env = os.environ.get("ZO_RNN_CACHE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".cache", "zo_rnn")


def _atomic_write_text(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- the embedded corpus

# Typographic characters mapped to their plain-ASCII spelling before the NFKD fold.
_PUNCT = {
    "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"',
    "\u2013": "-", "\u2014": "--", "\u2015": "--", "\u2212": "-",
    "\u2026": "...", "\u00a0": " ", "\u2009": " ", "\u200b": "",
    "\u00df": "ss", "\u00b0": " degrees",
}
_PUNCT_RE = re.compile("|".join(re.escape(k) for k in _PUNCT))
_BLANKS_RE = re.compile(r"\n{3,}")
_TRAILING_WS_RE = re.compile(r"[ \t]+\n")


def normalise_text(text: str) -> str:
    """Deterministic plain-ASCII form of a document.

    Typographic quotes/dashes/ellipses become ASCII, accents are folded (NFKD without
    combining marks), any other non-ASCII or control character becomes ``?`` (newline
    kept), tabs are expanded, trailing spaces are stripped, runs of blank lines collapse
    to one, and the document is stripped. Every character of the result is in the
    100-symbol char vocabulary.
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _PUNCT_RE.sub(lambda m: _PUNCT[m.group(0)], text)
    text = unicodedata.normalize("NFKD", text)
    text = "".join(c for c in text if not unicodedata.combining(c))
    text = text.expandtabs(8)
    text = "".join(c if (" " <= c <= "~" or c == "\n") else "?" for c in text)
    text = _TRAILING_WS_RE.sub("\n", text + "\n")
    text = _BLANKS_RE.sub("\n\n", text)
    return text.strip()


def unigram_entropy_bits(counts) -> float:
    """Entropy in bits of the distribution given by ``counts`` (a mapping, sequence or tensor)."""
    if hasattr(counts, "values") and callable(counts.values):
        counts = list(counts.values())
    elif hasattr(counts, "tolist"):
        counts = counts.tolist()
    total = float(sum(counts))
    if total <= 0:
        return 0.0
    return -sum(c / total * math.log2(c / total) for c in counts if c > 0)


_STDLIB_SKIP_DIRS = {
    "test", "tests", "idle_test", "idlelib", "lib2to3", "turtledemo", "encodings", "ensurepip",
    "pydoc_data", "site-packages", "dist-packages", "__pycache__", "venv",
}


def _docstrings(tree: ast.AST) -> list[str]:
    """Cleaned docstrings of a module and its classes/functions, in source order."""
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        doc = ast.get_docstring(node, clean=True)
        if doc:
            out.append(doc)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child)

    visit(tree)
    return out


def _stdlib_docstring_documents(stdlib: str) -> Iterator[tuple[str, str]]:
    """One document per stdlib module: its docstrings, read with ``ast`` (nothing is imported)."""
    for root, dirs, files in os.walk(stdlib):
        dirs[:] = sorted(d for d in dirs if d not in _STDLIB_SKIP_DIRS and not d.startswith((".", "config-")))
        for fname in sorted(files):
            if not fname.endswith(".py"):
                continue
            path = os.path.join(root, fname)
            try:
                with tokenize.open(path) as f:
                    tree = ast.parse(f.read())
            except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
                continue
            parts = _docstrings(tree)
            if parts:
                yield os.path.relpath(path, stdlib).replace(os.sep, "/"), "\n\n".join(parts)


def assemble_embedded_documents() -> list[tuple[str, str]]:
    """The embedded corpus, freshly assembled: ``[(name, normalised text), ...]``.

    First the ``pydoc_data.topics`` help topics (the language reference text behind
    ``help('topic')``) in sorted key order, named ``topic:KEY``; then, one per module
    in sorted path order, the docstrings of the standard library's pure-Python modules
    (tests, IDLE, lib2to3, codecs and site-packages excluded), named ``stdlib:PATH``.
    Order and content depend only on the Python installation.
    """
    from pydoc_data import topics

    docs: list[tuple[str, str]] = []
    for key in sorted(topics.topics):
        text = normalise_text(topics.topics[key])
        if text:
            docs.append((f"topic:{key}", text))
    stdlib = sysconfig.get_paths()["stdlib"]
    for rel, raw in _stdlib_docstring_documents(stdlib):
        text = normalise_text(raw)
        if text:
            docs.append((f"stdlib:{rel}", text))
    return docs


def _embedded_identity() -> dict:
    return {
        "embedded": EMBEDDED_VERSION,
        "python": sys.version,
        "stdlib": sysconfig.get_paths()["stdlib"],
    }


@dataclass
class EmbeddedCorpus:
    """The assembled embedded corpus and its statistics.

    ``stats``: ``chars`` (total characters, documents concatenated without separators),
    ``documents``, ``topic_chars``/``docstring_chars`` (the two parts), ``modules``,
    ``unigram_entropy_bits_per_char`` (entropy of the character distribution over all
    documents) and ``sha256`` of the documents.
    """

    documents: list[tuple[str, str]]
    stats: dict
    path: str

    @property
    def identity(self) -> dict:
        return dict(_embedded_identity(), sha256=self.stats["sha256"])


def _embedded_stats(docs: list[tuple[str, str]]) -> dict:
    counts: collections.Counter = collections.Counter()
    h = hashlib.sha256()
    topic_chars = doc_chars = 0
    for name, text in docs:
        counts.update(text)
        h.update(name.encode("utf-8") + b"\0" + text.encode("utf-8") + b"\0")
        if name.startswith("topic:"):
            topic_chars += len(text)
        else:
            doc_chars += len(text)
    return {
        "chars": topic_chars + doc_chars,
        "documents": len(docs),
        "topic_chars": topic_chars,
        "docstring_chars": doc_chars,
        "modules": sum(1 for n, _ in docs if n.startswith("stdlib:")),
        "unigram_entropy_bits_per_char": unigram_entropy_bits(counts),
        "distinct_chars": len(counts),
        "sha256": h.hexdigest(),
        "python": sys.version.split()[0],
    }


def load_embedded_corpus(cache_dir: str | os.PathLike | None = None) -> EmbeddedCorpus:
    """The embedded corpus, assembled on first use and cached as JSON under the cache dir.

    The cache file is keyed by the Python version and stdlib path, so a different
    interpreter assembles its own corpus.
    """
    root = default_cache_dir(cache_dir)
    ident = _embedded_identity()
    key = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:12]
    ver = ".".join(map(str, sys.version_info[:3]))
    path = os.path.join(root, "embedded", f"pydoc-py{ver}-v{EMBEDDED_VERSION}-{key}.json")
    if os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as f:
                blob = json.load(f)
            docs = [tuple(d) for d in blob["documents"]]
            return EmbeddedCorpus(documents=docs, stats=blob["stats"], path=path)
        except (OSError, ValueError, KeyError, TypeError):
            pass  # a damaged cache file is rebuilt below
    docs = assemble_embedded_documents()
    if not docs:
        raise ValueError("the embedded corpus is empty: this Python has neither pydoc_data.topics nor stdlib "
                         "sources; pass --dataset PATH with a local text file")
    stats = _embedded_stats(docs)
    _atomic_write_text(path, json.dumps({"identity": ident, "stats": stats, "documents": docs}))
    return EmbeddedCorpus(documents=docs, stats=stats, path=path)


# --------------------------------------------------------------------------- sources


@dataclass
class Source:
    """Where the text comes from.

    ``identity`` is a JSON-able dict that changes whenever the text may change (it keys
    the token cache). ``splits()`` returns ``[(split, documents_factory)]`` where split is
    ``"train"``/``"val"`` for explicit splits or ``None`` for a corpus whose validation
    split is derived by the cache builder. Factories are called at most once, only when
    the token cache is missing, so hub access happens only then.
    """

    description: str
    identity: dict
    splits: Callable[[], list[tuple[str | None, Callable[[], Iterator[Document]]]]]
    notes: list[str] = field(default_factory=list)


def _read_txt(path: str) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace", newline=None) as f:
        while True:
            block = f.read(READ_BLOCK_CHARS)
            if not block:
                return
            yield block


def _read_jsonl(path: str, text_field: str) -> Iterator[Document]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg}); a .jsonl file needs one JSON "
                                 "object per line") from None
            if not isinstance(row, dict) or text_field not in row:
                keys = sorted(row) if isinstance(row, dict) else type(row).__name__
                raise ValueError(f"{path}:{lineno}: expected an object with a {text_field!r} field, got {keys}")
            text = row[text_field]
            if not isinstance(text, str):
                raise ValueError(f"{path}:{lineno}: field {text_field!r} must be a string, got {type(text).__name__}")
            if text.strip():
                yield (text,)


def _read_parquet(path: str, text_field: str) -> Iterator[Document]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path!r} needs pyarrow (pip install pyarrow), or convert it to .jsonl") from None
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if text_field not in names:
        raise ValueError(f"{path}: no {text_field!r} column; columns are {names}")
    for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
        for text in batch.column(0).to_pylist():
            if isinstance(text, str) and text.strip():
                yield (text,)


def _file_documents(path: str, text_field: str) -> Iterator[Document]:
    """Documents of one local file: a .txt file is one document, read block by block."""
    if path.endswith(".txt"):
        yield _read_txt(path)
    elif path.endswith(".jsonl"):
        yield from _read_jsonl(path, text_field)
    elif path.endswith(".parquet"):
        yield from _read_parquet(path, text_field)
    else:  # pragma: no cover - filtered by the caller
        raise ValueError(f"unsupported file type: {path}")


def _files_documents(paths: list[str], text_field: str) -> Callable[[], Iterator[Document]]:
    def factory() -> Iterator[Document]:
        for p in paths:
            yield from _file_documents(p, text_field)

    return factory


def _split_marker(rel: str) -> str:
    """"val", "test" or "train" from the name tokens of a file (e.g. ``ptb.valid.txt`` -> val)."""
    tokens = set(re.split(r"[^a-z0-9]+", rel.lower()))
    if tokens & VAL_MARKERS:
        return "val"
    if tokens & TEST_MARKERS:
        return "test"
    return "train"


def _file_identity(paths: list[str], root: str) -> list:
    out = []
    for p in paths:
        st = os.stat(p)
        out.append([os.path.relpath(p, root), st.st_size, st.st_mtime_ns])
    return out


def _local_source(path: str, text_field: str | None) -> Source:
    path = os.path.abspath(os.path.expanduser(path))
    field_ = text_field or "text"
    if os.path.isfile(path):
        if not path.endswith(TEXT_EXTENSIONS):
            raise ValueError(f"--dataset {path!r}: unsupported file type; use a .txt, .jsonl (a {field_!r} field "
                             f"per line) or .parquet (a {field_!r} column) file, or a directory of them")
        ident = {"local": _file_identity([path], os.path.dirname(path)), "path": path, "field": field_}
        return Source(description=path, identity=ident, splits=lambda: [(None, _files_documents([path], field_))])
    if not os.path.isdir(path):
        raise ValueError(f"--dataset {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(
        os.path.join(path, "dataset_info.json")
    ):
        return _saved_dataset_source(path, text_field)
    files = []
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(TEXT_EXTENSIONS))
    if not files:
        raise ValueError(f"--dataset {path!r}: the directory holds no .txt, .jsonl or .parquet file")
    marks = {f: _split_marker(os.path.relpath(f, path)) for f in files}
    train = [f for f in files if marks[f] == "train"]
    val = [f for f in files if marks[f] == "val"]
    skipped = [os.path.relpath(f, path) for f in files if marks[f] == "test"]
    notes = [f"ignored test files: {skipped}"] if skipped else []
    ident = {"local": _file_identity(files, path), "path": path, "field": field_}
    if val and train:
        return Source(
            description=f"{path} (train: {len(train)} files, val: {len(val)} files)",
            identity=ident,
            splits=lambda: [("train", _files_documents(train, field_)), ("val", _files_documents(val, field_))],
            notes=notes,
        )
    everything = train + val
    if not everything:
        raise ValueError(f"--dataset {path!r}: only test files found ({skipped}); add a train file")
    return Source(description=f"{path} ({len(everything)} files)", identity=ident,
                  splits=lambda: [(None, _files_documents(everything, field_))], notes=notes)


def _rows_documents(ds, text_field: str | None, join_rows: bool, where: str) -> Callable[[], Iterator[Document]]:
    """Documents from a ``datasets`` Dataset/IterableDataset, read in row batches."""

    def pick_field() -> str:
        cols = list(getattr(ds, "column_names", None) or [])
        feats = getattr(ds, "features", None)
        if text_field is not None:
            if cols and text_field not in cols:
                raise ValueError(f"{where}: no {text_field!r} column; columns are {cols} (choose with text_field=)")
            return text_field
        if "text" in cols or not cols:
            return "text"
        strings = [c for c in cols if feats is not None and getattr(feats.get(c), "dtype", None) in ("string", "large_string")]
        if len(strings) == 1:
            return strings[0]
        raise ValueError(f"{where}: no 'text' column; columns are {cols} (choose with text_field=)")

    def rows() -> Iterator[str]:
        name = pick_field()
        for batch in ds.iter(batch_size=1000):
            if name not in batch:
                raise ValueError(f"{where}: rows have no {name!r} field; fields are {sorted(batch)}")
            for text in batch[name]:
                if isinstance(text, str) and text.strip():
                    yield text

    def factory() -> Iterator[Document]:
        if join_rows:
            yield (t if t.endswith("\n") else t + "\n" for t in rows())
        else:
            for t in rows():
                yield (t,)

    return factory


_VAL_SPLIT_NAMES = ("validation", "valid", "val", "dev")


def _dict_splits(dsd, text_field, join_rows, where):
    names = list(dsd.keys())
    if "train" not in names:
        raise ValueError(f"{where}: no 'train' split (splits: {names})")
    val_name = next((n for n in _VAL_SPLIT_NAMES if n in names), None)
    out = [("train" if val_name else None, _rows_documents(dsd["train"], text_field, join_rows, f"{where}[train]"))]
    if val_name:
        out.append(("val", _rows_documents(dsd[val_name], text_field, join_rows, f"{where}[{val_name}]")))
    return out


def _saved_dataset_source(path: str, text_field: str | None) -> Source:
    meta = []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        meta.extend(os.path.join(root, n) for n in sorted(names) if n.endswith((".json", ".arrow")))
    ident = {"saved": _file_identity(meta, path), "path": path, "field": text_field}

    def splits():
        import datasets

        obj = datasets.load_from_disk(path)
        if isinstance(obj, datasets.DatasetDict):
            return _dict_splits(obj, text_field, False, path)
        return [(None, _rows_documents(obj, text_field, False, path))]

    return Source(description=f"{path} (datasets save_to_disk)", identity=ident, splits=splits)


def _ways_out_dataset(task: str, name: str, cmd_tail: str) -> str:
    return (
        "Three ways out:\n"
        "  1. warm the cache: on a machine with network access and the same HF_HOME and ZO_RNN_CACHE, run\n"
        f"     python -m tasks.prepare_lm --task {task} --dataset {name}{cmd_tail}\n"
        "     (it downloads the dataset and writes the token cache that later runs read offline);\n"
        "  2. give a local copy: --dataset PATH, a .txt/.jsonl/.parquet file, a directory of them (files named\n"
        "     *train*/*valid* become the splits, e.g. ptb.train.txt + ptb.valid.txt) or a directory written by\n"
        "     datasets' save_to_disk;\n"
        "  3. use the embedded corpus (CPython's own documentation, no network): --task lm without --dataset."
    )


def _hub_source(name: str, *, config: str | None, text_field: str | None, join_rows: bool, streaming: bool,
                task: str, cmd_tail: str) -> Source:
    ident = {"hub": name, "config": config, "field": text_field, "join_rows": join_rows}

    def load():
        import datasets

        from .hub import forced_offline, hf_cache_desc, offline_reason, short_cause

        reason = offline_reason()
        shown = name + (f":{config}" if config else "")
        attempts = [{}, {"revision": "refs/convert/parquet"}]  # script datasets: the hub's Parquet export
        err = None
        for extra in attempts:
            try:
                if reason is not None:
                    with forced_offline():
                        return datasets.load_dataset(name, config, streaming=streaming, **extra)
                return datasets.load_dataset(name, config, streaming=streaming, **extra)
            except Exception as e:  # noqa: BLE001 - every failure becomes one clear ValueError
                err = e
                if "script" not in str(e).lower():
                    break
        what = "stream" if streaming else "load"
        if reason is not None:
            extra_note = " (streaming always needs the network)" if streaming else ""
            raise ValueError(
                f"--task {task} needs the dataset '{shown}' from the Hugging Face hub, but it is not in the local "
                f"datasets cache ({hf_cache_desc()}) nor in the token cache, and the hub cannot be used: "
                f"{reason}{extra_note}.\n{_ways_out_dataset(task, shown, cmd_tail)}\n(cause: {short_cause(err)})"
            ) from None
        raise ValueError(
            f"--task {task}: could not {what} the dataset '{shown}' from the Hugging Face hub ({hf_cache_desc()}).\n"
            f"{_ways_out_dataset(task, shown, cmd_tail)}\n(cause: {short_cause(err)})"
        ) from None

    def splits():
        dsd = load()
        return _dict_splits(dsd, text_field, join_rows, name)

    return Source(description=f"hub:{name}" + (f":{config}" if config else ""), identity=ident, splits=splits)


def _looks_like_path(s: str) -> bool:
    return (
        s.startswith((".", "/", "~"))
        or s.endswith(TEXT_EXTENSIONS)
        or s.count("/") > 1
        or os.sep != "/" and os.sep in s
    )


def resolve_source(dataset: str | os.PathLike | None, *, task: str = "lm", streaming: bool = False,
                   text_field: str | None = None, cache_dir: str | os.PathLike | None = None,
                   cmd_tail: str = "") -> Source:
    """The :class:`Source` for ``--dataset``: None/``embedded`` → embedded corpus, an existing path →
    local files, a known alias or ``NAME[:CONFIG]`` → hub dataset. Raises ``ValueError`` for a
    missing path."""
    if dataset is None or (isinstance(dataset, str) and dataset.strip().lower() in (EMBEDDED_NAME, "pydoc")):
        def splits():
            corpus = load_embedded_corpus(cache_dir)
            return [(None, lambda: ((text,) for _, text in corpus.documents))]

        return Source(description="embedded (CPython pydoc topics + stdlib docstrings)",
                      identity=_embedded_identity(), splits=splits)
    dataset = os.fspath(dataset)
    if os.path.exists(os.path.expanduser(dataset)):
        return _local_source(dataset, text_field)
    if _looks_like_path(dataset):
        raise ValueError(f"--dataset {dataset!r} does not exist (expected a .txt/.jsonl/.parquet file, a "
                         "directory of them, or a Hugging Face dataset name such as "
                         f"{OWT_HUB_NAME} or {PTB_HUB_NAME})")
    key = dataset.strip()
    if key in DATASET_ALIASES or key.lower() in DATASET_ALIASES:
        hub, field_, join = DATASET_ALIASES.get(key) or DATASET_ALIASES[key.lower()]
        return _hub_source(hub, config=None, text_field=text_field or field_, join_rows=join,
                           streaming=streaming, task=task, cmd_tail=cmd_tail)
    name, _, config = key.partition(":")
    return _hub_source(name, config=config or None, text_field=text_field, join_rows=False,
                       streaming=streaming, task=task, cmd_tail=cmd_tail)
