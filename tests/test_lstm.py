"""Tests of the head-structured LSTM (models/lstm.py, models/lstm_backends.py) and the size presets /
memory checks (models/config.py, models/__init__.py)."""
import time

import pytest
import torch
from torch import nn

import models
from models.config import ModelConfig, param_count, preset
from models.lstm import LSTMModel

V, I = 13, 7


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def make_nn_lstm(I_, H, dtype):
    """nn.LSTM built on the meta device (its init would draw from the global RNG), then materialised."""
    lstm = nn.LSTM(I_, H, batch_first=True, device="meta", dtype=dtype)
    return lstm.to_empty(device="cpu")


def reference_logits(model, tokens, W_ih, W_hh, b_ih, b_hh):
    """Logits of `model`'s embedding / output layer around a torch.nn.LSTM with the given weights."""
    H = W_hh.shape[1]
    lstm = make_nn_lstm(W_ih.shape[1], H, W_ih.dtype)
    with torch.no_grad():
        lstm.weight_ih_l0.copy_(W_ih)
        lstm.weight_hh_l0.copy_(W_hh)
        lstm.bias_ih_l0.copy_(b_ih)
        lstm.bias_hh_l0.copy_(b_hh)
        B = tokens.shape[0]
        x = model.embedding[tokens]
        h0 = model.h0.view(1, 1, H).expand(1, B, H).contiguous()
        c0 = model.c0.view(1, 1, H).expand(1, B, H).contiguous()
        out, (hT, cT) = lstm(x, (h0, c0))
        return out @ model.W_out + model.b_out, hT[0], cT[0]


def tokens_BT(B=3, T=9, seed=0):
    return torch.randint(0, V, (B, T), generator=gen(seed))


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_single_head_matches_nn_lstm(dtype, atol):
    H = 16
    cfg = ModelConfig(vocab_size=V, input_size=I, hidden_size=H, num_heads=1, dtype=str(dtype).split(".")[1])
    model = LSTMModel(cfg, generator=gen(1))
    g = gen(2)
    W_ih = (0.4 * torch.randn(4 * H, I, generator=g, dtype=torch.float64)).to(dtype)
    W_hh = (0.4 * torch.randn(4 * H, H, generator=g, dtype=torch.float64)).to(dtype)
    b_ih = (0.3 * torch.randn(4 * H, generator=g, dtype=torch.float64)).to(dtype)
    b_hh = (0.3 * torch.randn(4 * H, generator=g, dtype=torch.float64)).to(dtype)
    with torch.no_grad():
        model.W_in.copy_(W_ih.T)
        for gate in range(4):
            model.R[gate, 0].copy_(W_hh[gate * H:(gate + 1) * H].T)
        model.b.copy_((b_ih + b_hh).view(4, 1, H))
        model.h0.copy_(0.5 * torch.randn(H, generator=g, dtype=torch.float64).to(dtype))
        model.c0.copy_(0.5 * torch.randn(H, generator=g, dtype=torch.float64).to(dtype))
    tok = tokens_BT()
    with torch.no_grad():
        logits, (h, c) = model(tok)
        ref, hT, cT = reference_logits(model, tok, W_ih, W_hh, b_ih, b_hh)
    assert logits.shape == (3, 9, V) and logits.dtype == dtype
    torch.testing.assert_close(logits, ref, atol=atol, rtol=0)
    torch.testing.assert_close(model.hidden_BH(h), hT, atol=atol, rtol=0)
    torch.testing.assert_close(model.hidden_BH(c), cT, atol=atol, rtol=0)
    # not vacuous: the recurrence matters (dropping it changes the answer)
    ref_no_rec, _, _ = reference_logits(model, tok, W_ih, torch.zeros_like(W_hh), b_ih, b_hh)
    assert (logits - ref_no_rec).abs().max() > 100 * atol


@pytest.mark.parametrize("dtype,atol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_multi_head_equals_block_diagonal_lstm(dtype, atol):
    N, D = 3, 5
    H = N * D
    cfg = ModelConfig(vocab_size=V, input_size=I, hidden_size=H, num_heads=N, dtype=str(dtype).split(".")[1])
    model = LSTMModel(cfg, generator=gen(3))
    with torch.no_grad():
        model.R.mul_(2.0)     # stronger recurrence, so cross-head leakage would show
    assert model.R.shape == (4, N, D, D) and model.b.shape == (4, N, D)
    W_hh = torch.zeros(4 * H, H, dtype=dtype)
    for gate in range(4):
        for n in range(N):
            W_hh[gate * H + n * D: gate * H + (n + 1) * D, n * D:(n + 1) * D] = model.R[gate, n].detach().T
    W_ih = model.W_in.detach().T.contiguous()
    b_ih = model.b.detach().reshape(4 * H)
    tok = tokens_BT(B=4, T=8, seed=1)
    with torch.no_grad():
        logits, _ = model(tok)
        ref, _, _ = reference_logits(model, tok, W_ih, W_hh, b_ih, torch.zeros_like(b_ih))
        # a dense W_hh (heads seeing each other's units) gives a different answer
        dense = W_hh + 0.3 * (W_hh == 0).to(dtype)
        ref_dense, _, _ = reference_logits(model, tok, W_ih, dense, b_ih, torch.zeros_like(b_ih))
    torch.testing.assert_close(logits, ref, atol=atol, rtol=0)
    assert (logits - ref_dense).abs().max() > 100 * atol


def test_heads_only_see_their_own_units():
    """Perturbing head 0's initial state changes only head 0's hidden units at every step."""
    N, D = 4, 3
    cfg = ModelConfig(vocab_size=V, input_size=I, hidden_size=N * D, num_heads=N)
    model = LSTMModel(cfg, generator=gen(4))
    tok = tokens_BT(B=2, T=6, seed=2)
    with torch.no_grad():
        st = model.init_state(2)
        _, (h1, c1) = model(tok, st)
        h0, c0 = model.init_state(2)
        h0[0] += 0.5
        _, (h2, c2) = model(tok, (h0, c0))
    assert not torch.allclose(h1[0], h2[0])
    assert torch.equal(h1[1:], h2[1:]) and torch.equal(c1[1:], c2[1:])


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_forward_equals_unchunked(chunk):
    cfg = ModelConfig(vocab_size=V, input_size=I, hidden_size=12, num_heads=3)
    model = LSTMModel(cfg, generator=gen(5))
    tok = tokens_BT(B=3, T=20, seed=3)
    with torch.inference_mode():
        full, (h, c) = model(tok)
        part, (hc, cc) = model(tok, time_chunk=chunk)
    assert part.shape == full.shape == (3, 20, V)
    torch.testing.assert_close(part, full, atol=1e-6, rtol=0)
    torch.testing.assert_close(hc, h, atol=1e-6, rtol=0)
    torch.testing.assert_close(cc, c, atol=1e-6, rtol=0)


def test_forward_chunk_streams_state():
    cfg = ModelConfig(vocab_size=V, input_size=I, hidden_size=8, num_heads=2)
    model = LSTMModel(cfg, generator=gen(6))
    tok = tokens_BT(B=2, T=10, seed=4)
    with torch.inference_mode():
        full, _ = model(tok)
        st = model.init_state(2)
        outs = []
        for t0 in range(0, 10, 4):
            lg, st = model.forward_chunk(tok[:, t0:t0 + 4], st)
            outs.append(lg)
        # restarting from the initial state at the second chunk gives a different answer
        fresh, _ = model.forward_chunk(tok[:, 4:8], model.init_state(2))
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-6, rtol=0)
    assert not torch.allclose(fresh, full[:, 4:8], atol=1e-4)


PAPER_COUNTS = {"tiny": 150_740, "small": 1_139_700, "medium": 10_627_700, "large": 112_606_100,
                "xlarge": 1_162_045_100}


@pytest.mark.parametrize("name", list(PAPER_COUNTS))
def test_preset_param_counts(name):
    cfg = preset(name)
    assert cfg.vocab_size == 100 and cfg.input_size == 100
    assert param_count(cfg) == PAPER_COUNTS[name]


def test_built_tiny_model_param_count():
    cfg = preset("tiny")
    model = models.build_model(cfg, generator=gen(7))
    assert isinstance(model, LSTMModel)
    assert sum(p.numel() for p in model.parameters()) == param_count(cfg) == 150_740
    names = {n for n, _ in model.named_parameters()}
    assert names == {"embedding", "W_in", "R", "b", "W_out", "b_out", "h0", "c0"}


def test_model_init_is_generator_deterministic():
    cfg = ModelConfig(vocab_size=V, input_size=I, hidden_size=8, num_heads=2)
    before = torch.random.get_rng_state().clone()
    a, b, c = LSTMModel(cfg, generator=gen(9)), LSTMModel(cfg, generator=gen(9)), LSTMModel(cfg, generator=gen(10))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.W_in, c.W_in)


@pytest.mark.parametrize("kw", [dict(hidden_size=250, num_heads=12),
                                dict(hidden_size=240, num_heads=12, head_size=10),
                                dict(hidden_size=240, num_heads=12, head_size=-1),
                                dict(hidden_size=0, num_heads=1), dict(hidden_size=12, num_heads=0),
                                dict(vocab_size=0), dict(input_size=0), dict(hidden_size=-4, num_heads=2),
                                dict(dtype="int8"), dict(model_type="GRU")])
def test_bad_shapes_raise(kw):
    with pytest.raises(ValueError):
        ModelConfig(**kw)


def test_consistent_head_size_accepted():
    cfg = ModelConfig(hidden_size=240, num_heads=12, head_size=20)
    assert cfg.lstm_head_size == 20 and cfg.lstm_heads == 12


def test_unknown_backend_raises():
    # refused when the config is made, before any tensor exists
    with pytest.raises(ValueError, match="backend"):
        ModelConfig(vocab_size=V, input_size=I, hidden_size=8, num_heads=2, backend="flashrnn_missing")
    from models.lstm_backends import recurrence
    x = torch.zeros(1, 2, 1, 4, 4)
    with pytest.raises(ValueError, match="backend"):
        recurrence(x, torch.zeros(4, 2, 4, 4), torch.zeros(4, 2, 4), torch.zeros(2, 1, 4), torch.zeros(2, 1, 4),
                   backend="flashrnn_missing")


def test_bf16_forward_close_to_fp32():
    kw = dict(vocab_size=V, input_size=I, hidden_size=24, num_heads=4)
    m32 = LSTMModel(ModelConfig(**kw), generator=gen(11))
    m16 = LSTMModel(ModelConfig(dtype="bfloat16", **kw), generator=gen(11))
    assert m16.W_in.dtype == torch.bfloat16
    assert torch.equal(m16.W_in, m32.W_in.to(torch.bfloat16))    # same draws, cast
    tok = tokens_BT(B=4, T=12, seed=5)
    with torch.inference_mode():
        l32, _ = m32(tok)
        l16, (h, c) = m16(tok, time_chunk=5)
    assert l16.dtype == torch.bfloat16 and h.dtype == torch.float32 and c.dtype == torch.float32
    assert bool(torch.isfinite(l16).all())
    err = (l16.float() - l32).abs()
    assert float(err.max()) < 0.1
    assert float(err.mean()) < 0.02
    assert float(l32.abs().mean()) > 0.05      # the comparison is not between two near-zero tensors


def test_check_fits_refuses_absurd_size_fast():
    cfg = preset("xxlarge")
    t = time.perf_counter()
    with pytest.raises(ValueError, match="available"):
        models.check_fits(cfg, device="cpu", batch_size=1024, time_chunk=16)
    assert time.perf_counter() - t < 2.0
    # a tiny model fits and the estimate is returned
    need = models.check_fits(preset("tiny"), device="cpu", batch_size=2, time_chunk=4)
    assert isinstance(need, int) and need > 150_740 * 4
