import pytest
import torch

from models.config import ModelConfig, param_count
from models.dnc import (DNCModel, content_weights, interface_size, read_memory, strength,
                        write_memory)

V, H, R, N, W = 10, 16, 2, 8, 8


def cfg_(dtype="float32", **kw):
    base = dict(model_type="DNC", vocab_size=V, input_size=12, hidden_size=H, num_heads=R, head_size=W,
                memory_size=N, controller_heads=2, dtype=dtype)
    base.update(kw)
    return ModelConfig(**base)


def gen(seed=0):
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def model_(dtype="float32", seed=0, **kw):
    return DNCModel(cfg_(dtype, **kw), generator=gen(seed))


def tokens(B=3, T=7, seed=1):
    return torch.randint(0, V, (B, T), generator=gen(seed))


@pytest.mark.parametrize("kw", [{}, dict(hidden_size=12, controller_heads=3, head_size=5, memory_size=6, num_heads=3),
                                dict(head_size=0, memory_size=0, controller_heads=1)])
def test_param_count(kw):
    m = model_(**kw)
    assert sum(p.numel() for p in m.parameters()) == param_count(m.cfg)
    assert m.W_iface.shape == (m.H, interface_size(m.R, m.W))
    assert "mem_init" not in m.state_dict()          # fixed memory init is not a parameter nor saved


def test_rejects_lstm_config_and_bad_input():
    with pytest.raises(ValueError, match="DNC"):
        DNCModel(ModelConfig(vocab_size=V, input_size=8, hidden_size=H, num_heads=2), generator=gen())
    m = model_()
    with pytest.raises(ValueError, match="time_chunk"):
        m(tokens(), time_chunk=-1)
    with pytest.raises(ValueError, match="init_state"):
        m.forward_chunk(tokens(B=3), m.init_state(2))


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_chunked_equals_unchunked(chunk):
    m = model_()
    x = tokens(T=7)
    with torch.inference_mode():
        ref, st_ref = m(x)
        out, st = m(x, time_chunk=chunk)
    assert ref.shape == (3, 7, V) and ref.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-6)
    for a, b in zip(st, st_ref):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


def test_state_size_does_not_grow_with_time():
    m = model_()
    st0 = m.init_state(3)
    with torch.inference_mode():
        _, st = m(tokens(T=11), time_chunk=4)
    assert [s.shape for s in st] == [s.shape for s in st0]
    assert st[2].shape == (3, N, W) and st[3].shape == (3, R, W)
    assert all(s.dtype == torch.float32 for s in st)


def test_bf16_runs_and_matches_fp32():
    mb = model_("bfloat16")
    mf = model_("float32")
    with torch.no_grad():                            # fp32 model with exactly the bf16 weights
        for pf, pb in zip(mf.parameters(), mb.parameters()):
            pf.copy_(pb.float())
    x = tokens(T=6)
    with torch.inference_mode():
        lb, st = mb(x, time_chunk=4)
        lf, _ = mf(x)
    assert lb.dtype == torch.bfloat16 and st[2].dtype == torch.float32
    assert torch.isfinite(lb.float()).all()
    err = (lb.float() - lf).abs().max().item()
    assert err < 0.02 + 0.02 * lf.abs().max().item(), err     # bf16 matmuls, fp32 memory math
    # backward through bf16 parameters
    lb2, _ = mb(x)
    lb2.float().logsumexp(-1).mean().backward()
    for name, p in mb.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.bfloat16, name
        assert torch.isfinite(p.grad.float()).all(), name


def test_content_addressing_read_hand_checked():
    mem = torch.eye(N, W).unsqueeze(0) * 3.0         # orthogonal rows (scaled: cosine ignores norm)
    key = torch.zeros(1, 1, W)
    key[0, 0, 5] = 0.5
    w = content_weights(mem, key, torch.tensor([[50.0]]))
    # similarity 1 on row 5, 0 elsewhere: w_5 = e^50 / (e^50 + 7)
    assert w.shape == (1, 1, N)
    assert abs(w[0, 0, 5].item() - 1.0) < 1e-6 and w.sum().item() == pytest.approx(1.0)
    r = read_memory(mem, w)
    torch.testing.assert_close(r[0, 0], mem[0, 5], atol=1e-5, rtol=0)
    # beta = 1: softmax of cosine, exact values
    w1 = content_weights(mem, key, torch.tensor([[1.0]]))
    e = torch.e
    assert w1[0, 0, 5].item() == pytest.approx(e / (e + N - 1), rel=1e-5)
    assert w1[0, 0, 0].item() == pytest.approx(1 / (e + N - 1), rel=1e-5)
    # zero memory rows / zero key: finite, uniform weights
    wz = content_weights(torch.zeros(1, N, W), key, torch.tensor([[5.0]]))
    torch.testing.assert_close(wz, torch.full((1, 1, N), 1.0 / N))
    assert strength(torch.tensor(-100.0)).item() == pytest.approx(1.0)


def test_write_hand_checked():
    mem = torch.arange(N * W, dtype=torch.float32).view(1, N, W)
    w = torch.zeros(1, N)
    w[0, 2] = 1.0
    a = torch.linspace(-1, 1, W).unsqueeze(0)
    new = write_memory(mem, w, torch.ones(1, W), a)                 # full erase + add on slot 2
    torch.testing.assert_close(new[0, 2], a[0])
    torch.testing.assert_close(new[0, [0, 1, 3, 4, 5, 6, 7]], mem[0, [0, 1, 3, 4, 5, 6, 7]])
    half = write_memory(mem, 0.5 * w, torch.full((1, W), 0.5), torch.zeros(1, W))
    torch.testing.assert_close(half[0, 2], mem[0, 2] * 0.75)      # 1 - 0.5 * 0.5


def test_memory_step_write_then_read_same_key():
    # a strong write key followed by a read with the same key returns ~ the written vector
    mem = torch.eye(N, W).unsqueeze(0)
    k = mem[:, 3]
    w_w = content_weights(mem, k.unsqueeze(1), torch.tensor([[200.0]]))[:, 0]
    a = torch.full((1, W), 0.7)
    a[0, 3] = 1.0
    new = write_memory(mem, w_w, torch.ones(1, W), a)
    w_r = content_weights(new, a.unsqueeze(1), torch.tensor([[200.0]]))
    torch.testing.assert_close(read_memory(new, w_r)[0, 0], a[0], atol=1e-4, rtol=0)


def test_gradients_reach_every_parameter():
    m = model_()
    x = tokens(T=5)
    logits, _ = m(x, time_chunk=2)
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, V), x[:, 1:].reshape(-1))
    loss.backward()
    names = {n for n, _ in m.named_parameters()}
    assert {"W_iface", "b_iface", "controller.W_in", "controller.W_out", "controller.h0"} <= names
    for n, p in m.named_parameters():
        assert p.grad is not None, n
        assert torch.isfinite(p.grad).all(), n
        assert p.grad.abs().sum() > 0, n


def test_determinism():
    a, b, c = model_(seed=5), model_(seed=5), model_(seed=6)
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(pa, pb), n
    assert not torch.equal(a.W_iface, c.W_iface)
    torch.testing.assert_close(a.mem_init, c.mem_init, rtol=0, atol=0)   # seed-independent fixed init
    x = tokens()
    with torch.inference_mode():
        assert torch.equal(a(x)[0], b(x)[0])


# ---------------------------------------------------------------- K models in one pass
def _stacked_params(models):
    names = [n for n, _ in models[0].named_parameters()]
    P = {}
    for n in names:
        P[n] = torch.stack([dict(m.named_parameters())[n].detach() for m in models])
    return P


@pytest.mark.parametrize("kw", [{}, dict(hidden_size=12, controller_heads=3, head_size=5, memory_size=6, num_heads=3)])
def test_stacked_equals_separate_models(kw):
    from models import supports_stacked
    K = 3
    base = model_(**kw)
    assert supports_stacked(base)
    # K random parameter sets, each loaded into its own DNCModel via load_state_dict
    sets = [model_(seed=10 + k, **kw).state_dict() for k in range(K)]
    models = []
    for sd in sets:
        m = model_(seed=99, **kw)
        m.load_state_dict(sd)
        models.append(m)
    P = _stacked_params(models)
    assert P["W_iface"].shape[0] == K and "controller.W_in" in P
    x = tokens(B=3, T=7, seed=4)
    chunks = [x[:, :4], x[:, 4:]]
    with torch.inference_mode():
        st = base.init_state_stacked(P, 3)
        outs = []
        for ch in chunks:
            lg, st = base.forward_chunk_stacked(P, ch, st)
            assert lg.shape == (K, 3, ch.shape[1], base.cfg.vocab_size)
            outs.append(lg)
        stacked = torch.cat(outs, dim=2)
        h, c, mem, reads = st
        Nh = base.controller.N
        for k, m in enumerate(models):
            ref, (rh, rc, rmem, rreads) = m(x, time_chunk=4)
            torch.testing.assert_close(stacked[k], ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(h[k * Nh:(k + 1) * Nh], rh, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(c[k * Nh:(k + 1) * Nh], rc, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mem[k * 3:(k + 1) * 3], rmem, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(reads[k * 3:(k + 1) * 3], rreads, atol=1e-5, rtol=1e-5)
    # the models really differ (so the comparison is not vacuous)
    assert (stacked[0] - stacked[1]).abs().max() > 1e-3


def test_stacked_rejects_mismatched_state():
    m = model_()
    P = _stacked_params([m, m])
    with pytest.raises(ValueError, match="init_state_stacked"):
        m.forward_chunk_stacked(P, tokens(B=3), m.init_state_stacked(P, 2))


def test_stacked_bf16_runs_and_matches_separate():
    K = 2
    models = [model_("bfloat16", seed=20 + k) for k in range(K)]
    P = _stacked_params(models)
    x = tokens(B=2, T=6)
    with torch.inference_mode():
        st = models[0].init_state_stacked(P, 2)
        lg1, st = models[0].forward_chunk_stacked(P, x[:, :3], st)
        lg2, st = models[0].forward_chunk_stacked(P, x[:, 3:], st)
        lg = torch.cat([lg1, lg2], dim=2)
        assert lg.dtype == torch.bfloat16 and st[2].dtype == torch.float32
        assert torch.isfinite(lg.float()).all()
        for k, m in enumerate(models):
            ref, _ = m(x, time_chunk=3)
            err = (lg[k].float() - ref.float()).abs().max().item()
            assert err < 0.02 + 0.02 * ref.float().abs().max().item(), err


def test_stacked_batch_loss_matches_batch_loss():
    from tasks import Batch
    from train.evaluate import batch_loss, stacked_batch_loss
    models = [model_(seed=30 + k) for k in range(3)]
    P = _stacked_params(models)
    x = tokens(B=4, T=9, seed=7)
    y = tokens(B=4, T=9, seed=8)
    batch = Batch(inputs=x, targets=y)
    with torch.inference_mode():
        losses = stacked_batch_loss(models[0], P, batch, time_chunk=4, micro_batch_size=3)
        ref = torch.stack([batch_loss(m, batch, time_chunk=4) for m in models])
    assert losses.shape == (3,)
    torch.testing.assert_close(losses, ref, atol=1e-5, rtol=1e-5)
