"""The cross-entropy kernel of stacked logits (models/logits_ce.py) against the unfused loss.

The kernel runs in the Triton interpreter on CPU tensors (fp32: the interpreter computes bf16 dots
wrongly), in a subprocess so TRITON_INTERPRET is set before triton is imported; it is also compiled
for sm_90 (no GPU needed)."""
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
from models.logits_ce import ce_sum_stacked, fits
from models import ModelConfig, build_model
from tasks import Batch
from tasks.loss import IGNORE_INDEX, masked_ce_sum_stacked
from train.evaluate import stacked_batch_loss
g = torch.Generator().manual_seed(0)
worst = 0.0
# ragged row tiles, V not a power of two and wider than one column block, padded rows (a view),
# unscored rows and whole unscored tiles
for K, B, T, V, Vp, BM, VB in ((3, 5, 4, 11, 16, 16, 0), (2, 7, 3, 100, 128, 8, 0), (1, 9, 2, 300, 320, 16, 64)):
    x = torch.randn(K, T * B, Vp, generator=g) * 3
    tgt = torch.randint(0, V, (B, T), generator=g)
    tgt[:, 0] = IGNORE_INDEX; tgt[1, 1] = IGNORE_INDEX
    s = ce_sum_stacked(x[..., :V], tgt, BM=BM, VB=VB, ignore_index=IGNORE_INDEX)
    r, _ = masked_ce_sum_stacked(x[..., :V].reshape(K, T, B, V).transpose(1, 2), tgt)
    worst = max(worst, float(((s - r).abs() / r.abs()).max()))
print("kernel", worst, s.dtype)
# nothing scored: exactly 0
tgt = torch.full((5, 4), IGNORE_INDEX)
print("none", float(ce_sum_stacked(torch.randn(2, 20, 3), tgt, ignore_index=IGNORE_INDEX).abs().max()))
# the whole stacked loss through the model: fused loss == logits + masked_ce_sum_stacked
cfg = ModelConfig(vocab_size=11, input_size=6, hidden_size=12, num_heads=3, backend="fused")
m = build_model(cfg, generator=torch.Generator().manual_seed(1))
tok = torch.randint(0, 11, (4, 9), generator=g); tg = torch.randint(0, 11, (4, 9), generator=g); tg[:, :2] = IGNORE_INDEX
P = {{n: torch.stack([p, p * 1.01, p * 0.98]) for n, p in m.named_parameters()}}
with torch.inference_mode():
    fused = stacked_batch_loss(m, P, Batch(inputs=tok, targets=tg), time_chunk=4)
    m.loss_chunk_stacked = lambda *a, **k: None             # the unfused path
    ref = stacked_batch_loss(m, P, Batch(inputs=tok, targets=tg), time_chunk=4)
print("model", float((fused - ref).abs().max()), float(ref.abs().max()))
print("fits", fits("cpu"))
"""


def test_logits_ce_matches_unfused_loss():
    env = dict(os.environ, TRITON_INTERPRET="1")
    r = subprocess.run([sys.executable, "-c", SCRIPT.format(root=ROOT)], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    vals = {ln.split()[0]: ln.split()[1:] for ln in r.stdout.strip().splitlines()}
    assert float(vals["kernel"][0]) < 1e-5 and vals["kernel"][1] == "torch.float64"
    assert float(vals["none"][0]) == 0.0
    err, scale = map(float, vals["model"])
    assert scale > 1.0 and err < 1e-5 * scale
    assert vals["fits"] == ["True"]


def test_ce_kernel_compiles_for_sm90():
    """bf16 logits at the paper's vocabulary (100 -> one block of 128)."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from models import _logits_ce_triton as kern
    except Exception as e:  # pragma: no cover - triton layout differs
        pytest.skip(f"no compile API: {e!r}")
    cx = dict(BM=32, VB=128, V_LOOP=-1)
    sig = {"x_ptr": "*bf16", "tgt_ptr": "*i64", "out_ptr": "*fp32",
           **{k: "i32" for k in ("R", "B", "V", "stride_xk", "stride_xr", "tgt_stride_b", "tgt_stride_t",
                                 "ignore_index")}, **{k: "constexpr" for k in cx}}
    try:
        compiled = triton.compile(ASTSource(fn=kern.ce_rows_kernel, signature=sig, constexprs=cx),
                                  target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
    except Exception as e:
        if "ptxas" in repr(e).lower() and "not found" in repr(e).lower():
            pytest.skip(f"no ptxas: {e!r}")
        raise
    assert ".target sm_90" in compiled.asm["ptx"]
