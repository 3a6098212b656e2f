"""The fused LSTM backend (cuBLAS baddbmm + Triton cell, padded heads) against the torch reference.

Runs the Triton kernel through the Triton interpreter on CPU tensors (TRITON_INTERPRET=1), in a
subprocess so the variable is set before triton is imported. Skipped when triton is missing."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = r"""
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from models.lstm_backends import recurrence_torch, resolve_backend
from models.lstm_fused import recurrence_fused, lstm_cell_
from models import ModelConfig, build_model
g = torch.Generator().manual_seed(0)
worst = 0.0
for D in (20, 16, 5):
    T, N, B = 4, 3, 5
    xg = torch.randn(T, N, B, 4, D, generator=g); R = torch.randn(4, N, D, D, generator=g) / D ** .5
    b = torch.randn(4, N, D, generator=g) * .1
    h = torch.randn(N, B, D, generator=g) * .1; c = torch.randn(N, B, D, generator=g) * .1
    r, (hr, cr) = recurrence_torch(xg, R, b, h, c)
    o, (ho, co) = recurrence_fused(xg, R, b, h, c)
    worst = max(worst, float((r - o).abs().max()), float((cr - co).abs().max()), float((hr - ho).abs().max()))
print("recurrence", worst)
# padded units stay exactly zero: gates all 0 and c = 0 there
pre = torch.zeros(2, 3, 4 * 8); pre[..., :5] = 1.0
c = torch.zeros(2, 3, 8); c[..., :5] = 0.3
hout = torch.full((2, 3, 8), 7.0)
lstm_cell_(pre, c, hout)
print("padded", float(hout[..., 5:].abs().max()), float(c[..., 5:].abs().max()))
# large pre-activations never give NaN
pre = torch.full((1, 1, 4 * 8), -1e4); pre[..., 8:16] = 1e4
c = torch.zeros(1, 1, 8); hout = torch.empty(1, 1, 8)
lstm_cell_(pre, c, hout)
print("finite", bool(torch.isfinite(hout).all() and torch.isfinite(c).all()))
# whole model, chunked, stacked: fused vs torch
cfg = ModelConfig(vocab_size=11, input_size=6, hidden_size=12, num_heads=3)
mt = build_model(cfg, generator=torch.Generator().manual_seed(1))
mf = build_model(cfg.replace(backend="fused"), generator=torch.Generator().manual_seed(1))
tok = torch.randint(0, 11, (4, 9), generator=g)
with torch.inference_mode():
    a, _ = mt(tok, time_chunk=4); bb, _ = mf(tok, time_chunk=4)
    P = {{n: torch.stack([p, p * 1.01]) for n, p in mf.named_parameters()}}
    s1, _ = mf.forward_chunk_stacked(P, tok, mf.init_state_stacked(P, 4))
    s0, _ = mt.forward_chunk_stacked(P, tok, mt.init_state_stacked(P, 4))
print("model", float((a - bb).abs().max()), float((s1 - s0).abs().max()))
print("auto_cpu", resolve_backend("auto", "cpu", torch.float32))
"""


def test_fused_backend_matches_torch_reference():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SCRIPT.format(root=ROOT)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    vals = dict(line.split(" ", 1) for line in out.stdout.strip().splitlines())
    assert float(vals["recurrence"]) < 1e-5
    pad_h, pad_c = map(float, vals["padded"].split())
    assert pad_h == 0.0 and pad_c == 0.0
    assert vals["finite"] == "True"
    m, s = map(float, vals["model"].split())
    assert m < 1e-5 and s < 1e-5
    assert vals["auto_cpu"] == "torch"
