"""FlashRNN backends (models/lstm_flashrnn.py) against the torch reference, on CPU.

- Always (pure torch): the layout conversion index by index, the whole adapter against a written-out
  emulation of FlashRNN's documented contract (installed as a fake `flashrnn` module), the padded-head
  rules, and the clear errors (flashrnn missing, CUDA missing, head size, dtype).
- With flashrnn importable: its `vanilla` backend against our reference and nn.LSTM; its `triton_fused`
  backend through the Triton interpreter (TRITON_INTERPRET=1, in a subprocess), padded heads and the
  tanh patch included. Skipped without flashrnn (CUDA backends are checked by bench/flashrnn_checks.py).
"""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types

import pytest
import torch

from models import ModelConfig, build_model
from models.lstm_backends import BACKENDS, recurrence, recurrence_torch, resolve_backend
from models.lstm_flashrnn import (
    FLASHRNN_BACKENDS,
    TRITON_HEAD_SIZES,
    flashrnn_head_size,
    from_flashrnn,
    to_flashrnn,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _inputs(T, N, B, D, *, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    xg = torch.randn(T, N, B, 4, D, generator=g) * 0.5
    R = torch.randn(4, N, D, D, generator=g) / D ** 0.5
    b = torch.randn(4, N, D, generator=g) * 0.1
    h = torch.randn(N, B, D, generator=g) * 0.1
    c = torch.randn(N, B, D, generator=g) * 0.1
    return xg.to(dtype), R.to(dtype), b.to(dtype), h, c


def _emulated_flashrnn(Wx, R, b, states, function="lstm", backend="vanilla", dtype="float32", config=None):
    """FlashRNN's contract as documented (../shared/DESIGN.md): Wx [B, T, 4, NH, D], R [4, NH, D_out, D_in]
    (nn.LSTM's W_hh.view(4, 1, H, H)), b [4, NH, D], states [2, B, 1, NH, D] -> ([2, B, T, NH, D], last)."""
    assert function == "lstm"
    h, c = states[0, :, 0], states[1, :, 0]                               # [B, NH, D]
    steps = []
    for t in range(Wx.shape[1]):
        pre = Wx[:, t] + torch.einsum("gnoi,bni->bgno", R, h) + b            # [B, 4, NH, D]
        i, f, z, o = pre.unbind(1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
        h = torch.sigmoid(o) * torch.tanh(c)
        steps.append(torch.stack([h, c]))
    out = torch.stack(steps, 2)
    return out, out[:, :, -1:]


@pytest.fixture
def fake_flashrnn(monkeypatch):
    mod = types.ModuleType("flashrnn")
    mod.flashrnn = _emulated_flashrnn
    monkeypatch.setitem(sys.modules, "flashrnn", mod)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    return mod


def _max_err(a, b):
    return float((a.float() - b.float()).abs().max())


# ------------------------------------------------------------------ pure torch, always run
def test_backend_names_registered_and_auto_never_picks_flashrnn():
    assert set(FLASHRNN_BACKENDS) <= set(BACKENDS)
    for name in FLASHRNN_BACKENDS:
        assert ModelConfig(hidden_size=8, num_heads=2, backend=name).backend == name
    assert resolve_backend("auto", "cpu", torch.float32) == "torch"


def test_layout_conversion_index_by_index():
    T, N, B, D, Dp = 3, 2, 4, 5, 8
    xg, R, b, h, c = _inputs(T, N, B, D)
    Wx, Rf, bf, st = to_flashrnn(xg, R, b, h, c, head_size=Dp, dtype=torch.float32)
    assert Wx.shape == (B, T, 4, N, Dp) and Rf.shape == (4, N, Dp, Dp) and bf.shape == (4, N, Dp)
    assert st.shape == (2, B, 1, N, Dp)
    for t, n, bb, g, d in [(0, 0, 0, 0, 0), (2, 1, 3, 2, 4), (1, 0, 2, 3, 1), (2, 1, 0, 1, 3)]:
        assert Wx[bb, t, g, n, d] == xg[t, n, bb, g, d] + b[g, n, d]
        assert st[0, bb, 0, n, d] == h[n, bb, d] and st[1, bb, 0, n, d] == c[n, bb, d]
    for g, n, i, o in [(0, 0, 1, 3), (3, 1, 4, 0), (2, 1, 2, 2)]:
        assert Rf[g, n, o, i] == R[g, n, i, o]                 # FlashRNN's R is [gate, head, out, in]
    # zero padding everywhere above D, zero bias (it rides in Wx)
    assert not Wx[..., D:].any() and not Rf[..., D:, :].any() and not Rf[..., D:].any()
    assert not st[..., D:].any() and not bf.any()
    # clamp of the folded pre-activations
    Wc, *_ = to_flashrnn(xg * 100, R, b, h, c, head_size=D, dtype=torch.float32, clamp=40.0)
    assert float(Wc.abs().max()) == 40.0
    # output side: state 0 is h; hs [T, N, B, D]; final states in fp32
    out = torch.randn(2, B, T, N, Dp, dtype=torch.bfloat16)
    hs, (hT, cT) = from_flashrnn(out, out[:, :, -1:], head_size=D)
    assert hs.shape == (T, N, B, D) and hs.dtype == torch.bfloat16
    assert hs[1, 1, 2, 3] == out[0, 2, 1, 1, 3]
    assert hT.dtype == cT.dtype == torch.float32 and hT.shape == (N, B, D)
    assert torch.equal(hT, out[0, :, -1, :, :D].permute(1, 0, 2).float())
    assert torch.equal(cT, out[1, :, -1, :, :D].permute(1, 0, 2).float())


def test_adapter_against_emulated_contract(fake_flashrnn):
    for D in (5, 16):
        xg, R, b, h, c = _inputs(7, 3, 4, D, seed=D)
        ref, (hr, cr) = recurrence_torch(xg, R, b, h, c)
        out1, s = recurrence(xg[:3], R, b, h, c, backend="flashrnn_vanilla")     # chunk carry via states
        out2, (ho, co) = recurrence(xg[3:], R, b, *s, backend="flashrnn_vanilla")
        out = torch.cat([out1, out2])
        assert out.shape == ref.shape
        assert max(_max_err(out, ref), _max_err(ho, hr), _max_err(co, cr)) < 1e-5
        # padded heads (what the CUDA backends run) equal the unpadded model; padded units stay exactly 0
        raw, last = _emulated_flashrnn(*to_flashrnn(xg, R, b, h, c, head_size=D + 11, dtype=torch.float32))
        assert not raw[..., D:].any()
        hs, (hp, cp) = from_flashrnn(raw, last, head_size=D)
        assert max(_max_err(hs, ref), _max_err(hp, hr), _max_err(cp, cr)) < 1e-5


def test_padded_head_sizes():
    assert [flashrnn_head_size("flashrnn_triton_fused", d) for d in (5, 16, 20, 50, 100, 128)] == \
        [16, 16, 32, 64, 128, 128]
    assert flashrnn_head_size("flashrnn_cuda_fused", 20) == 32 and flashrnn_head_size("flashrnn_cuda_fused", 64) == 64
    assert flashrnn_head_size("flashrnn_cuda", 20) == 24 and flashrnn_head_size("flashrnn_vanilla", 20) == 20
    with pytest.raises(ValueError, match=r"head size 150.*\(16, 32, 64, 128\)") as e:
        flashrnn_head_size("flashrnn_triton_fused", 150)
    assert "flashrnn_cuda_fused" in str(e.value) and TRITON_HEAD_SIZES == (16, 32, 64, 128)


def test_missing_flashrnn_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "flashrnn", None)          # `import flashrnn` now raises ImportError
    xg, R, b, h, c = _inputs(2, 2, 3, 4)
    for name in FLASHRNN_BACKENDS:
        with pytest.raises(ValueError, match=r"flashrnn.*cannot be imported.*requirements-gpu\.txt.*fused or torch"):
            recurrence(xg, R, b, h, c, backend=name)
    model = build_model(ModelConfig(vocab_size=7, input_size=3, hidden_size=8, num_heads=2,
                                    backend="flashrnn_vanilla"), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="flashrnn_vanilla"):
        model(torch.zeros(2, 3, dtype=torch.long))


def test_cuda_backends_without_cuda_are_a_clear_error(fake_flashrnn):
    xg, R, b, h, c = _inputs(2, 2, 3, 4)
    for name in ("flashrnn_cuda", "flashrnn_cuda_fused", "flashrnn_triton_fused"):
        with pytest.raises(ValueError, match=rf"{name}.*needs CUDA tensors.*got tensors on cpu.*fused or torch"):
            recurrence(xg, R, b, h, c, backend=name)
    with pytest.raises(ValueError, match="float64"):
        recurrence(*_inputs(2, 2, 3, 4, dtype=torch.float64), backend="flashrnn_vanilla")


# ------------------------------------------------------------------ with flashrnn installed
def test_vanilla_backend_matches_reference_and_nn_lstm():
    pytest.importorskip("flashrnn")
    for D, (T, N, B) in {4: (6, 3, 5), 16: (9, 2, 4), 20: (5, 4, 3)}.items():
        xg, R, b, h, c = _inputs(T, N, B, D, seed=D)
        ref, (hr, cr) = recurrence_torch(xg, R, b, h, c)
        out1, s = recurrence(xg[:2], R, b, h, c, backend="flashrnn_vanilla")
        out2, (ho, co) = recurrence(xg[2:], R, b, *s, backend="flashrnn_vanilla")
        assert max(_max_err(torch.cat([out1, out2]), ref), _max_err(ho, hr), _max_err(co, cr)) < 1e-5
    # gradients flow through the layout conversion (BPTT through FlashRNN's fw/bw)
    xs = [t.requires_grad_() for t in _inputs(5, 2, 3, 6)]
    grads = []
    for backend in ("torch", "flashrnn_vanilla"):
        hs, (_, cT) = recurrence(*xs, backend=backend)
        grads.append(torch.autograd.grad(hs.pow(2).sum() + cT.sum(), xs))
    assert max(_max_err(a, b) for a, b in zip(*grads)) < 1e-5
    # the R convention, tied to nn.LSTM directly: our R[g, 0, in, out] = W_hh[g*H + out, in]
    H, I, B, T = 6, 5, 3, 7
    with torch.random.fork_rng(devices=[]):               # its init draws from the global RNG: keep it untouched
        lstm = torch.nn.LSTM(I, H)
    with torch.no_grad():
        for p in lstm.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.4)
        x = torch.randn(T, B, I, generator=torch.Generator().manual_seed(1))
        y, (hn, cn) = lstm(x)
        xg = (x @ lstm.weight_ih_l0.T).view(T, B, 4, 1, H).permute(0, 3, 1, 2, 4)
        R = lstm.weight_hh_l0.view(4, 1, H, H).transpose(-1, -2)
        b = (lstm.bias_ih_l0 + lstm.bias_hh_l0).view(4, 1, H)
        z = torch.zeros(1, B, H)
        hs, (hT, cT) = recurrence(xg, R, b, z, z, backend="flashrnn_vanilla")
    assert max(_max_err(hs[:, 0], y), _max_err(hT, hn), _max_err(cT, cn)) < 1e-5
    # whole model, chunked, and K stacked models folded into the head axis
    cfg = ModelConfig(vocab_size=11, input_size=6, hidden_size=12, num_heads=3)
    mt = build_model(cfg, generator=torch.Generator().manual_seed(1))
    mf = build_model(cfg.replace(backend="flashrnn_vanilla"), generator=torch.Generator().manual_seed(1))
    tok = torch.randint(0, 11, (4, 9), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        a, _ = mt(tok, time_chunk=4)
        bb, _ = mf(tok, time_chunk=4)
        P = {n: torch.stack([p, p * 1.01]) for n, p in mf.named_parameters()}
        s1, _ = mf.forward_chunk_stacked(P, tok, mf.init_state_stacked(P, 4))
        s0, _ = mt.forward_chunk_stacked(P, tok, mt.init_state_stacked(P, 4))
    assert _max_err(a, bb) < 1e-5 and _max_err(s0, s1) < 1e-5


TRITON_SCRIPT = r"""
import sys, importlib, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from flashrnn import flashrnn
from models.lstm_backends import recurrence, recurrence_torch
from models.lstm_flashrnn import to_flashrnn
# c driven to -60 (i, f saturated, z = -1): FlashRNN's own tanh is NaN below -44; ours is patched
T, D = 60, 16
xg = torch.zeros(T, 1, 2, 4, D); xg[:, :, :, 0] = 30; xg[:, :, :, 1] = 30; xg[:, :, :, 2] = -60
R = torch.zeros(4, 1, D, D); b = torch.zeros(4, 1, D); h = torch.zeros(1, 2, D)
fw = importlib.import_module("flashrnn.flashrnn.triton_fused.lstm_fw")
original = fw.triton_tanh
Wx = xg.permute(2, 0, 3, 1, 4).contiguous(); st = torch.zeros(2, 2, 1, 1, D)
unpatched = bool(torch.isnan(flashrnn(Wx, R, b, st, backend="triton_fused", dtype="float32")[0]).any())
r, (hr, cr) = recurrence_torch(xg, R, b, h, h)
o, (ho, co) = recurrence(xg, R, b, h, h, backend="flashrnn_triton_fused")
print("saturated", bool(torch.isfinite(o).all() and torch.isfinite(co).all()), float(cr.min()),
      max(float((r - o).abs().max()), float((cr - co).abs().max())), unpatched, fw.triton_tanh is not original)
g = torch.Generator().manual_seed(0)
worst = 0.0
for D in (16, 20):                      # 20 runs padded to 32
    T, N, B = 5, 2, 3
    xg = torch.randn(T, N, B, 4, D, generator=g) * .5; R = torch.randn(4, N, D, D, generator=g) / D ** .5
    b = torch.randn(4, N, D, generator=g) * .1
    h = torch.randn(N, B, D, generator=g) * .1; c = torch.randn(N, B, D, generator=g) * .1
    r, (hr, cr) = recurrence_torch(xg, R, b, h, c)
    o1, s = recurrence(xg[:2], R, b, h, c, backend="flashrnn_triton_fused")
    o2, (ho, co) = recurrence(xg[2:], R, b, *s, backend="flashrnn_triton_fused")
    o = torch.cat([o1, o2])
    worst = max(worst, float((r - o).abs().max()), float((cr - co).abs().max()), float((hr - ho).abs().max()))
print("recurrence", worst)
raw, _ = flashrnn(*to_flashrnn(xg, R, b, h, c, head_size=32, dtype=torch.float32), backend="triton_fused", dtype="float32")
print("padded", float(raw[..., 20:].abs().max()))
"""


def test_triton_fused_backend_in_the_interpreter():
    for mod in ("flashrnn", "triton", "einops"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", TRITON_SCRIPT.format(root=ROOT)], capture_output=True, text=True,
                         env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    vals = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert float(vals["recurrence"]) < 1e-5
    assert float(vals["padded"]) == 0.0
    finite, cmin, err, unpatched, patched = vals["saturated"].split()
    assert finite == "True" and float(cmin) < -55 and float(err) < 1e-5 and patched == "True"
    assert unpatched == "True"          # the shipped tanh does give NaN there, so the check means something
