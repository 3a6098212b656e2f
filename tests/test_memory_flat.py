"""Time-chunked inference: peak memory does not grow with the sequence length (DESIGN.md inv. 6)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PROBE = r"""
import resource, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from models import ModelConfig, build_model
from train.evaluate import chunked_accumulator
T, chunk, model_type = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cfg = ModelConfig(model_type=model_type, vocab_size=100, input_size=32, hidden_size=256, num_heads=4 if model_type == "LSTM" else 1,
                  memory_size=16, head_size=16 if model_type == "DNC" else 0)
m = build_model(cfg, generator=torch.Generator().manual_seed(0))
g = torch.Generator().manual_seed(1)
tok = torch.randint(0, 100, (64, T), generator=g)
def status_kib(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1])
try:        # Linux: reset the peak RSS to the current one, so that the setup's own peak cannot mask the pass's
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base, peak = status_kib("VmRSS:"), lambda: status_kib("VmHWM:")
except OSError:
    base, peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode():
    acc = chunked_accumulator(m, tok, tok, time_chunk=chunk)
    float(acc.loss())
print(peak() - base)
"""


def _growth_kib(T: int, chunk: int, model_type: str = "LSTM") -> int:
    code = PROBE.format(root=ROOT)
    out = subprocess.run([sys.executable, "-c", code, str(T), str(chunk), model_type], capture_output=True,
                         text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model_type, long_T", [("LSTM", 2000), ("DNC", 600)])
def test_chunked_forward_memory_is_flat_in_T(model_type, long_T):
    short = _growth_kib(long_T // 10, 16, model_type)
    long = _growth_kib(long_T, 16, model_type)
    unchunked = _growth_kib(long_T, 0, model_type)
    # The unchunked pass holds every step's states and logits: the measurement can see growth ...
    assert unchunked - long > 40 * 1024, (short, long, unchunked)
    # ... and the chunked pass does not grow with T (allow allocator noise of a few MiB).
    assert long - short < 8 * 1024, (short, long, unchunked)
