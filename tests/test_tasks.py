import math
import string

import pytest
import torch

from tasks import (
    BOS_ID,
    EOS_ID,
    IGNORE_INDEX,
    PAD_ID,
    SEP_ID,
    TASKS,
    AddTask,
    Batch,
    CharLMTask,
    CharTokenizer,
    CopyTask,
    LossAccumulator,
    NumericTokenizer,
    RepeatCopyTask,
    ReverseTask,
    SortTask,
    build_task,
    get_tokenizer,
    masked_accuracy,
    masked_ce_sum,
    masked_cross_entropy,
    sample_predictions,
)

SYNTHETIC = ["copy", "repeat_copy", "reverse", "sort", "add"]
LM_TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def scored_answer(batch, i):
    t = batch.targets[i]
    return t[t != IGNORE_INDEX].tolist()


def prompt_numbers(task, batch, i):
    """Numbers of the prompt of row i (between BOS and the first non-number token)."""
    tok = task.tokenizer
    row = batch.inputs[i].tolist()
    assert row[0] == BOS_ID
    out = []
    for x in row[1:]:
        if not tok.num_offset <= x < tok.num_offset + tok.max_num:
            break
        out.append(x - tok.num_offset)
    return out


def nums(task, ids):
    return [x - task.tokenizer.num_offset for x in ids]


# --------------------------------------------------------------------------- tokenizers


def test_special_ids():
    assert (PAD_ID, BOS_ID, EOS_ID, SEP_ID) == (0, 1, 2, 3)
    assert IGNORE_INDEX == -100


def test_char_vocab_is_100():
    tok = CharTokenizer()
    assert tok.vocab_size == 100
    assert tok.name == "char"
    ids = tok.encode(tok.decode(range(4, 100)))
    assert ids == list(range(4, 100))


def test_char_round_trip():
    tok = CharTokenizer()
    text = "Hello, World! 0123 ~{}[]\nnext line"
    ids = tok.encode(text)
    assert len(ids) == len(text)
    assert all(4 <= i < 100 for i in ids)
    assert tok.decode(ids) == text
    assert torch.equal(tok.encode_tensor(text), torch.tensor(ids))
    assert tok.encode_tensor(text).dtype == torch.long
    assert tok.encode("") == [] and tok.encode_tensor("").numel() == 0


def test_char_unknown_and_normalisation():
    tok = CharTokenizer()
    assert tok.decode(tok.encode("a\tb")) == "a b"
    assert tok.decode(tok.encode("a\r\nb\rc")) == "a\nb\nc"
    assert tok.decode(tok.encode("x\x0by\x0cz")) == "x?y?z"
    assert tok.decode(tok.encode("café ñ€")) == "caf? ??"
    assert tok.encode("é") == tok.encode("?")
    assert tok.encode_tensor("é€a").tolist() == tok.encode("??a")
    for c in string.printable:
        if c not in "\t\r\x0b\x0c":
            assert tok.decode(tok.encode(c)) == c


def test_char_decode_specials():
    tok = CharTokenizer()
    ids = [BOS_ID] + tok.encode("ab") + [SEP_ID] + tok.encode("c") + [EOS_ID, PAD_ID, PAD_ID]
    assert tok.decode(ids) == "<bos>ab<sep>c<eos>"
    assert tok.decode(torch.tensor(ids)) == "<bos>ab<sep>c<eos>"
    with pytest.raises(ValueError):
        tok.decode([100])
    with pytest.raises(ValueError):
        tok.decode([IGNORE_INDEX])


def test_numeric_tokenizer_layout_and_round_trip():
    tok = NumericTokenizer(15)
    assert tok.number_id(0) == 4 and tok.number_id(14) == 18
    assert tok.plus_id == 19
    assert [tok.repeat_id(k) for k in (1, 2, 3)] == [20, 21, 22]
    assert tok.vocab_size == 23
    ids = [BOS_ID, 4 + 3, 4 + 14, tok.plus_id, 4 + 0, SEP_ID, 4 + 7, tok.repeat_id(2), EOS_ID, PAD_ID]
    text = tok.decode(ids)
    assert text == "<bos> 3 14 + 0 <sep> 7 x2 <eos>"
    assert tok.encode(text) == ids[:-1]
    assert tok.encode([0, 5, 14]) == [4, 9, 18]
    with pytest.raises(ValueError):
        tok.encode([15])
    with pytest.raises(ValueError):
        tok.encode("3 foo")
    with pytest.raises(ValueError):
        tok.decode([tok.vocab_size])
    with pytest.raises(ValueError):
        NumericTokenizer(1)


def test_get_tokenizer():
    assert isinstance(get_tokenizer("char"), CharTokenizer)
    t = get_tokenizer("numeric", max_num=7)
    assert isinstance(t, NumericTokenizer) and t.max_num == 7
    with pytest.raises(ValueError, match="char"):
        get_tokenizer("bpe")


# --------------------------------------------------------------------------- synthetic tasks


def test_registry():
    assert set(TASKS) == {"copy", "repeat_copy", "reverse", "sort", "add", "lm_char", "lm", "penn_tree_bank"}
    assert isinstance(build_task("copy", seq_length=5), CopyTask)
    assert isinstance(build_task("lm_char", text=LM_TEXT, seq_length=16), CharLMTask)
    with pytest.raises(ValueError, match="copy"):
        build_task("nope")


def test_copy_exact_layout():
    task = CopyTask(seq_length=5, max_num=10)
    b = task.batch(batch_size=8, min_len=3, max_len=3, generator=gen(1))
    assert b.inputs.shape == b.targets.shape == (8, 8)  # BOS + 3 + SEP + 3 + EOS = 9 tokens
    for i in range(8):
        x = b.inputs[i, 1:4].tolist()
        assert all(4 <= v < 14 for v in x)
        assert b.inputs[i].tolist() == [BOS_ID, *x, SEP_ID, *x]
        assert b.targets[i].tolist() == [IGNORE_INDEX] * 4 + [*x, EOS_ID]


def test_copy_padding_layout():
    task = CopyTask(seq_length=5, max_num=10)
    b = task.batch(batch_size=64, min_len=1, max_len=4, generator=gen(2))
    lengths = (b.targets != IGNORE_INDEX).sum(1) - 1
    assert b.inputs.shape[1] == 2 * int(lengths.max()) + 2
    for i in range(64):
        L = int(lengths[i])
        x = b.inputs[i, 1 : L + 1].tolist()
        seq = [BOS_ID, *x, SEP_ID, *x, EOS_ID]
        T = b.inputs.shape[1]
        full = seq + [PAD_ID] * (T + 1 - len(seq))
        assert b.inputs[i].tolist() == full[:-1]
        expected_t = [IGNORE_INDEX] * (L + 1) + [*x, EOS_ID] + [IGNORE_INDEX] * (T - 2 * L - 2)
        assert b.targets[i].tolist() == expected_t


def test_reverse_and_sort_answers():
    for cls, fn in ((ReverseTask, lambda x: x[::-1]), (SortTask, sorted)):
        task = cls(seq_length=10, max_num=15)
        b = task.batch(batch_size=64, min_len=1, max_len=10, generator=gen(3))
        for i in range(64):
            x = prompt_numbers(task, b, i)
            ans = scored_answer(b, i)
            assert ans[-1] == EOS_ID
            assert nums(task, ans[:-1]) == fn(x)
            assert b.inputs[i, len(x) + 1] == SEP_ID


def test_reverse_hand_example():
    task = ReverseTask(seq_length=4, max_num=10)
    b = task.batch(batch_size=1, min_len=3, max_len=3, generator=gen(0))
    x = b.inputs[0, 1:4].tolist()
    assert b.targets[0, 4:].tolist() == [x[2], x[1], x[0], EOS_ID]
    assert task.decode(b.targets[0, 4:]) == " ".join(str(v - 4) for v in x[::-1]) + " <eos>"


def test_repeat_copy():
    task = RepeatCopyTask(seq_length=6, max_num=15)
    tok = task.tokenizer
    b = task.batch(batch_size=128, min_len=1, max_len=6, generator=gen(4))
    ks = set()
    for i in range(128):
        x = prompt_numbers(task, b, i)
        L = len(x)
        count_tok = int(b.inputs[i, L + 1])
        k = count_tok - tok.repeat_offset + 1
        assert 1 <= k <= 3
        ks.add(k)
        assert b.inputs[i, L + 2] == SEP_ID
        ans = scored_answer(b, i)
        assert nums(task, ans[:-1]) == x * k and ans[-1] == EOS_ID
        assert (b.targets[i, : L + 2] == IGNORE_INDEX).all()
    assert ks == {1, 2, 3}
    assert "x" in task.decode(b.inputs[0])


def test_add_arithmetic():
    base = 15
    task = AddTask(seq_length=8, max_num=base)
    tok = task.tokenizer
    b = task.batch(batch_size=256, min_len=1, max_len=8, generator=gen(5))
    for i in range(256):
        row = b.inputs[i].tolist()
        plus = row.index(tok.plus_id)
        L = plus - 1
        a_digits = nums(task, row[1:plus])
        b_digits = nums(task, row[plus + 1 : plus + 1 + L])
        assert row[plus + 1 + L] == SEP_ID
        ans = scored_answer(b, i)
        assert ans[-1] == EOS_ID and len(ans) == L + 2
        s_digits = nums(task, ans[:-1])
        assert all(0 <= d < base for d in a_digits + b_digits + s_digits)

        def value(ds):
            return sum(d * base**p for p, d in enumerate(ds))

        assert value(a_digits) + value(b_digits) == value(s_digits)
        # decode/encode round trip of the whole sample
        assert tok.encode(task.decode(b.inputs[i])) == [x for x in row if x != PAD_ID]


def test_add_hand_example():
    task = AddTask(seq_length=4, max_num=10)
    b = task.batch(batch_size=1, min_len=2, max_len=2, generator=gen(0))
    text = task.decode(b.inputs[0])
    # "<bos> a0 a1 + b0 b1 <sep> s0 s1"
    parts = text.split()
    a = int(parts[1]) + 10 * int(parts[2])
    c = int(parts[4]) + 10 * int(parts[5])
    s = a + c
    assert parts[3] == "+" and parts[6] == "<sep>"
    assert task.decode(b.targets[0, 6:]) == f"{s % 10} {s // 10 % 10} {s // 100} <eos>"


@pytest.mark.parametrize("name", SYNTHETIC)
def test_layout_invariants(name):
    task = build_task(name, seq_length=12, max_num=15)
    b = task.batch(batch_size=200, min_len=1, max_len=12, generator=gen(6))
    assert b.inputs.dtype == b.targets.dtype == torch.long
    assert (b.inputs[:, 0] == BOS_ID).all()
    assert (b.inputs >= 0).all() and (b.inputs < task.vocab_size).all()
    scored = b.targets != IGNORE_INDEX
    assert (b.targets[scored] < task.vocab_size).all()
    # exactly one EOS target per row, and it is the last scored one
    assert ((b.targets == EOS_ID).sum(1) == 1).all()
    last = scored.cumsum(1).argmax(1)
    assert (b.targets.gather(1, last[:, None]) == EOS_ID).all()
    # scored positions are contiguous, starting at the SEP input
    first = scored.int().argmax(1)
    assert (b.inputs.gather(1, first[:, None]) == SEP_ID).all()
    assert (scored.sum(1) == last - first + 1).all()
    # the batch is as long as its longest sample
    assert scored[:, -1].any()
    # shifted teacher forcing: inputs[t+1] == targets[t] wherever scored (except the final position)
    inner = scored[:, :-1]
    assert torch.equal(b.inputs[:, 1:][inner], b.targets[:, :-1][inner])


@pytest.mark.parametrize("name", SYNTHETIC)
def test_determinism(name):
    task = build_task(name, seq_length=10)
    b1 = task.train_batch(batch_size=32, generator=gen(7))
    b2 = task.train_batch(batch_size=32, generator=gen(7))
    b3 = task.train_batch(batch_size=32, generator=gen(8))
    assert torch.equal(b1.inputs, b2.inputs) and torch.equal(b1.targets, b2.targets)
    assert b1.inputs.shape != b3.inputs.shape or not torch.equal(b1.inputs, b3.inputs)


def answer_lengths(task, batch):
    """Recover the per-sample length L from the number of scored positions."""
    n = (batch.targets != IGNORE_INDEX).sum(1) - 1  # answer tokens
    if task.name == "add":
        return n - 1
    if task.name == "repeat_copy":
        sep = (batch.inputs == SEP_ID).int().argmax(1)
        return sep - 2
    return n


@pytest.mark.parametrize("name", SYNTHETIC)
def test_length_splits(name):
    task = build_task(name, seq_length=10)
    assert task.train_length_range == (2, 10)
    assert task.val_length_range == (11, 60)
    g = gen(9)
    L = answer_lengths(task, task.train_batch(batch_size=512, generator=g))
    assert int(L.min()) == 2 and int(L.max()) == 10
    L = answer_lengths(task, task.train_batch(batch_size=512, generator=g, max_len=4))
    assert int(L.min()) == 2 and int(L.max()) == 4
    L = answer_lengths(task, task.train_batch(batch_size=64, generator=g, max_len=100))
    assert int(L.max()) <= 10
    L = answer_lengths(task, task.val_batch(batch_size=512, generator=g))
    assert int(L.min()) >= 11 and int(L.max()) <= 60


def test_argument_validation():
    with pytest.raises(ValueError):
        CopyTask(seq_length=1)
    with pytest.raises(ValueError):
        CopyTask(max_num=1)
    task = CopyTask(seq_length=5)
    with pytest.raises(ValueError, match="min_len"):
        task.batch(batch_size=2, min_len=4, max_len=3, generator=gen())
    with pytest.raises(ValueError, match="batch_size"):
        task.batch(batch_size=0, min_len=1, max_len=3, generator=gen())
    with pytest.raises(ValueError, match="generator"):
        task.batch(batch_size=2, min_len=1, max_len=3, generator=None)
    with pytest.raises(ValueError):
        task.train_batch(batch_size=2, generator=gen(), max_len=1)


def test_batch_to():
    b = CopyTask(seq_length=4).train_batch(batch_size=2, generator=gen())
    c = b.to("cpu")
    assert isinstance(c, Batch) and torch.equal(c.inputs, b.inputs)
    assert (b.batch_size, b.seq_len) == tuple(b.inputs.shape)


def test_sample_predictions():
    task = CopyTask(seq_length=4, max_num=10)
    b = task.batch(batch_size=5, min_len=3, max_len=3, generator=gen(10))
    V = task.vocab_size
    logits = torch.nn.functional.one_hot(b.targets.clamp(min=0), V + 4).float()  # padded vocab
    lines = sample_predictions(task, b, logits, n=3)
    assert len(lines) == 3
    x = task.decode(b.inputs[0, 1:4])
    assert lines[0] == f"in: <bos> {x} | target: {x} <eos> | pred: {x} <eos>"


# --------------------------------------------------------------------------- text task


def test_char_lm_layout_and_splits(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(LM_TEXT)
    task = CharLMTask(path=p, seq_length=16, val_fraction=0.25)
    assert task.vocab_size == 100
    tokens = CharTokenizer().encode_tensor(LM_TEXT)
    n_val = int(tokens.numel() * 0.25)
    assert torch.equal(task.split_tokens("train"), tokens[:-n_val])
    assert torch.equal(task.split_tokens("val"), tokens[-n_val:])
    for batch, split in ((task.train_batch(batch_size=8, generator=gen(1)), "train"),
                         (task.val_batch(batch_size=8, generator=gen(1)), "val")):
        assert batch.inputs.shape == (8, 16)
        assert (batch.targets != IGNORE_INDEX).all()
        assert torch.equal(batch.inputs[:, 1:], batch.targets[:, :-1])
        data = task.split_tokens(split).tolist()
        for row_in, row_t in zip(batch.inputs.tolist(), batch.targets.tolist()):
            window = row_in + row_t[-1:]
            assert any(data[s : s + 17] == window for s in range(len(data) - 16))
    b = task.train_batch(batch_size=4, generator=gen(1), max_len=5)
    assert b.inputs.shape == (4, 5)
    b1 = task.train_batch(batch_size=4, generator=gen(2))
    b2 = task.train_batch(batch_size=4, generator=gen(2))
    assert torch.equal(b1.inputs, b2.inputs)


def test_char_lm_variable_lengths():
    task = CharLMTask(text=LM_TEXT, seq_length=16)
    b = task.batch(batch_size=64, min_len=3, max_len=9, generator=gen(3))
    L = (b.targets != IGNORE_INDEX).sum(1)
    assert int(L.min()) >= 3 and int(L.max()) == b.inputs.shape[1] <= 9
    t = torch.arange(b.inputs.shape[1])
    pad = t[None] >= L[:, None]
    assert (b.inputs[pad] == PAD_ID).all() and (b.targets[pad] == IGNORE_INDEX).all()


def test_char_lm_errors(tmp_path):
    missing = tmp_path / "missing.txt"
    with pytest.raises(ValueError, match="missing.txt"):
        CharLMTask(path=missing)
    with pytest.raises(ValueError, match="too short"):
        CharLMTask(text="short text", seq_length=16)
    with pytest.raises(ValueError):
        CharLMTask(text=LM_TEXT, path=missing)
    with pytest.raises(ValueError):
        CharLMTask()
    task = CharLMTask(text=LM_TEXT, seq_length=16)
    with pytest.raises(ValueError, match="split"):
        task.batch(batch_size=2, min_len=2, max_len=4, generator=gen(), split="test")


# --------------------------------------------------------------------------- loss


def test_ce_closed_form_and_ignore():
    V = 5
    a = 2.0
    targets = torch.tensor([[1, 3, IGNORE_INDEX], [IGNORE_INDEX, 0, 4]])
    logits = torch.zeros(2, 3, V)
    for b in range(2):
        for t in range(3):
            if targets[b, t] != IGNORE_INDEX:
                logits[b, t, targets[b, t]] = a
    logits[0, 2] = torch.tensor([1e4, -1e4, 3.0, 0.0, 7.0])  # ignored: must not matter
    logits[1, 0, 2] = float("nan")
    per_pos = math.log(math.exp(a) + V - 1) - a
    s, c = masked_ce_sum(logits, targets)
    assert s.dtype == torch.float32 and s.dim() == 0
    assert c.dtype == torch.int64 and int(c) == 4
    assert s.item() == pytest.approx(4 * per_pos, rel=1e-6)
    assert masked_cross_entropy(logits, targets).item() == pytest.approx(per_pos, rel=1e-6)
    # uniform logits give log V
    assert masked_cross_entropy(torch.zeros(2, 3, V), targets).item() == pytest.approx(math.log(V), rel=1e-6)


def test_ce_matches_reference_and_empty():
    g = gen(11)
    logits = torch.randn(3, 7, 11, generator=g)
    targets = torch.randint(0, 11, (3, 7), generator=g)
    targets[0, :3] = IGNORE_INDEX
    ref = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1), ignore_index=IGNORE_INDEX)
    assert masked_cross_entropy(logits, targets).item() == pytest.approx(ref.item(), rel=1e-6)
    empty = torch.full((3, 7), IGNORE_INDEX)
    assert masked_cross_entropy(logits, empty).item() == 0.0
    assert int(masked_ce_sum(logits, empty)[1]) == 0
    tok, seq = masked_accuracy(logits, empty)
    assert tok.item() == 0.0 and seq.item() == 0.0


def test_ce_bf16_and_modes():
    g = gen(12)
    logits = torch.randn(2, 4, 9, generator=g)
    targets = torch.randint(0, 9, (2, 4), generator=g)
    lb = logits.bfloat16()
    loss = masked_cross_entropy(lb, targets)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(masked_cross_entropy(lb.float(), targets).item(), rel=1e-6)
    with torch.inference_mode():
        s, c = masked_ce_sum(lb, targets)
        assert s.dtype == torch.float32 and int(c) == 8
    w = logits.clone().requires_grad_(True)
    masked_cross_entropy(w, targets).backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()


def test_ce_shape_errors():
    with pytest.raises(ValueError):
        masked_ce_sum(torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError):
        masked_ce_sum(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


def test_accuracy_hand_example():
    V = 4
    targets = torch.tensor(
        [
            [1, 2, IGNORE_INDEX],  # both right -> sequence correct
            [3, 0, 1],  # one wrong -> sequence wrong
            [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],  # nothing scored: not counted
            [IGNORE_INDEX, 2, IGNORE_INDEX],  # right
        ]
    )
    preds = torch.tensor([[1, 2, 0], [3, 1, 1], [0, 0, 0], [1, 2, 3]])
    logits = torch.nn.functional.one_hot(preds, V).float()
    tok, seq = masked_accuracy(logits, targets)
    assert tok.dtype == seq.dtype == torch.float32
    assert tok.item() == pytest.approx(5 / 6)
    assert seq.item() == pytest.approx(2 / 3)


def test_accumulator_matches_one_shot():
    g = gen(13)
    B, T, V = 6, 23, 13
    logits = torch.randn(B, T, V, generator=g) * 3
    targets = torch.randint(0, V, (B, T), generator=g)
    targets[torch.rand(B, T, generator=g) < 0.3] = IGNORE_INDEX
    targets[2] = IGNORE_INDEX
    # make some sequences fully correct
    logits[0].scatter_(1, targets[0].clamp(min=0)[:, None], 100.0)
    logits[4].scatter_(1, targets[4].clamp(min=0)[:, None], 100.0)
    for dtype in (torch.float32, torch.bfloat16):
        lg = logits.to(dtype)
        s, c = masked_ce_sum(lg, targets)
        loss = masked_cross_entropy(lg, targets)
        tok, seq = masked_accuracy(lg, targets)
        assert seq.item() > 0
        for bounds in ([0, 23], [0, 1, 2, 23], [0, 5, 10, 15, 20, 23], list(range(24))):
            acc = LossAccumulator()
            for lo, hi in zip(bounds[:-1], bounds[1:]):
                acc.update(lg[:, lo:hi], targets[:, lo:hi])
            assert torch.equal(acc.loss_sum, s)
            assert torch.equal(acc.count, c)
            assert torch.equal(acc.loss(), loss)
            assert torch.equal(acc.token_accuracy(), tok)
            assert torch.equal(acc.seq_accuracy(), seq)


def test_accumulator_errors():
    acc = LossAccumulator()
    with pytest.raises(ValueError):
        acc.loss()
    acc.update(torch.zeros(2, 3, 4), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="batch size"):
        acc.update(torch.zeros(3, 3, 4), torch.zeros(3, 3, dtype=torch.long))
    acc.reset()
    with pytest.raises(ValueError):
        acc.seq_accuracy()


def test_loss_on_task_batch():
    task = SortTask(seq_length=6)
    b = task.train_batch(batch_size=16, generator=gen(14))
    perfect = torch.nn.functional.one_hot(b.targets.clamp(min=0), task.vocab_size).float() * 50
    tok, seq = masked_accuracy(perfect, b.targets)
    assert tok.item() == 1.0 and seq.item() == 1.0
    assert masked_cross_entropy(perfect, b.targets).item() < 1e-6


def test_scored_from_is_a_checked_promise():
    """`Batch.scored_from` promises no scored target before that step: `first_scored` computes it, a
    wrong promise or one past the sequence is refused with the value to pass, `to` keeps it, and the
    synthetic tasks set it from their CPU targets (the prompt is never scored)."""
    import torch
    from tasks import IGNORE_INDEX
    from tasks.batch import Batch, first_scored
    tgt = torch.full((3, 6), IGNORE_INDEX)
    inp = torch.zeros(3, 6, dtype=torch.long)
    assert first_scored(tgt) == 6
    tgt[2, 4], tgt[0, 5] = 1, 2
    assert first_scored(tgt) == 4
    assert Batch(inp, tgt, scored_from=4).to("cpu").scored_from == 4
    with pytest.raises(ValueError, match="a target at time step 4 is scored; pass scored_from=first_scored"):
        Batch(inp, tgt, scored_from=5)
    with pytest.raises(ValueError, match=r"scored_from must be an int in \[0, 6\]"):
        Batch(inp, tgt, scored_from=7)
    b = CopyTask(seq_length=5, max_num=10).batch(batch_size=16, min_len=2, max_len=5,
                                                 generator=torch.Generator().manual_seed(0))
    assert 0 < b.scored_from == first_scored(b.targets)
