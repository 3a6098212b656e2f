"""Language-modelling data: sources, tokenizers, token cache, windows, metrics, offline errors.

The hub is treated as unreachable: HF_HUB_OFFLINE/HF_DATASETS_OFFLINE are set here, every
cache lives under a temp dir, and the offline-error checks run in a subprocess with a fresh
HF_HOME so nothing can be cached.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import pytest
import torch

import tasks.corpus as corpus_mod
import tasks.lm_data as lm_data_mod
from tasks import (
    IGNORE_INDEX,
    TASKS,
    CharTokenizer,
    HFTokenizer,
    LMTask,
    PennTreebankTask,
    build_lm_task,
    build_task,
    greedy_decode,
    lm_metrics,
    load_embedded_corpus,
    sample_predictions,
    unigram_entropy_bits,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog while the cat watches from the warm window sill. "
    "Rivers carry water to the sea, and the sea returns it to the clouds as rain over the hills.\n"
)
DOCS = [f"Document {i}. " + PARAGRAPH * (2 + i % 3) for i in range(40)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def emb_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("zo_rnn_cache"))


@pytest.fixture
def txt_file(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("".join(DOCS))
    return p


@pytest.fixture
def jsonl_file(tmp_path):
    p = tmp_path / "docs.jsonl"
    with open(p, "w") as f:
        for d in DOCS:
            f.write(json.dumps({"id": len(d), "text": d}) + "\n")
    return p


def lm(dataset, tmp_path, **kw):
    kw.setdefault("seq_length", 32)
    return build_lm_task("lm", dataset=None if dataset is None else str(dataset), cache_dir=str(tmp_path / "cache"),
                         **kw)


def all_text(task):
    return "".join(task.decode(task.split_tokens(s).long()) for s in ("train", "val"))


# --------------------------------------------------------------------------- embedded corpus


def test_embedded_corpus_assembles_caches_and_is_prose(emb_cache, monkeypatch):
    c = load_embedded_corpus(emb_cache)
    s = c.stats
    assert s["chars"] > 1_000_000 and s["documents"] > 100
    assert s["topic_chars"] > 100_000 and s["docstring_chars"] > 100_000
    assert 3.5 < s["unigram_entropy_bits_per_char"] < 5.5
    assert os.path.isfile(c.path) and c.path.startswith(emb_cache)
    names = [n for n, _ in c.documents]
    topics = [n for n in names if n.startswith("topic:")]
    assert names[: len(topics)] == sorted(topics)  # topics first, in key order
    vocab = set(CharTokenizer().chars)
    assert all(set(text) <= vocab for _, text in c.documents)  # normalised into the char vocabulary
    assert sum(len(t) for _, t in c.documents) == s["chars"]
    joined = "".join(t for _, t in c.documents)
    counts = {ch: joined.count(ch) for ch in set(joined)}
    assert unigram_entropy_bits(counts) == pytest.approx(s["unigram_entropy_bits_per_char"])
    # second use reads the cache: assembling again would fail
    monkeypatch.setattr(corpus_mod, "assemble_embedded_documents", lambda: pytest.fail("not cached"))
    again = load_embedded_corpus(emb_cache)
    assert again.stats == s and again.documents == c.documents


def test_embedded_default_lm_task(emb_cache, monkeypatch):
    t = build_lm_task("lm", seq_length=64, cache_dir=emb_cache)
    assert isinstance(t, LMTask) and t.name == "lm" and t.vocab_size == 100
    stats = load_embedded_corpus(emb_cache).stats
    d = t.describe()
    assert d["train_tokens"] + d["val_tokens"] == stats["chars"]
    assert 0.05 < d["val_tokens"] / stats["chars"] < 0.2
    assert t.chars_per_token("val") == 1.0 and t.chars_per_token("train") == 1.0
    assert 3.5 < t.unigram_entropy_bits("val") < 5.5
    # tokenised once: a second build opens the same cache without writing
    monkeypatch.setattr(lm_data_mod, "_write_cache", lambda *a, **k: pytest.fail("rebuilt the token cache"))
    t2 = build_lm_task("lm", dataset="embedded", seq_length=16, cache_dir=emb_cache)
    assert t2.cache_path == t.cache_path
    assert torch.equal(t2.split_tokens("val"), t.split_tokens("val"))


def test_embedded_corpus_respects_env_cache(emb_cache, monkeypatch):
    monkeypatch.setenv("ZO_RNN_CACHE", emb_cache)
    assert corpus_mod.default_cache_dir() == emb_cache
    assert load_embedded_corpus().path.startswith(emb_cache)


def test_normalise_text():
    raw = "\u201cCaf\u00e9\u201d \u2014 it\u2019s\tfine\u2026  \r\n\r\n\r\n\r\nnext\u00a0line \u4e2d   \n"
    assert corpus_mod.normalise_text(raw) == '"Cafe" -- it\'s  fine...\n\nnext line ?'  # tab to column 16


# --------------------------------------------------------------------------- windows: layout, masks, shapes


def test_window_layout_and_masks(jsonl_file, tmp_path):
    t = lm(jsonl_file, tmp_path, seq_length=48)
    tok = t.tokenizer
    b = t.train_batch(batch_size=256, generator=gen(3))
    B, T = b.inputs.shape
    assert (B, T) == (256, 49) and b.inputs.dtype == torch.long and b.targets.dtype == torch.long
    assert (b.inputs[:, 0] == tok.bos_id).all()
    assert (b.targets[:, 0] == IGNORE_INDEX).all()  # w0 is the prompt, never scored
    scored = b.targets != IGNORE_INDEX
    n = scored.sum(1)
    assert (n >= 1).all() and (n <= 48).all()
    assert (n < 48).any()  # some windows hit a document end (short jsonl documents)
    rows = torch.arange(B)
    assert (b.targets[rows, n] == tok.eos_id).all()  # the last scored target is <eos>
    assert scored[:, 1:].eq(torch.arange(1, T) <= n[:, None]).all()  # scored exactly at 1..n
    real = b.inputs != tok.pad_id
    assert real.sum(1).eq(n + 1).all()  # <bos> + n tokens, then padding
    pad_pos = ~real
    assert (b.targets[pad_pos] == IGNORE_INDEX).all()
    # teacher forcing: the target at j is the input at j + 1, except the closing <eos>
    shifted = scored[:, :-1] & (b.targets[:, :-1] != tok.eos_id)
    assert torch.equal(b.targets[:, :-1][shifted], b.inputs[:, 1:][shifted])
    assert (b.targets[scored] != tok.bos_id).all() and (b.targets[scored] != tok.pad_id).all()
    # every window is a contiguous slice of one document
    for i in range(8):
        text = t.decode(b.inputs[i, 1 : n[i] + 1])
        assert any(text in d for d in DOCS)


def test_window_hand_computed(tmp_path):
    tok = CharTokenizer()
    p = tmp_path / "a.txt"
    p.write_text("abcdefghij" * 30)
    t = lm(p, tmp_path, seq_length=4)
    b = t.train_batch(batch_size=64, generator=gen(0))
    full = 0
    for i in range(64):
        n = int((b.targets[i] != IGNORE_INDEX).sum())
        w = b.inputs[i, 1 : n + 1].tolist()
        assert tok.decode(w) in "abcdefghij" * 30
        assert b.inputs[i].tolist() == [1] + w + [0] * (4 - n)
        assert b.targets[i].tolist() == [IGNORE_INDEX] + w[1:] + [2] + [IGNORE_INDEX] * (4 - n)
        full += n == 4
    assert full > 50  # only windows starting in the last 3 tokens of the split are cut short


def test_curriculum_max_len(txt_file, tmp_path):
    t = lm(txt_file, tmp_path, seq_length=32)
    for L in (1, 2, 7, 32):
        b = t.train_batch(batch_size=8, generator=gen(1), max_len=L)
        assert b.inputs.shape == (8, L + 1)
    assert t.train_batch(batch_size=8, generator=gen(1), max_len=100).inputs.shape == (8, 33)
    assert t.val_batch(batch_size=5, generator=gen(2)).inputs.shape == (5, 33)
    with pytest.raises(ValueError, match="max_len"):
        t.train_batch(batch_size=8, generator=gen(1), max_len=0)
    with pytest.raises(ValueError, match="generator"):
        t.train_batch(batch_size=8, generator=None)
    # variable lengths through the generic batch() hook
    b = t.batch(batch_size=64, min_len=3, max_len=9, generator=gen(4), split="val")
    n = (b.targets != IGNORE_INDEX).sum(1)
    assert b.inputs.shape == (64, 10) and n.min() >= 3 and n.max() <= 9 and len(set(n.tolist())) > 1


def test_same_seed_same_batches_on_every_rank(jsonl_file, tmp_path):
    rank0 = lm(jsonl_file, tmp_path)
    rank1 = lm(jsonl_file, tmp_path)  # a second process would open the same cache
    assert rank1.cache_path == rank0.cache_path
    g0, g1, g2 = gen(123), gen(123), gen(124)
    for step in range(5):
        a = rank0.train_batch(batch_size=16, generator=g0, max_len=8 + step)
        b = rank1.train_batch(batch_size=16, generator=g1, max_len=8 + step)
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.targets, b.targets)
    c = rank0.train_batch(batch_size=16, generator=g2, max_len=12)
    d = rank1.train_batch(batch_size=16, generator=gen(123), max_len=12)
    assert not torch.equal(c.inputs, d.inputs)
    va = rank0.val_batch(batch_size=16, generator=gen(7))
    vb = rank1.val_batch(batch_size=16, generator=gen(7))
    assert torch.equal(va.inputs, vb.inputs)


def test_sample_predictions_shows_prompt(txt_file, tmp_path):
    t = lm(txt_file, tmp_path, seq_length=16)
    b = t.val_batch(batch_size=2, generator=gen(0))
    logits = torch.zeros(2, 17, t.vocab_size)
    lines = sample_predictions(t, b, logits, n=2)
    assert len(lines) == 2 and all(line.startswith("in: <bos>") for line in lines)
    assert all("<eos>" in line.split("| target:")[1] for line in lines)


# --------------------------------------------------------------------------- local datasets and splits


def test_local_txt(txt_file, tmp_path):
    t = lm(txt_file, tmp_path)
    text = "".join(DOCS)
    d = t.describe()
    assert d["train_tokens"] + d["val_tokens"] == len(text)
    assert d["val_tokens"] > 0 and d["train_tokens"] > d["val_tokens"]
    assert sorted(all_text(t)) == sorted(text)


def test_local_jsonl_documents(jsonl_file, tmp_path):
    t = lm(jsonl_file, tmp_path)
    assert t.describe()["train_tokens"] + t.describe()["val_tokens"] == sum(map(len, DOCS))
    segs = t.split("train").seg_starts.numel() + t.split("val").seg_starts.numel()
    assert segs == len(DOCS)  # short documents: one segment each
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"body": "no text field"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: .*'text'"):
        lm(bad, tmp_path)


def test_local_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    p = tmp_path / "docs.parquet"
    pq.write_table(pa.table({"text": DOCS, "n": list(range(len(DOCS)))}), p, row_group_size=7)
    t = lm(p, tmp_path)
    assert t.describe()["train_tokens"] + t.describe()["val_tokens"] == sum(map(len, DOCS))
    assert sorted(all_text(t)) == sorted("".join(DOCS))
    with pytest.raises(ValueError, match="column"):
        lm(p, tmp_path, text_field="body")


def test_local_directory_with_split_files(tmp_path):
    d = tmp_path / "ptb"
    (d / "sub").mkdir(parents=True)
    train_text = "".join(DOCS[:30])
    (d / "ptb.train.txt").write_text(train_text[: len(train_text) // 2])
    (d / "sub" / "more.jsonl").write_text(json.dumps({"text": train_text[len(train_text) // 2 :]}) + "\n")
    (d / "ptb.valid.txt").write_text("".join(DOCS[30:]))
    (d / "ptb.test.txt").write_text("never used " * 50)
    t = build_lm_task("penn_tree_bank", dataset=str(d), seq_length=32, cache_dir=str(tmp_path / "cache"))
    assert isinstance(t, PennTreebankTask) and t.name == "penn_tree_bank"
    assert t.decode(t.split_tokens("val").long()) == "".join(DOCS[30:])
    assert t.split("train").num_tokens == len(train_text)
    assert "never used" not in all_text(t)


def test_directory_without_split_files_and_seeded_split(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    for i in range(4):
        (d / f"part{i}.jsonl").write_text("".join(json.dumps({"text": x}) + "\n" for x in DOCS[i::4]))
    a = lm(d, tmp_path, split_seed=0)
    b = lm(d, tmp_path, split_seed=0)
    c = lm(d, tmp_path, split_seed=5)
    assert a.cache_path == b.cache_path and a.cache_path != c.cache_path
    assert torch.equal(a.split_tokens("val"), b.split_tokens("val"))
    assert not torch.equal(a.split_tokens("val"), c.split_tokens("val"))


def test_datasets_save_to_disk_directory(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({
        "train": datasets.Dataset.from_dict({"sentence": DOCS[:30]}),
        "validation": datasets.Dataset.from_dict({"sentence": DOCS[30:]}),
    })
    dd.save_to_disk(str(tmp_path / "saved"))
    t = lm(tmp_path / "saved", tmp_path)  # the single string column is the text
    assert t.decode(t.split_tokens("val").long()) == "".join(DOCS[30:])
    assert t.split("train").num_tokens == sum(map(len, DOCS[:30]))


def test_hub_dataset_path_streaming(tmp_path, monkeypatch):
    """The hub path end to end with a stand-in for load_dataset: PTB alias, 'sentence' rows joined
    into one document per split, the validation split, streaming rows, and the retry on the
    hub's Parquet export when a script dataset is refused."""
    datasets = pytest.importorskip("datasets")
    sentences = [d.strip().replace("\n", " ") for d in DOCS]
    calls = []

    def fake_load_dataset(name, config=None, *, streaming=False, **kw):
        calls.append((name, config, streaming, kw))
        if "revision" not in kw:
            raise RuntimeError("Dataset scripts are no longer supported, but found ptb_text_only.py")
        parts = {"train": sentences[:30], "validation": sentences[30:], "test": ["unused"]}
        return datasets.IterableDatasetDict(
            {k: datasets.Dataset.from_dict({"sentence": v}).to_iterable_dataset() for k, v in parts.items()})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    t = build_lm_task("penn_tree_bank", streaming=True, seq_length=16, cache_dir=str(tmp_path / "c"))
    assert calls == [("ptb-text-only/ptb_text_only", None, True, {}),
                     ("ptb-text-only/ptb_text_only", None, True, {"revision": "refs/convert/parquet"})]
    assert t.decode(t.split_tokens("val").long()) == "".join(s + "\n" for s in sentences[30:])
    assert t.split("train").seg_starts.tolist() == [0]  # one document per split, like ptb.train.txt
    # the token cache now answers without the hub
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("hub used again"))
    t2 = build_lm_task("lm", dataset="ptb_text_only", streaming=True, seq_length=16, cache_dir=str(tmp_path / "c"))
    assert t2.cache_path == t.cache_path


def test_max_tokens_caps_splits(txt_file, tmp_path):
    t = lm(txt_file, tmp_path, max_tokens=500)
    # the first 16K-char chunk went to train and was cut at 500 tokens; val came out empty,
    # so the last 10% of train became val
    assert t.split("train").num_tokens + t.split("val").num_tokens == 500
    assert t.split("val").num_tokens == 50
    assert t.decode(t.split_tokens("train").long()) + t.decode(t.split_tokens("val").long()) == "".join(DOCS)[:500]


def test_small_text_still_gets_both_splits(tmp_path):
    p = tmp_path / "small.txt"
    p.write_text(PARAGRAPH * 3)
    t = lm(p, tmp_path, seq_length=16)
    n = len(PARAGRAPH * 3)
    assert t.split("train").num_tokens + t.split("val").num_tokens == n
    assert t.split("val").num_tokens == round(0.1 * n)
    assert t.decode(t.split_tokens("train").long()) + t.decode(t.split_tokens("val").long()) == PARAGRAPH * 3


def test_user_errors(tmp_path, txt_file):
    with pytest.raises(ValueError, match="does not exist"):
        lm(tmp_path / "missing.txt", tmp_path)
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported file type"):
        lm(tmp_path / "x.csv", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no .txt"):
        lm(tmp_path / "empty", tmp_path)
    with pytest.raises(ValueError, match="numeric"):
        lm(txt_file, tmp_path, tokenizer="numeric")
    with pytest.raises(ValueError, match="drop one"):
        lm(txt_file, tmp_path, tokenizer="char", tokenizer_path=str(tmp_path))
    with pytest.raises(ValueError, match="--tokenizer_path"):
        lm(txt_file, tmp_path, tokenizer_path=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="unknown language-modelling task"):
        build_lm_task("copy", seq_length=8)
    with pytest.raises(ValueError, match="seq_length"):
        lm(txt_file, tmp_path, seq_length=5000)
    with pytest.raises(ValueError, match="val_fraction"):
        lm(txt_file, tmp_path, val_fraction=1.5)


def test_prepare_cli(txt_file, tmp_path, capsys):
    from tasks.prepare_lm import main

    assert main(["--dataset", str(txt_file), "--cache_dir", str(tmp_path / "c"), "--seq_length", "16"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train_tokens"] + info["val_tokens"] == len("".join(DOCS)) and info["vocab_size"] == 100
    assert main(["--dataset", str(tmp_path / "missing.txt"), "--cache_dir", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --dataset") and "Traceback" not in err


def test_registry_names():
    assert TASKS["lm"] is LMTask and TASKS["penn_tree_bank"] is PennTreebankTask


def test_build_task_routes_lm(txt_file, tmp_path):
    t = build_task("lm", dataset=str(txt_file), seq_length=8, cache_dir=str(tmp_path / "c"))
    assert isinstance(t, LMTask)


# --------------------------------------------------------------------------- tokenizers


def _train_local_tokenizer(directory, *, specials=True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    extra = ["<pad>", "<bos>", "<eos>"] if specials else []
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=extra + ["<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(DOCS, trainer)
    kw = dict(bos_token="<bos>", eos_token="<eos>", pad_token="<pad>") if specials else {}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", **kw)
    fast.save_pretrained(str(directory))
    return len(fast)


def test_local_tokenizer_through_from_pretrained(txt_file, tmp_path):
    tdir = tmp_path / "tok"
    n = _train_local_tokenizer(tdir)
    t = lm(txt_file, tmp_path, tokenizer_path=str(tdir), seq_length=24)
    tok = t.tokenizer
    assert isinstance(tok, HFTokenizer) and tok.name == "path" and tok.source == str(tdir)
    assert t.vocab_size == tok.vocab_size == n
    hf = tok.hf_tokenizer
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (hf.convert_tokens_to_ids("<bos>"),
                                                   hf.convert_tokens_to_ids("<eos>"),
                                                   hf.convert_tokens_to_ids("<pad>"))
    ids = tok.encode(PARAGRAPH)
    assert tok.decode(ids) == PARAGRAPH and len(ids) < len(PARAGRAPH)
    assert tok.decode([tok.bos_id] + ids[:3] + [tok.eos_id, tok.pad_id]).startswith("<bos>")
    b = t.train_batch(batch_size=32, generator=gen(0))
    assert b.inputs.shape == (32, 25)
    assert (b.inputs[:, 0] == tok.bos_id).all() and (b.inputs < t.vocab_size).all()
    assert (b.targets[:, -1] == tok.eos_id).all()
    assert t.chars_per_token("val") > 1.5  # subword tokens cover several characters
    m = t.metrics(2.0)
    assert m["bits_per_char"] == pytest.approx(m["bits_per_token"] / t.chars_per_token("val"))
    # the cache is keyed by the tokenizer: the char task over the same file is a different cache
    assert lm(txt_file, tmp_path, seq_length=24).cache_path != t.cache_path


def test_local_tokenizer_gets_missing_specials(txt_file, tmp_path):
    tdir = tmp_path / "bare"
    n = _train_local_tokenizer(tdir, specials=False)
    t = lm(txt_file, tmp_path, tokenizer_path=str(tdir))
    tok = t.tokenizer
    assert tok.vocab_size == n + 3
    assert {tok.bos_id, tok.eos_id, tok.pad_id} == {n, n + 1, n + 2}
    # --tokenizer hf with a local dir (a saved GPT-2, say) adds the paper's three specials too
    t2 = lm(txt_file, tmp_path, tokenizer="hf", tokenizer_path=str(tdir))
    assert t2.tokenizer.name == "hf" and t2.vocab_size == n + 3
    assert t2.tokenizer.hf_tokenizer.convert_ids_to_tokens(t2.tokenizer.bos_id) == "<bos>"


OFFLINE_SCRIPT = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    import tasks
    out = {{}}
    for key, name, kw in [("hf", "lm", {{"tokenizer": "hf"}}), ("ptb", "penn_tree_bank", {{}})]:
        try:
            tasks.build_lm_task(name, seq_length=32, **kw)
            out[key] = None
        except ValueError as e:
            out[key] = str(e)
    out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("models", "train", "zo"))
    print(json.dumps(out))
""")


def test_offline_errors_name_the_three_ways_out(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"),
               ZO_RNN_CACHE=str(tmp_path / "zo_cache"), PYTHONWARNINGS="ignore")
    env.pop("HF_HUB_CACHE", None)
    env.pop("HF_DATASETS_CACHE", None)
    r = subprocess.run([sys.executable, "-c", OFFLINE_SCRIPT.format(repo=REPO)], env=env, capture_output=True,
                       text=True, timeout=120, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["modules"] == []  # raised by the builder: no model, trainer or engine was needed
    hf, ptb = out["hf"], out["ptb"]
    assert hf and ptb
    for msg in (hf, ptb):
        assert "HF_HUB_OFFLINE=1" in msg and str(tmp_path / "hf_home") in msg
        assert "Three ways out" in msg and "warm the cache" in msg
    assert "'gpt2'" in hf and "--tokenizer_path DIR" in hf and "--tokenizer char" in hf
    assert "ptb-text-only/ptb_text_only" in ptb and "--dataset PATH" in ptb and "embedded corpus" in ptb
    assert "python -m tasks.prepare_lm --task penn_tree_bank" in ptb


# --------------------------------------------------------------------------- metrics and decoding


def test_lm_metrics():
    m = lm_metrics(math.log(2.0))
    assert m["perplexity"] == pytest.approx(2.0) and m["bits_per_token"] == pytest.approx(1.0)
    assert "bits_per_char" not in m
    m = lm_metrics(math.log(16.0), chars_per_token=4.0)
    assert m["bits_per_token"] == pytest.approx(4.0) and m["bits_per_char"] == pytest.approx(1.0)
    assert lm_metrics(1e6)["perplexity"] == float("inf")
    with pytest.raises(ValueError):
        lm_metrics(1.0, chars_per_token=0.0)


class CountingModel(torch.nn.Module):
    """Predicts (last token + 1), and <eos> after token `stop`; records what it reads."""

    def __init__(self, vocab, stop, eos):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.vocab, self.stop, self.eos = vocab, stop, eos
        self.seen = []

    def init_state(self, batch_size):
        return torch.zeros(batch_size)

    def forward_chunk(self, tokens_BT, state):
        self.seen.append(tokens_BT.clone())
        B, T = tokens_BT.shape
        nxt = torch.where(tokens_BT == self.stop, self.eos, (tokens_BT + 1) % self.vocab)
        logits = torch.nn.functional.one_hot(nxt, self.vocab + 5).float()  # padded model vocabulary
        return logits, state + T


def test_greedy_decode_interface(txt_file, tmp_path):
    t = lm(txt_file, tmp_path)
    tok = t.tokenizer
    model = CountingModel(t.vocab_size, stop=20, eos=tok.eos_id)
    out = greedy_decode(model, t, [10, 11], 20)
    assert model.seen[0].tolist() == [[tok.bos_id, 10, 11]]  # <bos> prepended, prompt in one chunk
    assert out == list(range(12, 21)) + [tok.eos_id]  # stops after <eos>
    assert greedy_decode(model, t, [10], 3) == [11, 12, 13]
    rows = greedy_decode(model, t, torch.tensor([[tok.bos_id, 5], [tok.bos_id, 18]]), 4)
    assert rows == [[6, 7, 8, 9], [19, 20, tok.eos_id]]
    assert greedy_decode(model, t, [10], 0) == []


def test_greedy_samples_with_lstm(txt_file, tmp_path):
    models = pytest.importorskip("models")
    t = lm(txt_file, tmp_path)
    cfg = models.ModelConfig(model_type="LSTM", vocab_size=t.vocab_size, input_size=8, hidden_size=16, num_heads=2)
    model = models.build_model(cfg, generator=gen(0))
    lines = t.greedy_samples(model, generator=gen(1), n=2, prompt_len=6, n_tokens=10)
    assert len(lines) == 2 and all(line.startswith("prompt: ") and " | greedy: " in line for line in lines)
    assert "\n" not in "".join(lines)
    a = greedy_decode(model, t, t.tokenizer.encode("The quick"), 12)
    b = greedy_decode(model, t, t.tokenizer.encode("The quick"), 12)
    assert a == b and all(0 <= i < t.vocab_size and i not in (t.tokenizer.pad_id, t.tokenizer.bos_id) for i in a)
