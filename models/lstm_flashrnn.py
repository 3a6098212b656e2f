"""FlashRNN (NX-AI, `pip install flashrnn`) as recurrence backends of the head-structured LSTM.

    hs_TNBD, (h_NBD, c_NBD) = recurrence_flashrnn(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD,
                                                  backend="flashrnn_triton_fused")

Same contract as lstm_backends.recurrence_torch. Legend: T time, N heads (FlashRNN's NH), B batch,
D head size, Dp the head size the kernel runs (padded), 4 gates in the order i, f, z, o (FlashRNN's too).

Backends (the name after `flashrnn_` is FlashRNN's own backend):
- `flashrnn_vanilla`: pure torch, runs on CPU; the adapter's reference against FlashRNN's contract.
- `flashrnn_cuda`: cuBLAS per step plus a CUDA pointwise kernel; heads padded to a multiple of 8.
- `flashrnn_cuda_fused`: one persistent CUDA kernel; heads padded to a multiple of 16. Its GPU-info helper
  reads cudaDeviceProp fields that CUDA 13 removed, so it is replaced once by one built on
  torch.cuda.get_device_properties.
- `flashrnn_triton_fused`: one Triton kernel; heads padded to the next power of 2 (16 to 128; larger heads
  are refused). Its tanh, (1 - e^-2x) / (1 + e^-2x), is NaN below about -44: for z and, after about 44
  saturated steps, for the cell state c, which no clamp of the inputs can bound. It is replaced once by
  the sign-symmetric form. The input pre-activations x + b are clamped to +-40 as well: sigmoid(40) and
  tanh(40) are 1.0 in fp32, so this changes a result only where |x + b| > 40 and h @ R pulls the sum back
  by more than about 20.
The CUDA backends JIT-compile once per (hidden, batch, heads, dtype), 18 to 50 s each, into
TORCH_EXTENSIONS_DIR (set to <repo>/.cache/torch_extensions when unset).

Layouts. Ours: xg [T, N, B, 4, D] without the bias; R [4, N, D_in, D_out] (pre[g, n] = x[g, n] +
h[n] @ R[g, n] + b[g, n]); b [4, N, D]; h, c [N, B, D]. FlashRNN's: Wx [B, T, 4, N, D]; R [4, N, D_out, D_in]
(as nn.LSTM's W_hh.view(4, 1, H, H); verified against the vanilla backend); b [4, N, D]; states
[2, B, 1, N, D] in, [2, B, T, N, D] out (h, c of every step). The bias rides in Wx (one add while the
layout is copied) and FlashRNN gets a zero bias.

Padded heads: the padding is zero in Wx, R, the bias and the initial state, so every padded unit sees
pre-activation 0 on every gate and keeps c = 0.5*0 + 0.5*tanh(0) = 0 and h = 0.5*tanh(0) = 0 exactly.

Dtypes: FlashRNN computes in the weight dtype (float32, bfloat16 or float16); states between chunks are
carried in it too (bf16 for a bf16 model). hs comes back in that dtype, the final (h, c) in fp32.

flashrnn is imported on first use only; a backend that cannot run here raises a ValueError that says what
is missing and how to fix it. Nothing falls back silently.
"""
from __future__ import annotations

import importlib
import os
import sys

import torch

FLASHRNN_BACKENDS = ("flashrnn_vanilla", "flashrnn_cuda", "flashrnn_cuda_fused", "flashrnn_triton_fused")
TRITON_HEAD_SIZES = (16, 32, 64, 128)
PREACT_CLAMP = 40.0
_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_DONE: set = set()          # one-time patches and notices already applied in this process


def _kind(backend: str) -> str:
    if backend not in FLASHRNN_BACKENDS:
        raise ValueError(f"unknown FlashRNN backend {backend!r}; choose one of {FLASHRNN_BACKENDS}")
    return backend[len("flashrnn_"):]


def availability(backend: str, device) -> tuple[bool, str]:
    """(True, "") when `backend` can run on tensors of `device` here, else (False, what is missing)."""
    kind = _kind(backend)
    device = torch.device(device)
    missing = []
    try:
        importlib.import_module("flashrnn")
    except ImportError as e:
        missing.append(f"the flashrnn package cannot be imported ({e}): pip install -r requirements-gpu.txt")
    if kind != "vanilla" and device.type != "cuda":
        interpreted = kind == "triton_fused" and os.environ.get("TRITON_INTERPRET") == "1"
        if not interpreted:
            gpu = "" if torch.cuda.is_available() else "; no CUDA device is visible"
            missing.append(f"it needs CUDA tensors, got tensors on {device.type}{gpu}: run it on a CUDA device "
                           f"(flashrnn_vanilla runs on CPU)")
    if kind == "triton_fused":
        for mod in ("triton", "einops"):
            try:
                importlib.import_module(mod)
            except ImportError:
                missing.append(f"{mod} is not installed: pip install -r requirements-gpu.txt")
    return (not missing), "; ".join(missing)


def _require(backend: str, device):
    ok, why = availability(backend, device)
    if not ok:
        raise ValueError(f"LSTM backend {backend!r} is not available here: {why}; "
                         f"or use --lstm_backend fused or torch.")
    return importlib.import_module("flashrnn")


def flashrnn_head_size(backend: str, head_size: int) -> int:
    """The head size the backend's kernel runs for our head size (zero padding above `head_size`)."""
    kind = _kind(backend)
    if kind == "cuda":
        return -(-head_size // 8) * 8
    if kind == "cuda_fused":
        return -(-head_size // 16) * 16
    if kind == "triton_fused":
        padded = max(16, 1 << (head_size - 1).bit_length())
        if padded not in TRITON_HEAD_SIZES:
            raise ValueError(f"LSTM backend 'flashrnn_triton_fused' cannot run head size {head_size}: it runs the "
                             f"power-of-2 head sizes {TRITON_HEAD_SIZES} (smaller heads padded up with zeros), and "
                             f"{head_size} would need {padded}. Use --lstm_backend flashrnn_cuda_fused, fused or torch "
                             f"for this model, or more heads.")
        return padded
    return head_size


def to_flashrnn(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, *, head_size: int, dtype: torch.dtype,
                clamp: float | None = None):
    """Our layouts -> FlashRNN's: Wx [B, T, 4, N, Dp] (bias folded in, clamped to +-clamp when given),
    R [4, N, Dp_out, Dp_in], zero bias [4, N, Dp], states [2, B, 1, N, Dp]; zero padding from D to Dp."""
    T, N, B, G, D = xg_TNB4D.shape
    Dp, dev = head_size, xg_TNB4D.device
    assert Dp >= D and R_4NDD.shape == (G, N, D, D) and b_4ND.shape == (G, N, D)
    new = torch.empty if Dp == D else torch.zeros
    Wx = new(B, T, G, N, Dp, dtype=dtype, device=dev)
    Wx[..., :D].copy_(xg_TNB4D.permute(2, 0, 3, 1, 4))
    Wx[..., :D].add_(b_4ND.to(dtype))
    if clamp is not None:
        Wx.clamp_(-clamp, clamp)
    R = new(G, N, Dp, Dp, dtype=dtype, device=dev)
    R[..., :D, :D] = R_4NDD.transpose(-1, -2)
    b = torch.zeros(G, N, Dp, dtype=dtype, device=dev)
    states = new(2, B, 1, N, Dp, dtype=dtype, device=dev)
    states[0, :, 0, :, :D] = h_NBD.permute(1, 0, 2)
    states[1, :, 0, :, :D] = c_NBD.permute(1, 0, 2)
    return Wx, R, b, states


def from_flashrnn(states_2BTNDp, last_2B1NDp, *, head_size: int):
    """FlashRNN's output states -> our hs [T, N, B, D] (a view, in the kernel dtype) and final (h, c)
    [N, B, D] in fp32."""
    D = head_size
    hs_TNBD = states_2BTNDp[0, ..., :D].permute(1, 2, 0, 3)
    last = last_2B1NDp[:, :, 0, :, :D].permute(0, 2, 1, 3).float()
    return hs_TNBD, (last[0].contiguous(), last[1].contiguous())


def _patch_gpu_info() -> None:
    """CUDA 13 removed cudaDeviceProp fields that FlashRNN's compiled gpu_info helper reads: give the
    cuda_fused autotuner the four properties it uses from torch instead (once per process)."""
    if "gpu_info" in _DONE:
        return
    mod = importlib.import_module("flashrnn.flashrnn.flashrnn")   # `flashrnn.flashrnn` is the function

    def get_gpu_info(device_id: int) -> dict:
        if device_id >= torch.cuda.device_count():
            return {}
        p = torch.cuda.get_device_properties(device_id)
        return {"name": p.name, "major": p.major, "minor": p.minor, "totalGlobalMem": p.total_memory,
                "warpSize": getattr(p, "warp_size", 32),
                "maxThreadsPerBlock": getattr(p, "max_threads_per_block", 1024),
                "regsPerMultiprocessor": getattr(p, "regs_per_multiprocessor", 65536),
                "multiProcessorCount": p.multi_processor_count,
                "sharedMemPerBlockOptin": getattr(p, "shared_memory_per_block_optin", p.shared_memory_per_block)}

    assert hasattr(mod, "get_gpu_info"), "flashrnn changed: flashrnn.flashrnn.flashrnn.get_gpu_info is gone"
    mod.get_gpu_info = get_gpu_info
    _DONE.add("gpu_info")


def _patch_triton_tanh() -> None:
    """Replace FlashRNN's Triton tanh, NaN below about -44, by the sign-symmetric form (once, before the
    kernels first compile: Triton resolves the helper from the module's globals at compile time)."""
    if "triton_tanh" in _DONE:
        return
    from models._flashrnn_tanh import triton_tanh
    for name in ("flashrnn.flashrnn.triton_fused.lstm_fw", "flashrnn.flashrnn.triton_fused.lstm_bw"):
        mod = importlib.import_module(name)
        assert hasattr(mod, "triton_tanh"), f"flashrnn changed: {name}.triton_tanh is gone"
        mod.triton_tanh = triton_tanh
    _DONE.add("triton_tanh")


def _extensions_dir(backend: str) -> None:
    """Point TORCH_EXTENSIONS_DIR at the project cache when unset, and say once where the JIT builds go."""
    if "extensions_dir" in _DONE:
        return
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    was_set = "TORCH_EXTENSIONS_DIR" in os.environ
    path = os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(root, ".cache", "torch_extensions"))
    print(f"[lstm backend] {backend}: FlashRNN JIT-compiles its CUDA kernels once per (hidden, batch, heads, "
          f"dtype), 18-50 s each, cached in {path}"
          f"{'' if was_set else ' (TORCH_EXTENSIONS_DIR was unset; set it to keep the cache elsewhere)'}",
          file=sys.stderr, flush=True)
    _DONE.add("extensions_dir")


def recurrence_flashrnn(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, *, backend: str):
    """Same contract as lstm_backends.recurrence_torch, run by one of FlashRNN's backends."""
    kind = _kind(backend)
    fr = _require(backend, R_4NDD.device)
    dtype = R_4NDD.dtype
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"LSTM backend {backend!r} runs float32, bfloat16 or float16 weights, not {dtype}; "
                         f"use --lstm_backend torch for this dtype.")
    D = R_4NDD.shape[-1]
    Dp = flashrnn_head_size(backend, D)
    if kind in ("cuda", "cuda_fused"):
        _extensions_dir(backend)
    if kind == "cuda_fused":
        _patch_gpu_info()
    if kind == "triton_fused":
        _patch_triton_tanh()
    Wx, R, b, states = to_flashrnn(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, head_size=Dp, dtype=dtype,
                                   clamp=PREACT_CLAMP if kind == "triton_fused" else None)
    out, last = fr.flashrnn(Wx, R, b, states, function="lstm", backend=kind, dtype=_DTYPE_NAMES[dtype])
    return from_flashrnn(out, last, head_size=D)
