"""Counter-based probe noise: a pure function of (seed, parameter id, element index).

Every probe direction z(s) is regenerated on demand from integers, never stored and never drawn
from a global RNG. The same (seed, param_id, index) gives the same value on any device, at any
world size and for any chunking of the element range.

The bit recipe is deliberately simple so that a GPU kernel (zo/kernels.py) reproduces it exactly:

    k0, k1  = stream_key(seed, param_id)                 # host-side, exact Python integers
    lo, hi  = index & 0xFFFFFFFF, index >> 32
    x       = fmix32(lo ^ k0)
    x       = fmix32(x ^ ((hi + k1) & 0xFFFFFFFF))       # 32-bit word per element

- rademacher: +1 if the top bit of x is 0, else -1 (exactly +-1 in any dtype).
- uniform:    u = ((x >> 8) + 0.5) * 2**-24 in (0, 1); z = (2u - 1) * sqrt(3)  (unit variance).
              Every step is exact or a single IEEE rounding, so CPU and GPU agree bit for bit.
- normal:     Box-Muller on u1 from x and u2 from fmix32(x ^ NORMAL_SALT). Transcendentals differ
              by a few ulps between libraries, so CPU and GPU agree to ~1e-6 relative, not bitwise.

fmix32 is the MurmurHash3 finaliser: a bijection on 32-bit words with full avalanche, so distinct
elements of one stream never share a word and nearby seeds give unrelated streams.

Tensor legend: `_N` flat element axis.
"""
from __future__ import annotations

import math
import zlib

import torch

MASK32 = 0xFFFFFFFF
MASK64 = 0xFFFFFFFFFFFFFFFF
FMIX_C1 = 0x85EBCA6B
FMIX_C2 = 0xC2B2AE35
NORMAL_SALT = 0x68E31DA4
DROPOUT_SALT = 1  # salt of the probe-dropout mask stream (see dropout_keep)
DISTRIBUTIONS = ("rademacher", "normal", "uniform")
_CHUNK = 1 << 22  # elements generated per pass; bounds the int64 temporaries to 32 MiB each


# ----------------------------------------------------------------------------------------------
# Host-side integer helpers (exact, pure Python)
# ----------------------------------------------------------------------------------------------
def splitmix64(x: int) -> int:
    """One SplitMix64 output for state x (exact 64-bit arithmetic)."""
    x = (x + 0x9E3779B97F4A7C15) & MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK64
    return x ^ (x >> 31)


def fmix32_int(h: int) -> int:
    h &= MASK32
    h ^= h >> 16
    h = (h * FMIX_C1) & MASK32
    h ^= h >> 13
    h = (h * FMIX_C2) & MASK32
    return h ^ (h >> 16)


def param_id_from_name(name: str) -> int:
    """Stable 32-bit id of a parameter, from its name (independent of registration order)."""
    return zlib.crc32(name.encode("utf-8")) & MASK32


def stream_key(seed: int, param_id: int, salt: int = 0) -> tuple[int, int]:
    """The two 32-bit key words of the stream (seed, param_id[, salt])."""
    if seed < 0 or param_id < 0 or not 0 <= salt < 256:
        raise ValueError(f"seed and param_id must be non-negative and salt in [0, 256); got {seed}, {param_id}, {salt}")
    z = splitmix64(splitmix64(seed & MASK64) ^ splitmix64(((param_id << 8) | salt) & MASK64))
    return z & MASK32, z >> 32


def probe_seed(run_seed: int, step: int, index: int) -> int:
    """Seed of probe `index` at optimiser step `step` of a run (63-bit, never `seed + i`)."""
    z = splitmix64(splitmix64(splitmix64(run_seed & MASK64) ^ (step & MASK64)) ^ (index & MASK64))
    return z >> 1


def noise_word_int(seed: int, param_id: int, index: int, salt: int = 0) -> int:
    """Pure-Python reference of the 32-bit word of one element (used by tests)."""
    k0, k1 = stream_key(seed, param_id, salt)
    x = fmix32_int((index & MASK32) ^ k0)
    return fmix32_int(x ^ (((index >> 32) + k1) & MASK32))


# ----------------------------------------------------------------------------------------------
# Tensor implementation (any torch device; int64 lanes hold uint32 values)
# ----------------------------------------------------------------------------------------------
def _fmix32_(h: torch.Tensor) -> torch.Tensor:
    """In-place fmix32 on an int64 tensor of uint32 values. Products wrap mod 2**64; the mask
    keeps the low 32 bits, which are exact."""
    h.bitwise_xor_(h >> 16)
    h.mul_(FMIX_C1).bitwise_and_(MASK32)
    h.bitwise_xor_(h >> 13)
    h.mul_(FMIX_C2).bitwise_and_(MASK32)
    h.bitwise_xor_(h >> 16)
    return h


def noise_words(seed: int, param_id: int, start: int, count: int, *, device, salt: int = 0) -> torch.Tensor:
    """int64 tensor [count] of the 32-bit words for elements start .. start+count-1."""
    k0, k1 = stream_key(seed, param_id, salt)
    idx_N = torch.arange(start, start + count, dtype=torch.int64, device=device)
    hi_N = idx_N >> 32
    x_N = idx_N.bitwise_and_(MASK32).bitwise_xor_(k0)
    _fmix32_(x_N)
    x_N.bitwise_xor_(hi_N.add_(k1).bitwise_and_(MASK32))
    return _fmix32_(x_N)


def _uniform_open01(x_N: torch.Tensor) -> torch.Tensor:
    return ((x_N >> 8).to(torch.float32) + 0.5) * (2.0 ** -24)


def words_to_noise(x_N: torch.Tensor, distribution: str) -> torch.Tensor:
    """Map 32-bit words to fp32 noise of the named distribution (unit variance)."""
    if distribution == "rademacher":
        return 1.0 - 2.0 * (x_N >> 31).to(torch.float32)
    if distribution == "uniform":
        return (2.0 * _uniform_open01(x_N) - 1.0) * math.sqrt(3.0)
    if distribution == "normal":
        u1 = _uniform_open01(x_N)
        x2 = _fmix32_(x_N.bitwise_xor(NORMAL_SALT))
        u2 = _uniform_open01(x2)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    raise ValueError(f"unknown noise distribution {distribution!r}; choose one of {DISTRIBUTIONS}")


def noise_flat(seed: int, param_id: int, numel: int, *, distribution: str = "rademacher",
               device="cpu", start: int = 0) -> torch.Tensor:
    """fp32 noise for elements [start, start+numel) of stream (seed, param_id)."""
    out = torch.empty(numel, dtype=torch.float32, device=device)
    for off in range(0, numel, _CHUNK):
        n = min(_CHUNK, numel - off)
        out[off:off + n] = words_to_noise(noise_words(seed, param_id, start + off, n, device=device),
                                          distribution)
    return out


def noise_like(seed: int, param_id: int, like: torch.Tensor, *, distribution: str = "rademacher") -> torch.Tensor:
    """fp32 noise with the shape and device of `like` (row-major element order)."""
    return noise_flat(seed, param_id, like.numel(), distribution=distribution, device=like.device).view(like.shape)


def dropout_keep(seed: int, param_id: int, numel: int, rate: float, *, device="cpu", start: int = 0) -> torch.Tensor:
    """bool mask [numel]: True where the probe element is kept under probe dropout `rate`.

    Its own stream (salt DROPOUT_SALT), so the mask is independent of the probe's signs."""
    u_N = _uniform_open01(noise_words(seed, param_id, start, numel, device=device, salt=DROPOUT_SALT))
    return u_N >= rate
