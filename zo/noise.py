"""Counter-based probe noise: a pure function of (seed, parameter id, element index).

Every probe direction z(s) is regenerated on demand from integers, never stored and never drawn
from a global RNG. The same (seed, param_id, index) gives the same value on any device, at any
world size and for any chunking of the element range.

The bit recipe is deliberately simple so that a GPU kernel (zo/kernels.py) reproduces it exactly.
One 32-bit word per counter j >= 0 of a stream:

    k0, k1  = stream_key(seed, param_id[, salt])         # host-side, exact Python integers
    lo, hi  = j & 0xFFFFFFFF, j >> 32
    x       = fmix32(lo ^ k0)
    word(j) = fmix32(x ^ ((hi + k1) & 0xFFFFFFFF))        # 32-bit word of counter j

Element i of the probe (flat, row-major index) maps to counters as follows:

- rademacher: 32 signs per word. Element i takes bit b = i & 31 of w = word(i >> 5) (salt 0; the
              counter is the word index i >> 5, so its lo/hi split is of i >> 5):
              z = +1 if (w >> b) & 1 == 0, else -1 (exactly +-1 in any dtype).
              Elements 32q .. 32q+31 share the word word(q): one hash per 32 elements.
- uniform:    one word per element, x = word(i) (salt 0);
              u = ((x >> 8) + 0.5) * 2**-24 in (0, 1); z = (2u - 1) * sqrt(3)  (unit variance).
              Every step is exact or a single IEEE rounding, so CPU and GPU agree bit for bit.
- normal:     one word per element, x = word(i) (salt 0); Box-Muller on u1 from x and u2 from
              fmix32(x ^ NORMAL_SALT). Transcendentals differ by a few ulps between libraries, so
              CPU and GPU agree to ~1e-6 relative, not bitwise.
- probe-dropout mask (dropout_keep): one word per element, x = word(i) of the salt-DROPOUT_SALT
              stream; kept where ((x >> 8) + 0.5) * 2**-24 >= rate.

(The rademacher sign word of word index q is the same integer as the uniform/normal word of
element q of the same stream; a run uses one distribution, so the two never meet.)

fmix32 is the MurmurHash3 finaliser: a bijection on 32-bit words with full avalanche, so distinct
counters of one stream never share a word and nearby seeds give unrelated streams. For rademacher
the 32 bits of one word are the 32 signs of neighbouring elements; full avalanche makes them
uncorrelated with each other (tests/test_noise.py checks all 32x32 bit pairs, lags and seeds).

Tensor legend: `_N` flat element axis, `_W` word axis (32 elements per word).
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
                  # (rademacher: _CHUNK >> 5 words per pass, 1 MiB of int64 words)


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


def _splitmix64_np(x):
    """splitmix64 of a numpy uint64 array (wrapping arithmetic: numpy's uint64 ops are mod 2**64)."""
    import numpy as np
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def stream_keys(seeds, param_ids, salt: int = 0):
    """`stream_key` for every (param_id, seed) pair at once: (k0, k1), two numpy uint32 arrays of
    shape [len(param_ids), len(seeds)]. Vectorised (a step's keys for every tensor and probe cost
    microseconds, not a Python loop of hashes); equal to stream_key element for element."""
    import numpy as np
    seeds = [int(s) for s in seeds]
    pids = [int(p) for p in param_ids]
    if any(s < 0 for s in seeds) or any(p < 0 for p in pids) or not 0 <= salt < 256:
        raise ValueError(f"seeds and param ids must be non-negative and salt in [0, 256); got salt {salt}")
    s = _splitmix64_np(np.array([x & MASK64 for x in seeds], dtype=np.uint64))
    p = _splitmix64_np(np.array([((x << 8) | salt) & MASK64 for x in pids], dtype=np.uint64))
    z = _splitmix64_np(p[:, None] ^ s[None, :])
    return (z & np.uint64(MASK32)).astype(np.uint32), (z >> np.uint64(32)).astype(np.uint32)


def probe_seed(run_seed: int, step: int, index: int) -> int:
    """Seed of probe `index` at optimiser step `step` of a run (63-bit, never `seed + i`)."""
    z = splitmix64(splitmix64(splitmix64(run_seed & MASK64) ^ (step & MASK64)) ^ (index & MASK64))
    return z >> 1


def noise_word_int(seed: int, param_id: int, index: int, salt: int = 0) -> int:
    """Pure-Python reference of the 32-bit word of one element (used by tests)."""
    k0, k1 = stream_key(seed, param_id, salt)
    x = fmix32_int((index & MASK32) ^ k0)
    return fmix32_int(x ^ (((index >> 32) + k1) & MASK32))


def rademacher_int(seed: int, param_id: int, index: int) -> int:
    """Pure-Python reference of the rademacher sign (+1 or -1) of element `index` (used by tests):
    bit (index & 31) of word(index >> 5)."""
    return -1 if (noise_word_int(seed, param_id, index >> 5) >> (index & 31)) & 1 else 1


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


def _words(k0: int, k1: int, start: int, count: int, device) -> torch.Tensor:
    """int64 tensor [count] of word(j) for counters j = start .. start+count-1 under key (k0, k1)."""
    idx_N = torch.arange(start, start + count, dtype=torch.int64, device=device)
    hi_N = idx_N >> 32
    x_N = idx_N.bitwise_and_(MASK32).bitwise_xor_(k0)
    _fmix32_(x_N)
    x_N.bitwise_xor_(hi_N.add_(k1).bitwise_and_(MASK32))
    return _fmix32_(x_N)


def noise_words(seed: int, param_id: int, start: int, count: int, *, device, salt: int = 0) -> torch.Tensor:
    """int64 tensor [count] of the 32-bit words word(j) for counters j = start .. start+count-1.

    For uniform / normal / the dropout mask the counter is the element index; for rademacher it is
    the word index (element >> 5), see rademacher_flat."""
    k0, k1 = stream_key(seed, param_id, salt)
    return _words(k0, k1, start, count, device)


def _uniform_open01(x_N: torch.Tensor) -> torch.Tensor:
    return ((x_N >> 8).to(torch.float32) + 0.5) * (2.0 ** -24)


def words_to_noise(x_N: torch.Tensor, distribution: str) -> torch.Tensor:
    """Map per-element 32-bit words to fp32 noise of the named distribution (unit variance).

    uniform and normal only: rademacher packs 32 elements per word (see rademacher_flat and
    signs_from_words)."""
    if distribution == "uniform":
        return (2.0 * _uniform_open01(x_N) - 1.0) * math.sqrt(3.0)
    if distribution == "normal":
        u1 = _uniform_open01(x_N)
        x2 = _fmix32_(x_N.bitwise_xor(NORMAL_SALT))
        u2 = _uniform_open01(x2)
        return torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    if distribution == "rademacher":
        raise ValueError("rademacher noise packs 32 signs per word; use noise_flat / rademacher_flat "
                         "(or signs_from_words on word-index words), not words_to_noise")
    raise ValueError(f"unknown noise distribution {distribution!r}; choose one of {DISTRIBUTIONS}")


_ONE_BITS = 0x3F800000   # fp32 1.0; with the sign bit set it is -1.0
_SIGN_BIT = -(1 << 31)   # 0x80000000 as an int32


def _signs_into_(dst_W32: torch.Tensor, x_W: torch.Tensor) -> None:
    """dst_W32 (int32 [W, 32], the bits of fp32 output) <- the 32 signs of each word of x_W.

    Column b gets bit b of the word, moved to the sign bit by a left shift of 31 - b, then or-ed
    with the bits of 1.0: exactly +1.0 or -1.0. Integer ops only, so every device agrees bit for bit.
    x_W (int64 uint32 values) is consumed."""
    x32_W = x_W.sub_((x_W >> 31) << 32).to(torch.int32)  # same 32 bits, as int32 (exact)
    shifts = torch.arange(31, -1, -1, dtype=torch.int32, device=dst_W32.device)
    torch.bitwise_left_shift(x32_W[:, None], shifts[None, :], out=dst_W32)
    dst_W32.bitwise_and_(_SIGN_BIT).bitwise_or_(_ONE_BITS)


def signs_from_words(x_W: torch.Tensor) -> torch.Tensor:
    """fp32 [32 * W] rademacher signs of words x_W (int64 uint32 values): element 32q + b is
    +1 if bit b of x_W[q] is 0, else -1."""
    out = torch.empty(x_W.numel() * 32, dtype=torch.float32, device=x_W.device)
    if x_W.numel():
        _signs_into_(out.view(torch.int32).view(-1, 32), x_W.clone())
    return out


def rademacher_flat(seed: int, param_id: int, numel: int, *, device="cpu", start: int = 0) -> torch.Tensor:
    """fp32 rademacher signs of elements [start, start+numel) of stream (seed, param_id).

    Hashes the words of the covered word range [start >> 5, (start+numel-1) >> 5] only; the
    word-aligned middle is expanded straight into the output, a partial first / last word through
    a 32-element temporary. Chunked by _CHUNK elements."""
    if start < 0 or numel < 0:
        raise ValueError(f"start and numel must be >= 0; got {start}, {numel}")
    k0, k1 = stream_key(seed, param_id)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    o32 = out.view(torch.int32)
    end = start + numel
    head_end = min(end, (start + 31) & ~31)  # first word boundary after start (or end)
    if head_end > start:  # elements of the partial first word
        tmp = torch.empty((1, 32), dtype=torch.int32, device=device)
        _signs_into_(tmp, _words(k0, k1, start >> 5, 1, device))
        b = start & 31
        o32[:head_end - start] = tmp[0, b:b + head_end - start]
    q0, q1 = head_end >> 5, end >> 5  # whole words [q0, q1) (head_end is aligned when < end)
    step = max(1, _CHUNK >> 5)
    for q in range(q0, q1, step):
        cnt = min(step, q1 - q)
        off = (q << 5) - start
        _signs_into_(o32[off:off + (cnt << 5)].view(cnt, 32), _words(k0, k1, q, cnt, device))
    tail_start = max(head_end, q1 << 5)
    if end > tail_start:  # elements of the partial last word
        tmp = torch.empty((1, 32), dtype=torch.int32, device=device)
        _signs_into_(tmp, _words(k0, k1, q1, 1, device))
        o32[tail_start - start:] = tmp[0, :end - tail_start]
    return out


def noise_flat(seed: int, param_id: int, numel: int, *, distribution: str = "rademacher",
               device="cpu", start: int = 0) -> torch.Tensor:
    """fp32 noise for elements [start, start+numel) of stream (seed, param_id)."""
    if distribution == "rademacher":
        return rademacher_flat(seed, param_id, numel, device=device, start=start)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"unknown noise distribution {distribution!r}; choose one of {DISTRIBUTIONS}")
    k0, k1 = stream_key(seed, param_id)
    out = torch.empty(numel, dtype=torch.float32, device=device)
    for off in range(0, numel, _CHUNK):
        n = min(_CHUNK, numel - off)
        out[off:off + n] = words_to_noise(_words(k0, k1, start + off, n, device), distribution)
    return out


def noise_like(seed: int, param_id: int, like: torch.Tensor, *, distribution: str = "rademacher") -> torch.Tensor:
    """fp32 noise with the shape and device of `like` (row-major element order)."""
    return noise_flat(seed, param_id, like.numel(), distribution=distribution, device=like.device).view(like.shape)


def dropout_keep(seed: int, param_id: int, numel: int, rate: float, *, device="cpu", start: int = 0) -> torch.Tensor:
    """bool mask [numel]: True where the probe element is kept under probe dropout `rate`.

    Its own stream (salt DROPOUT_SALT), so the mask is independent of the probe's signs."""
    u_N = _uniform_open01(noise_words(seed, param_id, start, numel, device=device, salt=DROPOUT_SALT))
    return u_N >= rate
