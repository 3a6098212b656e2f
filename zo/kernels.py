"""Triton kernels for the counter-based probe noise, the stacked probe copies and the fused update.

Every kernel regenerates z(seed) on the fly from the bit recipe of `zo/noise.py`, so no θ-sized
noise tensor is ever materialised:

    triton_noise_flat      z over [start, start+numel)          == zo.noise.noise_flat (bitwise; normal ~1e-6)
    triton_apply_probes    out[m] = cast(master + c_m * z(s_m))  one launch for M stacked models
    triton_update          g = Σ_i c_i z(s_i) (fp32, seed order), master <- master*keep - lr*g, live <- cast(master)
    triton_grad            g alone (Adam / normalisation / clipping paths)

Laziness: importing this module never imports triton. The first kernel call imports it, wraps the
plain Python kernel bodies below with `triton.jit` and caches the result. Without triton, or without
CUDA while not interpreting (TRITON_INTERPRET=1), calls raise a RuntimeError that says so.

Rounding contract (what "bitwise" means here):
- Noise words are uint32 integer arithmetic (wrapping multiplies); rademacher and uniform values are
  exact or single IEEE roundings, so they equal the torch recipe bit for bit on any device.
- Every "a + alpha * b" of the torch path (`torch.add(m, z, alpha=c)`, `g.add_(z, alpha=c)`,
  `upd.add_(g, alpha=-lr)`) is computed as ONE fused multiply-add, fma(b, alpha, a). That is what
  torch does on CUDA (nvcc contracts `a + alpha*b`) and on CPUs with AVX2/AVX-512 (ATen's
  vectorised `fmadd`). For rademacher c*z is exact, so fused and unfused agree anyway; for the
  final `- lr*g` step (arbitrary g) only the fused form matches. Under the Triton interpreter,
  whose `tl.fma` rounds twice, the fma is emulated in float64 (exact product, then one rounding to
  float64 and one to float32; this double rounding could differ from a true fma only when the
  float64 sum lands exactly on a float32 rounding midpoint, probability ~2**-29 per element).
- `* keep` (weight decay) is a separate fp32 multiply, as in torch (`upd * keep`).
- No result depends on the compiler's fp contraction (TRITON_DEFAULT_FP_FUSION): fused steps use
  tl.fma explicitly, and every other multiply feeds no add whose fusion could change a bit.
- Casts to bf16 round to nearest even, as torch's: on the GPU with the hardware cast
  (cvt.rn.bf16.f32), under the interpreter (whose own bf16 cast rounds ties away from zero) with
  integer ops that give the same bits for every non-NaN value.
- Scalars: coefficients are fp32 (as torch rounds `alpha`), lr enters as fp32(-lr) and
  weight decay as fp32(1 - lr*wd) computed in Python double, both as torch does.

Dtypes: master in fp32 / bf16 / fp16; probe outputs and the live copy in fp32 / bf16 / fp16.

Noise format: rademacher takes 32 signs from one hash word (element i = bit i & 31 of
word(i >> 5), see zo/noise.py); uniform / normal and the dropout mask hash every element. Every
kernel works on [BLOCK // 32, 32] tiles whose rows are whole words (BLOCK is a multiple of 32 and
tiles start on word boundaries; triton_noise_flat masks the head of an unaligned start).

Speed. Measured on the H200 (triton 3.6, bench/bench_update.py, copy ceiling 4.25 TB/s) with the
previous format (one hash word per element and seed): the update was bound by hashing once n
exceeded ~3 seeds; each (element, seed) cost ~17 SASS instructions (137 per 8 elements) and the
kernel sustained ~1.45e12 seed-elements/s. P = 1e9: n = 12 took 9.2 ms (25.7% of copy bandwidth),
n = 96 66 ms, n = 512 349 ms; apply_probes ran at 76-92% of the copy bandwidth.
With 32 signs per word the update's fast path (rademacher, no dropout / mask) hashes once per
32 element-seeds: its seed loop compiles for sm_90 to 127 SASS instructions per 32 element-seeds
(~4 per element-seed: a shift, an and-xor, the fp32 add, plus 1/32 of a hash), vs ~17 before.
Expected (not yet measured on the H200; rerun bench/bench_update.py): ~6e12 seed-elements/s, so
P = 1e9, n = 12 needs ~1.9 ms of ALU against a 2.35 ms memory floor (10 B per element): memory
bound; n = 96 ~16 ms, n = 512 ~85 ms. apply_probes (memory-bound) hashes each word in the 4
threads that share it (1/8 hash per element and distinct seed instead of 1).

Interpreter notes: kernels use only builtin triton.language ops (no tl.zeros & co., which are
@jit functions of triton's standard library and break the interpreter when triton was imported
before TRITON_INTERPRET was set), and take the seed-loop bound as a constexpr there (see _loop_n).

Tensor legend: `_N` flat element axis, `_M` stacked models, `_S` probe seeds.
"""
from __future__ import annotations

import functools
import os
import struct
from typing import Sequence

import torch

from zo import noise as zn

__all__ = ["available", "interpreting", "noise_keys", "noise_keys_multi", "triton_noise_flat",
           "triton_apply_probes", "triton_apply_probes_gate_tiles", "triton_update", "triton_grad",
           "multi_apply_plan", "triton_apply_probes_multi", "multi_update_plan", "triton_update_multi", "DIST_CODES"]

DIST_CODES = {"rademacher": 0, "uniform": 1, "normal": 2}
_KIND = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}
# Block sizes (elements per program; powers of two, whole 32-element words) and warps. The update
# kernel's fast path wants UPDATE_BLOCK == 1024 * UPDATE_WARPS: one word (32 elements, 32 fp32
# accumulators) per thread, so no word is hashed by two threads.
NOISE_BLOCK, NOISE_WARPS = 2048, 4
PROBE_BLOCK, PROBE_WARPS = 2048, 8
UPDATE_BLOCK, UPDATE_WARPS = 4096, 4
# How many of the hash's right shifts run as umulhi on the multiply pipe (0..3; see the kernels).
# Measured on the H200 with one hash per element (the old format): 0 and 1 tied, 2 and 3 were
# slower. With one hash per 32 elements it hardly matters.
MULHI = 0


# ================================================================================================
# Kernel bodies: plain Python until `_build()` wraps them with triton.jit (annotations stay strings
# thanks to `from __future__ import annotations`, so `tl` need not exist at import time).
# They look up `tl` and each other through this module's globals, which `_kernels()` fills in.
#
# word(j) of counter j = (hi, lo) under key (k0, k1) is fmix32(fmix32(lo ^ k0) ^ (hi + k1)).
# Rademacher: element i is bit (i & 31) of word(i >> 5); uniform / normal / dropout: word(i).
#
# Tiles: every kernel works on a [BLOCK // 32, 32] tile, row q = one word of 32 consecutive
# elements, column b = bit b. A program's tile starts on a word boundary (element 0 for the update
# and probe kernels; start & ~31 for the noise kernel, whose out-of-range head is masked), so the
# rademacher signs of a row come from ONE word per seed: BLOCK // 32 words per seed and program,
# broadcast along the row (w[:, None] << (31 - b) puts bit b in bit 31). How many threads then
# compute each word is the compiler's layout choice: the update's fast path accumulates a
# transposed [32, W] tile so that every word lives in exactly one thread (see _update_kernel;
# tests/test_kernels.py checks the sm_90 layout); elsewhere a row may span a few threads.
#
# Rewritten for speed, with the same bits:
#   * fmix32 starts with h ^= h >> 16, and a logical shift distributes over xor, so
#     (lo ^ k0) ^ ((lo ^ k0) >> 16) = (lo ^ (lo >> 16)) ^ (k0 ^ (k0 >> 16)) = lo_mix ^ kk:
#     lo_mix is computed once per counter, kk once per seed (a scalar).
#   * In the update and probe kernels a block never straddles a multiple of 2**32, in elements or
#     in words (BLOCK is a power of two and the range starts at 0), so hi, and hi + k1, are
#     scalars of the block.
#   * c * z for rademacher z is c with its sign bit xored with the element's bit (exact), and
#     fma(z, c, g) == g + (±c) bit for bit.
#   * MULHI > 0 computes some right shifts of the word hash as umulhi(h, 2**k) (== h >> (32 - k))
#     with 2**k passed at run time, which moves them from the integer ALU to the multiply pipe.
#     With one hash per 32 elements this hardly matters any more; the values are identical.
# ================================================================================================
def _shr(h, k: tl.constexpr, mul, USE_MUL: tl.constexpr):
    """h >> k for uint32 h; as umulhi(h, mul) with mul == 2**(32-k) when USE_MUL."""
    if USE_MUL:
        r = tl.umulhi(h, mul)
    else:
        r = h >> k
    return r


def _fmix32(h):
    """MurmurHash3 finaliser on a uint32 tensor (multiplies wrap mod 2**32)."""
    h ^= h >> 16
    h *= 0x85EBCA6B
    h ^= h >> 13
    h *= 0xC2B2AE35
    h ^= h >> 16
    return h


def _word_mid(lo_mix, kk, hik1, m13, m16, MULHI: tl.constexpr):
    """fmix32(lo ^ k0) ^ (hi + k1), given lo_mix = lo ^ (lo >> 16) and kk = k0 ^ (k0 >> 16)."""
    h = lo_mix ^ kk
    h *= 0x85EBCA6B
    h ^= _shr(h, 13, m13, MULHI >= 2)
    h *= 0xC2B2AE35
    return h ^ _shr(h, 16, m16, MULHI >= 3) ^ hik1


def _word(lo_mix, kk, hik1, m13, m16, MULHI: tl.constexpr):
    """word(j) = fmix32(fmix32(lo ^ k0) ^ (hi + k1)), all 32 bits (see _word_mid for the args)."""
    x = _word_mid(lo_mix, kk, hik1, m13, m16, MULHI)
    h = x ^ _shr(x, 16, m16, MULHI >= 1)
    h *= 0x85EBCA6B
    h ^= _shr(h, 13, m13, MULHI >= 1)
    h *= 0xC2B2AE35
    return h ^ _shr(h, 16, m16, MULHI >= 1)


def _sign_bits(w, W: tl.constexpr):
    """[W, 32] uint32 whose bit 31 is bit b of w[q] at (q, b) (other bits: garbage).

    A broadcast along the row: the compiler may recompute w in each thread that holds part of a
    row (compiled with 16-divisible sizes, a row spans 4 threads in apply_probes: 1/8 hash per
    element), which is fine for the memory-bound kernels that use it (noise, apply_probes, the
    dropout / mask / non-rademacher update paths). The update's fast path hashes each word once."""
    return w[:, None] << (31 - tl.arange(0, 32)).to(tl.uint32)[None, :]


def _u01(x):
    """((x >> 8) + 0.5) * 2**-24 in fp32, as zo.noise._uniform_open01."""
    return ((x >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08


def _noise_from_mid(x, DIST: tl.constexpr):
    """fp32 z (uniform: DIST 1, normal: DIST 2) from x = fmix32(lo ^ k0) ^ (hi + k1), by the recipe
    of zo.noise.words_to_noise."""
    if DIST == 1:
        z = (2.0 * _u01(_fmix32(x)) - 1.0) * 1.7320508075688772
    else:
        w = _fmix32(x)
        u1 = _u01(w)
        u2 = _u01(_fmix32(w ^ 0x68E31DA4))
        z = tl.sqrt(-2.0 * tl.log(u1)) * tl.cos(6.283185307179586 * u2)
    return z


def _load_key(kp):
    """(kk, k1) of the key row at kp: kk = k0 ^ (k0 >> 16) (see _word_mid)."""
    k0 = tl.load(kp).to(tl.uint32, bitcast=True)
    k1 = tl.load(kp + 1).to(tl.uint32, bitcast=True)
    return k0 ^ (k0 >> 16), k1


def _probe_noise(wlo_mix, whi, lo_mix, hi, kp, mask_ptr, offs, inb, drop_rate, m13, m16,
                 W: tl.constexpr, DIST: tl.constexpr, HAS_DROPOUT: tl.constexpr, HAS_MASK: tl.constexpr,
                 MULHI: tl.constexpr):
    """[W, 32] fp32 z(seed) with probe dropout and the parameter mask applied as the engine does
    (z * keep, z * mask: a multiply by 1.0 or 0.0, so dropped negatives become -0.0).
    kp points at the key row: (k0, k1[, dropout k0, dropout k1]). Rademacher hashes the words
    (wlo_mix, whi: word counters of the rows), the others and the dropout mask the elements."""
    kk, k1 = _load_key(kp)
    if DIST == 0:
        sw = _sign_bits(_word(wlo_mix, kk, whi + k1, m13, m16, MULHI), W)
        z = tl.where((sw >> 31) != 0, -1.0, 1.0)
    else:
        z = _noise_from_mid(_word_mid(lo_mix, kk, hi + k1, m13, m16, MULHI), DIST)
    if HAS_DROPOUT:
        dk, d1 = _load_key(kp + 2)
        ud = _u01(_fmix32(_word_mid(lo_mix, dk, hi + d1, m13, m16, 0)))
        z = z * (ud >= drop_rate).to(tl.float32)
    if HAS_MASK:
        pm = tl.load(mask_ptr + offs, mask=inb, other=0)
        z = z * (pm != 0).to(tl.float32)
    return z


def _fma(a, b, c, EMU: tl.constexpr):
    """a*b + c with one rounding (emulated in float64 under the interpreter)."""
    if EMU:
        one = tl.full(a.shape, 1.0, tl.float64)  # (b, c may be plain Python floats there)
        r = ((one * a) * (one * b) + one * c).to(tl.float32)
    else:
        r = tl.fma(a, b, c)
    return r


def _signed(cb, sw):
    """c * z for rademacher z = ±1 (sign from bit 31 of sw) and c given by its bits cb: exact."""
    return ((sw & 0x80000000) ^ cb).to(tl.float32, bitcast=True)


def _load_f32(ptr, offs, inb, KIND: tl.constexpr):
    if KIND == 1:  # bf16 stored as int16 bits
        b = tl.load(ptr + offs, mask=inb, other=0)
        v = (b.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        v = tl.load(ptr + offs, mask=inb, other=0).to(tl.float32)
    return v


def _round_to(v, KIND: tl.constexpr, EMU: tl.constexpr):
    """fp32 -> storage value of KIND (bf16: int16 bits, round to nearest even). Compiled, bf16 uses
    the hardware cast (cvt.rn.bf16.f32: round to nearest even); under the interpreter, whose own
    bf16 cast rounds ties away from zero, the same rounding is done with integer ops."""
    if KIND == 1 and not EMU:
        out = v.to(tl.bfloat16).to(tl.int16, bitcast=True)
    elif KIND == 1:
        u = v.to(tl.uint32, bitcast=True)
        r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
        r = tl.where(v != v, 0x7FC0, r)
        out = r.to(tl.uint16).to(tl.int16, bitcast=True)
    elif KIND == 2:
        out = v.to(tl.float16)
    else:
        out = v
    return out


def _widen(s, KIND: tl.constexpr):
    """Storage value of KIND -> fp32 (exact)."""
    if KIND == 1:
        v = (s.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    else:
        v = s.to(tl.float32)
    return v


def _noise_kernel(out_ptr, numel, q_start, head, k0, k1, DIST: tl.constexpr, BLOCK: tl.constexpr):
    # Elements [start, start+numel) with q_start = start >> 5 and head = start & 31 (split on the
    # host: the interpreter stores an int argument in [2**31, 2**32) as uint32 and would shift it as
    # int32). The tile of program p covers words q_start + p*W .. + W-1 (W = BLOCK // 32), i.e.
    # output offsets 32*(p*W + row) + col - head; the head of the first word and the tail past
    # numel are masked.
    pid = tl.program_id(0).to(tl.int64)
    r = pid * (BLOCK // 32) + tl.arange(0, BLOCK // 32)  # words of the tile, relative to q_start
    cols = tl.arange(0, 32)
    offs = (r * 32)[:, None] + cols[None, :] - head  # output offsets [W, 32]
    inb = (offs >= 0) & (offs < numel)
    q = q_start.to(tl.int64) + r  # word counters: any start, so hi may change inside a tile
    ku = k0.to(tl.uint32, bitcast=True)
    kk = ku ^ (ku >> 16)
    k1u = k1.to(tl.uint32, bitcast=True)
    if DIST == 0:
        wlo = q.to(tl.uint32)
        w = _word(wlo ^ (wlo >> 16), kk, (q >> 32).to(tl.uint32) + k1u, 0, 0, 0)
        z = tl.where((_sign_bits(w, BLOCK // 32) >> 31) != 0, -1.0, 1.0)
    else:
        idx = (q * 32)[:, None] + cols[None, :]  # element counters
        lo = idx.to(tl.uint32)
        z = _noise_from_mid(_word_mid(lo ^ (lo >> 16), kk, (idx >> 32).to(tl.uint32) + k1u, 0, 0, 0), DIST)
    tl.store(out_ptr + offs, z, mask=inb)


def _as_ptr(addr, KIND: tl.constexpr):
    """A raw device address (int64 from a segment table) as a pointer of storage KIND (0 fp32,
    1 bf16 as int16 bits, 2 fp16, 3 int8 mask bytes)."""
    if KIND == 1:
        p = addr.to(tl.pointer_type(tl.int16))
    elif KIND == 2:
        p = addr.to(tl.pointer_type(tl.float16))
    elif KIND == 3:
        p = addr.to(tl.pointer_type(tl.int8))
    else:
        p = addr.to(tl.pointer_type(tl.float32))
    return p


def _apply_probes_kernel(master_ptr, out_ptr, keys_ptr, coefs_ptr, mask_ptr, M, numel, stride_m,
                         drop_rate, m13, m16, blk_ptr, seg_ptr, LOOP_N: tl.constexpr, KEY_STRIDE: tl.constexpr,
                         DIST: tl.constexpr, MASTER_KIND: tl.constexpr, OUT_KIND: tl.constexpr,
                         HAS_DROPOUT: tl.constexpr, HAS_MASK: tl.constexpr, FAST: tl.constexpr,
                         MULHI: tl.constexpr, EMU: tl.constexpr, BLOCK: tl.constexpr, MULTI: tl.constexpr):
    # MULTI: one launch over many tensors. Program b works on block blk[b, 1] of tensor blk[b, 0],
    # whose segment row is (master address, out address, numel, key row, mask address); out is
    # that tensor's own [M, numel] buffer and its keys are rows [key row * M, (key row + 1) * M)
    # of keys_ptr. Everything after this prologue is the single-tensor kernel.
    if MULTI:
        b = tl.program_id(0)
        seg = tl.load(blk_ptr + 2 * b).to(tl.int64)
        pid = tl.load(blk_ptr + 2 * b + 1).to(tl.int64)
        row = seg_ptr + seg * 5
        master_ptr = _as_ptr(tl.load(row), MASTER_KIND)
        out_ptr = _as_ptr(tl.load(row + 1), OUT_KIND)
        numel = tl.load(row + 2)
        stride_m = numel
        keys_ptr += tl.load(row + 3) * M * KEY_STRIDE
        if HAS_MASK:
            mask_ptr = _as_ptr(tl.load(row + 4), 3)
    else:
        pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK // 32)
    cols = tl.arange(0, 32)
    offs = pid * BLOCK + (rows * 32)[:, None] + cols[None, :]  # [W, 32], row = one word
    inb = offs < numel
    q0 = pid * (BLOCK // 32)
    wlo = (q0 + rows).to(tl.uint32)
    wlo_mix = wlo ^ (wlo >> 16)
    whi = (q0 >> 32).to(tl.uint32)  # scalar: a block's words never straddle 2**32
    lo = offs.to(tl.uint32)
    lo_mix = lo ^ (lo >> 16)
    hi = ((pid * BLOCK) >> 32).to(tl.uint32)  # scalar: blocks never straddle 2**32
    m_val = _load_f32(master_ptr, offs, inb, MASTER_KIND)
    optr = out_ptr + offs
    kp = keys_ptr
    z = tl.full([BLOCK // 32, 32], 0.0, tl.float32)
    sw = tl.full([BLOCK // 32, 32], 0, tl.uint32)
    p0 = tl.load(kp) + 0
    p1 = tl.load(kp + 1) + 0
    for m in range(0, LOOP_N if LOOP_N >= 0 else M):
        c = tl.load(coefs_ptr + m)
        k0 = tl.load(kp)
        k1 = tl.load(kp + 1)
        # z depends on the key alone: consecutive models of one seed (the +eps / -eps pair)
        # hash once.
        if (m == 0) | (k0 != p0) | (k1 != p1):
            if FAST:
                kk, k1u = _load_key(kp)
                sw = _sign_bits(_word(wlo_mix, kk, whi + k1u, m13, m16, MULHI), BLOCK // 32)
            else:
                z = _probe_noise(wlo_mix, whi, lo_mix, hi, kp, mask_ptr, offs, inb, drop_rate,
                                 m13, m16, BLOCK // 32, DIST, HAS_DROPOUT, HAS_MASK, MULHI)
        p0 = k0
        p1 = k1
        if FAST:
            v = m_val + _signed(c.to(tl.uint32, bitcast=True), sw)  # == fma(z, c, master): c*z exact
        else:
            v = _fma(z, c, m_val, EMU)  # == torch.add(master, z, alpha=c)
        tl.store(optr, _round_to(v, OUT_KIND, EMU), mask=inb)
        optr += stride_m
        kp += KEY_STRIDE


def _update_kernel(master_ptr, live_ptr, g_ptr, keys_ptr, coefs_ptr, mask_ptr, n, numel,
                   neg_lr, keep, drop_rate, m13, m16, blk_ptr, seg_ptr, LOOP_N: tl.constexpr,
                   KEY_STRIDE: tl.constexpr, DIST: tl.constexpr, MASTER_KIND: tl.constexpr,
                   LIVE_KIND: tl.constexpr, HAS_LIVE: tl.constexpr, HAS_WD: tl.constexpr,
                   HAS_DROPOUT: tl.constexpr, HAS_MASK: tl.constexpr, WRITE_G: tl.constexpr,
                   UPDATE: tl.constexpr, FAST: tl.constexpr, MULHI: tl.constexpr, EMU: tl.constexpr,
                   BLOCK: tl.constexpr, MULTI: tl.constexpr, LR_PTR: tl.constexpr = False):
    # LR_PTR: neg_lr is a pointer to fp32(lr) on the device (read here and negated: fp32(-lr) ==
    # -fp32(lr)), so that a captured CUDA graph replays with the lr of the step it is replayed for.
    # MULTI: one launch over many tensors (see _apply_probes_kernel); a segment row is (master,
    # live, g, numel, key row, mask) with addresses as int64, keys rows [key row * n, + n).
    if MULTI:
        b = tl.program_id(0)
        seg = tl.load(blk_ptr + 2 * b).to(tl.int64)
        pid = tl.load(blk_ptr + 2 * b + 1).to(tl.int64)
        row = seg_ptr + seg * 6
        if UPDATE:
            master_ptr = _as_ptr(tl.load(row), MASTER_KIND)
        if HAS_LIVE:
            live_ptr = _as_ptr(tl.load(row + 1), LIVE_KIND)
        if WRITE_G:
            g_ptr = _as_ptr(tl.load(row + 2), 0)
        numel = tl.load(row + 3)
        keys_ptr += tl.load(row + 4) * n * KEY_STRIDE
        if HAS_MASK:
            mask_ptr = _as_ptr(tl.load(row + 5), 3)
    else:
        pid = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, BLOCK // 32)
    cols = tl.arange(0, 32)
    offs = pid * BLOCK + (rows * 32)[:, None] + cols[None, :]  # [W, 32], row = one word
    inb = offs < numel
    q0 = pid * (BLOCK // 32)
    wlo = (q0 + rows).to(tl.uint32)
    wlo_mix = wlo ^ (wlo >> 16)
    whi = (q0 >> 32).to(tl.uint32)  # scalar: a block's words never straddle 2**32
    lo = offs.to(tl.uint32)
    lo_mix = lo ^ (lo >> 16)
    hi = ((pid * BLOCK) >> 32).to(tl.uint32)  # scalar: blocks never straddle 2**32
    kp = keys_ptr
    if FAST:
        # Rademacher without dropout / mask. g is accumulated transposed, gT[b, q] = g of bit b of
        # word q: the compiler lays this loop-carried [32, W] tile out with one column (= one word)
        # per thread, all 32 bits in that thread's registers (checked in the sm_90 TTGIR). So each
        # word is hashed ONCE per seed, and each element costs a shift by a constant, an and-xor
        # and an fp32 add. One layout conversion (gT -> g, through shared memory) after the loop.
        # (Accumulating the [W, 32] tile directly lets the compiler spread a row over 32 lanes,
        # each recomputing the word: one hash per element again.)
        gT = tl.full([32, BLOCK // 32], 0.0, tl.float32)
        shT = (31 - tl.arange(0, 32)).to(tl.uint32)[:, None]
        for i in range(0, LOOP_N if LOOP_N >= 0 else n):
            cb = tl.load(coefs_ptr + i).to(tl.uint32, bitcast=True)
            kk, k1 = _load_key(kp)
            w = _word(wlo_mix, kk, whi + k1, m13, m16, MULHI)  # [W]: 1 hash per 32 elements
            gT = gT + _signed(cb, w[None, :] << shT)  # == g.add_(z, alpha=c) (exact c*z)
            kp += KEY_STRIDE
        g = tl.trans(gT)
    else:
        g = tl.full([BLOCK // 32, 32], 0.0, tl.float32)
        for i in range(0, LOOP_N if LOOP_N >= 0 else n):
            c = tl.load(coefs_ptr + i)
            z = _probe_noise(wlo_mix, whi, lo_mix, hi, kp, mask_ptr, offs, inb, drop_rate, m13, m16,
                             BLOCK // 32, DIST, HAS_DROPOUT, HAS_MASK, MULHI)
            g = _fma(z, c, g, EMU)  # == g.add_(z, alpha=c)
            kp += KEY_STRIDE
    if WRITE_G:
        tl.store(g_ptr + offs, g, mask=inb)
    if UPDATE:
        upd = _load_f32(master_ptr, offs, inb, MASTER_KIND)
        if HAS_WD:
            dec = upd * keep
            if HAS_MASK:
                pm = tl.load(mask_ptr + offs, mask=inb, other=0)
                dec = tl.where(pm != 0, dec, upd)
            upd = dec
        if LR_PTR:
            step_lr = -tl.load(neg_lr)
        else:
            step_lr = neg_lr
        new = _round_to(_fma(g, step_lr, upd, EMU), MASTER_KIND, EMU)  # == upd.add_(g, alpha=-lr); cast
        tl.store(master_ptr + offs, new, mask=inb)
        if HAS_LIVE:
            tl.store(live_ptr + offs, _round_to(_widen(new, MASTER_KIND), LIVE_KIND, EMU), mask=inb)


def _apply_probes_tiles_kernel(master_ptr, out_ptr, keys_ptr, coefs_ptr, M, N, D_VEC, Dk, J, stride_m, m13, m16,
                               LOOP_N: tl.constexpr, KEY_STRIDE: tl.constexpr, MASTER_KIND: tl.constexpr,
                               OUT_KIND: tl.constexpr, MULHI: tl.constexpr, EMU: tl.constexpr,
                               ROWS: tl.constexpr, BD: tl.constexpr, NW: tl.constexpr, VEC: tl.constexpr):
    # Rademacher probes of a [4, N, D, D] weight (gate, head, input unit, output unit), written in gate
    # tiles: out[m, n, i, j, g, e] = cast(master[g, n, i, j*BD + e] + c_m * z_m(same element)), zero in
    # the padding (i >= D or j*BD + e >= D). Grid (cdiv(Dk, ROWS), J, N); a program writes ROWS rows
    # of unit tile j of head n, gate by gate, for all M models. A gate row's BD elements are
    # consecutive in the weight, so they take bits of at most NW consecutive noise words: NW hashes a
    # row and seed, in an unrolled loop: as a runtime loop, the compiler carried the words in a layout of
    # one column a lane (every row hashed in all 32 lanes, then converted through shared memory), 0.58
    # against 0.40 ms at the large preset on the H200. (One [ROWS, 4, BD] tile for all gates, a
    # contiguous output run a row, measured slower than the gate-by-gate form.)
    # D arrives as D_VEC = D / VEC: the compiler then knows VEC divides D, so the masks are constant over
    # VEC consecutive elements and the master loads are VEC wide (with D itself they were 4-byte loads)
    D = D_VEC * VEC
    pid_i = tl.program_id(0)
    j = tl.program_id(1)
    n = tl.program_id(2).to(tl.int64)
    rows = pid_i * ROWS + tl.arange(0, ROWS)
    e = tl.arange(0, BD)
    inb = (rows < D)[:, None] & ((j * BD + e) < D)[None, :]
    out_ok = (rows < Dk)[:, None] & (e < BD)[None, :]
    for g in range(4):
        base = ((g * N + n) * D + rows) * D + j * BD            # [ROWS] int64: the row's first element
        m_val = _load_f32(master_ptr, base[:, None] + e[None, :], inb, MASTER_KIND)
        q0 = base >> 5
        off = (base & 31)[:, None] + e[None, :]                 # bit offset from word q0's first element
        wsel = off >> 5
        shl = (31 - (off & 31)).to(tl.uint32)
        optr = out_ptr + ((((n * Dk + rows[:, None]) * J + j) * 4 + g) * BD + e[None, :])
        kp = keys_ptr
        sw = shl & 0            # zeros in the layout of the words' uses
        p0 = tl.load(kp) + 0
        p1 = tl.load(kp + 1) + 0
        for m in range(0, LOOP_N if LOOP_N >= 0 else M):
            c = tl.load(coefs_ptr + m)
            k0 = tl.load(kp)
            k1 = tl.load(kp + 1)
            if (m == 0) | (k0 != p0) | (k1 != p1):      # the +eps / -eps pair of a seed hashes once
                kk, k1u = _load_key(kp)
                w = shl & 0
                for t in tl.static_range(NW):
                    q = q0 + t
                    wlo = q.to(tl.uint32)
                    wt = _word(wlo ^ (wlo >> 16), kk, (q >> 32).to(tl.uint32) + k1u, m13, m16, MULHI)
                    w = tl.where(wsel == t, wt[:, None], w)
                sw = w << shl
            p0 = k0
            p1 = k1
            v = tl.where(inb, m_val + _signed(c.to(tl.uint32, bitcast=True), sw), 0.0)  # == fma(z, c, master)
            tl.store(optr, _round_to(v, OUT_KIND, EMU), mask=out_ok)
            optr += stride_m
            kp += KEY_STRIDE

_HELPERS = ("_as_ptr", "_shr", "_fmix32", "_word_mid", "_word", "_sign_bits", "_u01", "_noise_from_mid", "_load_key",
            "_probe_noise", "_fma", "_signed", "_load_f32", "_round_to", "_widen")
_KERNELS = ("_noise_kernel", "_apply_probes_kernel", "_update_kernel", "_apply_probes_tiles_kernel")
_PLAIN = {name: globals()[name] for name in _HELPERS + _KERNELS}
_DO_NOT_SPECIALIZE = {"_noise_kernel": ["q_start", "head", "k0", "k1"]}
_built: dict = {}


# ================================================================================================
# Availability and build
# ================================================================================================
def interpreting() -> bool:
    """Whether Triton runs in interpreter mode (TRITON_INTERPRET=1): kernels then run on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def _import_triton():
    try:
        import triton
        import triton.language as tl_mod
    except Exception as e:  # ImportError, or a broken install
        raise RuntimeError("zo.kernels needs the `triton` package (pip install triton; on GPU machines it "
                           f"ships with PyTorch's CUDA wheels); importing it failed: {e!r}") from e
    return triton, tl_mod


def available() -> bool:
    """True when the Triton kernels can run here (triton importable, and CUDA or the interpreter)."""
    try:
        _import_triton()
    except RuntimeError:
        return False
    return interpreting() or torch.cuda.is_available()


def _kernels() -> dict:
    """The jitted kernels, built on first use (separately for interpreter and compiled mode)."""
    interp = interpreting()
    triton, tl_mod = _import_triton()
    if not interp and not torch.cuda.is_available():
        raise RuntimeError("zo.kernels: CUDA is not available (torch.cuda.is_available() is False) and "
                           "TRITON_INTERPRET is not set; use zo.noise / the engine's torch path on CPU, or "
                           "set TRITON_INTERPRET=1 to run the kernels in Triton's interpreter.")
    ks = _built.get(interp)
    if ks is not None:
        globals().update(ks)  # (re)install this mode's functions if another mode was built since
    else:
        g = globals()
        g["tl"] = tl_mod
        ks = {}
        for name in _HELPERS + _KERNELS:
            dns = _DO_NOT_SPECIALIZE.get(name)
            body = _PLAIN[name]
            fn = triton.jit(body, do_not_specialize=dns) if dns else triton.jit(body)
            g[name] = fn  # kernels resolve helpers through this module's globals at compile time
            ks[name] = fn
        _built[interp] = ks
    return ks


def _f32(x: float) -> float:
    """x rounded to fp32 on the host, as torch rounds a Python scalar (alpha, `* keep`, `>= rate`) for
    fp32 tensors. Compiled kernels take float arguments as fp32 anyway; the interpreter may keep a
    Python float in double precision when it meets an fp64 operand, so round it first."""
    return struct.unpack("f", struct.pack("f", float(x)))[0]


# Right-shift multipliers for MULHI (umulhi(h, 2**19) == h >> 13, umulhi(h, 2**16) == h >> 16),
# passed at run time so that the compiler cannot turn them back into shifts.
_M13, _M16 = 1 << 19, 1 << 16


def _mulhi(m) -> int:
    v = MULHI if m is None else int(m)
    if not 0 <= v <= 3:
        raise ValueError(f"mulhi must be in 0..3, got {v}")
    return v


def _block(block, default: int) -> int:
    b = int(block or default)
    if b < 32 or b & (b - 1) or b > 1 << 16:
        raise ValueError(f"block must be a power of two in [32, 65536] (whole words), got {b}")
    return b


def _loop_n(n: int) -> int:
    """Seed-loop bound as a constexpr under the interpreter (some triton/numpy pairs, e.g. triton 3.6
    with numpy 2.4, cannot range() over a runtime scalar there); -1 (runtime bound) when compiled,
    so compiled kernels are not specialised per seed count."""
    return int(n) if interpreting() else -1


def _check_tensor(t: torch.Tensor, what: str) -> None:
    if interpreting():
        return
    if t.device.type != "cuda":
        raise RuntimeError(f"zo.kernels: {what} is on {t.device}, the Triton kernels need CUDA tensors "
                           "(or TRITON_INTERPRET=1 with CPU tensors)")


def _kind(t: torch.Tensor, what: str) -> int:
    k = _KIND.get(t.dtype)
    if k is None:
        raise TypeError(f"zo.kernels: {what} has dtype {t.dtype}; supported: fp32, bf16, fp16")
    return k


def _ptr_view(t: torch.Tensor) -> torch.Tensor:
    """The tensor the kernel addresses: bf16 is handled as raw int16 bits."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t


def _dist(distribution: str) -> int:
    if distribution not in DIST_CODES:
        raise ValueError(f"unknown noise distribution {distribution!r}; choose one of {tuple(DIST_CODES)}")
    return DIST_CODES[distribution]


# ================================================================================================
# Host helpers: keys and small uploads without host synchronisation
# ================================================================================================
@functools.lru_cache(maxsize=1 << 16)
def _key_pair(seed: int, param_id: int, salt: int) -> tuple[int, int]:
    k0, k1 = zn.stream_key(seed, param_id, salt)
    return (k0 - (1 << 32) if k0 >= 1 << 31 else k0), (k1 - (1 << 32) if k1 >= 1 << 31 else k1)


def _upload(values, dtype, device) -> torch.Tensor:
    """A small host list as a device tensor, without host synchronisation (see _upload_tensor)."""
    return _upload_tensor(torch.tensor(values, dtype=dtype), device)


def _upload_tensor(host: torch.Tensor, device) -> torch.Tensor:
    """A small host tensor on `device`. On CUDA it goes through pinned memory with
    non_blocking=True, so no host synchronisation happens (DESIGN invariant 5)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return host.pin_memory().to(dev, non_blocking=True)
    return host.to(dev)


def noise_keys(seeds: Sequence[int], param_id: int, *, device, dropout: bool = False) -> torch.Tensor:
    """int32 [n, 2] (or [n, 4] with dropout) of the stream keys of `seeds` for `param_id`.

    Columns are (k0, k1) of stream (seed, param_id) and, with dropout, (k0, k1) of the probe-dropout
    stream (salt zo.noise.DROPOUT_SALT); the uint32 key words are stored as their int32 bit
    patterns. Computed on the host with zo.noise.stream_key (cached), uploaded without a sync."""
    return noise_keys_multi(seeds, [param_id], device=device, dropout=dropout)[0]


def noise_keys_multi(seeds: Sequence[int], param_ids: Sequence[int], *, device, dropout: bool = False) -> torch.Tensor:
    """int32 [len(param_ids), n, 2 or 4]: `noise_keys(seeds, pid)` for every parameter, hashed in one
    vectorised pass (zo.noise.stream_keys) and uploaded in ONE transfer (a step's probe writes and
    update then cost one upload, not one per tensor)."""
    seeds = list(seeds)
    if not param_ids or not seeds:
        return torch.empty((len(param_ids), len(seeds), 4 if dropout else 2), dtype=torch.int32, device=device)
    return _upload_tensor(torch.from_numpy(noise_keys_host(seeds, param_ids, dropout=dropout)), device)


def noise_keys_host(seeds: Sequence[int], param_ids: Sequence[int], *, dropout: bool = False):
    """`noise_keys_multi`'s values as a host numpy int32 array [len(param_ids), n, 2 or 4] (no upload)."""
    import numpy as np
    seeds = list(seeds)
    if not param_ids or not seeds:
        return np.zeros((len(param_ids), len(seeds), 4 if dropout else 2), dtype=np.int32)
    cols = list(zn.stream_keys(seeds, param_ids, 0))
    if dropout:
        cols += list(zn.stream_keys(seeds, param_ids, zn.DROPOUT_SALT))
    return np.ascontiguousarray(np.stack(cols, axis=-1).view(np.int32))


def _keys_arg(seeds, param_id, device, dropout: bool) -> torch.Tensor:
    if torch.is_tensor(seeds):
        keys = seeds
        width = 4 if dropout else 2
        if keys.dtype != torch.int32 or keys.dim() != 2 or keys.shape[1] not in (2, 4) or keys.shape[1] < width:
            raise ValueError(f"a keys tensor must be int32 [n, {width}] from noise_keys(...); got "
                             f"{keys.dtype} {tuple(keys.shape)}")
        return keys.to(device).contiguous()
    return noise_keys(list(seeds), param_id, device=device, dropout=dropout)


def _coefs_arg(coefs, n: int, device) -> torch.Tensor:
    if torch.is_tensor(coefs):
        c = coefs.to(device=device, dtype=torch.float32).reshape(-1).contiguous()
    else:
        c = _upload([float(x) for x in coefs], torch.float32, device)
    if c.numel() != n:
        raise ValueError(f"{n} seeds but {c.numel()} coefficients")
    return c


def _lr_arg(lr):
    """lr as a host float, or kept as a device tensor (one fp32 value, read by the kernel)."""
    return lr if torch.is_tensor(lr) else float(lr)


def _mask_arg(mask, like: torch.Tensor):
    if mask is None:
        return None
    if mask.numel() != like.numel():
        raise ValueError(f"mask has {mask.numel()} elements, the parameter {like.numel()}")
    return mask.to(device=like.device, dtype=torch.bool).reshape(-1).contiguous().view(torch.int8)


def _flat(t: torch.Tensor, what: str) -> torch.Tensor:
    if not t.is_contiguous():
        raise ValueError(f"zo.kernels: {what} must be contiguous")
    return t


# ================================================================================================
# Public API
# ================================================================================================
def triton_noise_flat(seed: int, param_id: int, numel: int, distribution: str = "rademacher",
                      device="cuda", start: int = 0, *, block: int | None = None) -> torch.Tensor:
    """fp32 noise for elements [start, start+numel) of stream (seed, param_id).

    Equals zo.noise.noise_flat bit for bit for rademacher and uniform (normal: ~1e-6)."""
    ks = _kernels()
    dev = torch.device(device)
    if not interpreting() and dev.type != "cuda":
        raise RuntimeError(f"zo.kernels: device {dev} is not CUDA (set TRITON_INTERPRET=1 for CPU)")
    if start < 0 or numel < 0:
        raise ValueError("start and numel must be >= 0")
    out = torch.empty(numel, dtype=torch.float32, device=dev)
    if numel == 0:
        return out
    k0, k1 = _key_pair(int(seed), int(param_id), 0)
    blk = _block(block, NOISE_BLOCK)
    start = int(start)
    grid = (triton_cdiv(numel + (start & 31), blk),)  # tiles start at the word boundary start & ~31
    ks["_noise_kernel"][grid](out, numel, start >> 5, start & 31, k0, k1, DIST=_dist(distribution),
                              BLOCK=blk, num_warps=NOISE_WARPS)
    return out


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def triton_apply_probes(master: torch.Tensor, out_MX: torch.Tensor, seeds, param_id: int, coefs_M,
                        distribution: str = "rademacher", *, dropout_rate: float = 0.0,
                        mask: torch.Tensor | None = None, block: int | None = None,
                mulhi: int | None = None) -> torch.Tensor:
    """out_MX[m] = cast(master + coefs_M[m] * z(seeds[m])) for all M models in one launch.

    seeds: M ints, or an int32 keys tensor from noise_keys (one row per model). Consecutive models
    with the same seed (the +eps/-eps pair) hash once. coefs_M: M floats or an fp32 tensor
    (coef = ±eps·scale, and already divided by nothing: it is the alpha of torch.add).
    Bitwise: == torch.add(master, z, alpha=c).to(out.dtype) with z the engine's direction
    (dropout and mask applied), given torch's fused a + alpha*b (see module docstring)."""
    ks = _kernels()
    _check_tensor(master, "master")
    _flat(master, "master")
    _flat(out_MX, "out_MX")
    numel = master.numel()
    M = out_MX.shape[0] if out_MX.dim() > 0 else 0
    if out_MX.numel() != M * numel:
        raise ValueError(f"out_MX {tuple(out_MX.shape)} is not [M, *{tuple(master.shape)}]")
    if out_MX.device != master.device:
        raise ValueError("out_MX and master must be on one device")
    drop = dropout_rate > 0
    keys = _keys_arg(seeds, param_id, master.device, drop)
    if keys.shape[0] != M:
        raise ValueError(f"{M} output models but {keys.shape[0]} seeds")
    c = _coefs_arg(coefs_M, M, master.device)
    pm = _mask_arg(mask, master)
    if M == 0 or numel == 0:
        return out_MX
    _launch_apply(ks, (triton_cdiv(numel, _block(block, PROBE_BLOCK)),), _ptr_view(master), _ptr_view(out_MX),
                  keys, c, pm, M, numel, None, _kind(master, "master"), _kind(out_MX, "out_MX"),
                  pm is not None, dropout_rate, distribution, block, mulhi)
    return out_MX


def triton_apply_probes_gate_tiles(master: torch.Tensor, out: torch.Tensor, seeds, param_id: int, coefs_M, *,
                                   rows: int = 32, num_warps: int = 4) -> torch.Tensor:
    """Rademacher probes of a [4, N, D, D] weight (gate, head, input, output unit) straight into gate
    tiles, the layout an LSTM's step kernels read (`zo.layouts.GateTiles`): out [M, N, Dk, J, 4, BD]
    with out[m, n, i, j, g, e] = cast(master[g, n, i, j*BD + e] + coefs_M[m] * z(seeds[m])) and 0 in the
    padding (i >= D or j*BD + e >= D). The values are triton_apply_probes's bit for bit, in another
    order, without its [M, 4, N, D, D] copy. No dropout, no mask (those go through the flat kernel)."""
    ks = _kernels()
    _check_tensor(master, "master")
    _flat(master, "master")
    _flat(out, "out")
    if master.dim() != 4 or master.shape[0] != 4 or master.shape[2] != master.shape[3]:
        raise ValueError(f"gate tiles need a [4, N, D, D] weight; got {tuple(master.shape)}")
    _, N, D, _ = master.shape
    if out.dim() != 6 or out.shape[1] != N or out.shape[4] != 4 or out.shape[2] != out.shape[3] * out.shape[5] \
            or out.shape[2] < D:
        raise ValueError(f"out {tuple(out.shape)} is not gate tiles [M, {N}, Dk, Dk/BD, 4, BD] of Dk >= {D}")
    M, _, Dk, J, _, BD = out.shape
    vec = next(v for v in (8, 4, 2, 1) if D % v == 0 and BD % v == 0)
    if BD & (BD - 1) or not 8 <= BD <= 128 or rows & (rows - 1):
        raise ValueError(f"gate tiles need a power-of-two BD in 8..128 and power-of-two rows (got {BD}, {rows})")
    if out.device != master.device:
        raise ValueError("out and master must be on one device")
    keys = _keys_arg(seeds, param_id, master.device, False)
    if keys.shape[0] != M:
        raise ValueError(f"{M} output models but {keys.shape[0]} seeds")
    c = _coefs_arg(coefs_M, M, master.device)
    if M == 0:
        return out
    ks["_apply_probes_tiles_kernel"][(triton_cdiv(Dk, rows), J, N)](
        _ptr_view(master), _ptr_view(out), keys, c, M, N, D // vec, Dk, J, N * Dk * 4 * Dk, _M13, _M16,
        LOOP_N=_loop_n(M), KEY_STRIDE=keys.shape[-1], MASTER_KIND=_kind(master, "master"),
        OUT_KIND=_kind(out, "out"), MULHI=_mulhi(None), EMU=interpreting(), ROWS=rows, BD=BD,
        NW=BD // 32 + 1 if BD >= 32 else 2, VEC=vec, num_warps=num_warps)
    return out


def _launch_apply(ks, grid, master, out, keys, c, pm, M, numel, tables, master_kind, out_kind, has_mask,
                  dropout_rate, distribution, block, mulhi):
    dist = _dist(distribution)
    drop = dropout_rate > 0
    blk_t, seg_t = tables if tables is not None else (keys, keys)
    ks["_apply_probes_kernel"][grid](
        master, out, keys, c, pm if pm is not None else keys,
        M, numel, numel, _f32(dropout_rate), _M13, _M16, blk_t, seg_t, LOOP_N=_loop_n(M),
        KEY_STRIDE=keys.shape[-1], DIST=dist, MASTER_KIND=master_kind, OUT_KIND=out_kind,
        HAS_DROPOUT=drop, HAS_MASK=has_mask, FAST=dist == 0 and not drop and not has_mask,
        MULHI=_mulhi(mulhi), EMU=interpreting(), BLOCK=_block(block, PROBE_BLOCK), num_warps=PROBE_WARPS,
        MULTI=tables is not None)


def _launch_update(ks, master, live, g, keys, c, pm, n, lr, weight_decay, dropout_rate, distribution,
                   update: bool, block, mulhi, *, grid=None, tables=None, kinds=None):
    """One update / grad launch: a single tensor, or with `tables` (and `grid`, `kinds` = (master,
    live, has_mask, has_live, has_g)) the segments of a multi-tensor plan."""
    blk = _block(block, UPDATE_BLOCK)
    dist = _dist(distribution)
    has_wd = update and weight_decay > 0
    lr_ptr = torch.is_tensor(lr)
    if lr_ptr:
        if lr.dtype != torch.float32 or lr.numel() != 1 or lr.device != keys.device:
            raise ValueError(f"a device lr must be one fp32 value on {keys.device}, got {lr.dtype} "
                             f"{tuple(lr.shape)} on {lr.device}")
        if has_wd:
            raise ValueError("weight decay needs lr as a host float (its factor 1 - lr*wd is formed on the host)")
        neg_lr = lr
    else:
        neg_lr = _f32(-lr)
    keep = 1.0 - lr * weight_decay if has_wd else 1.0
    dummy = keys
    if tables is None:
        numel = master.numel()
        grid = (triton_cdiv(numel, blk),)
        master_kind = _kind(master, "master") if update else 0
        live_kind = _kind(live, "live") if live is not None else 0
        has_mask, has_live, has_g = pm is not None, live is not None, g is not None
        args = (_ptr_view(master) if update else dummy, _ptr_view(live) if live is not None else dummy,
                g if g is not None else dummy, keys, c, pm if pm is not None else dummy, n, numel)
        blk_t = seg_t = dummy
    else:
        master_kind, live_kind, has_mask, has_live, has_g = kinds
        args = (dummy, dummy, dummy, keys, c, dummy, n, 0)
        blk_t, seg_t = tables
    ks["_update_kernel"][grid](
        *args, neg_lr, _f32(keep), _f32(dropout_rate), _M13, _M16, blk_t, seg_t, LOOP_N=_loop_n(n),
        KEY_STRIDE=keys.shape[-1], DIST=dist, MASTER_KIND=master_kind if update else 0,
        LIVE_KIND=live_kind, HAS_LIVE=has_live, HAS_WD=has_wd, HAS_DROPOUT=dropout_rate > 0,
        HAS_MASK=has_mask, WRITE_G=has_g, UPDATE=update,
        FAST=dist == 0 and dropout_rate <= 0 and not has_mask,
        MULHI=_mulhi(mulhi), EMU=interpreting(), BLOCK=blk, num_warps=UPDATE_WARPS, MULTI=tables is not None,
        LR_PTR=lr_ptr)


@torch.no_grad()
def triton_update(master: torch.Tensor, seeds, param_id: int, coefs, lr: float, weight_decay: float = 0.0,
                  distribution: str = "rademacher", live: torch.Tensor | None = None, *,
                  dropout_rate: float = 0.0, mask: torch.Tensor | None = None,
                  grad_out: torch.Tensor | None = None, block: int | None = None,
                mulhi: int | None = None) -> None:
    """One pass over the parameter, in place:

        g      = Σ_i coefs[i] * z(seeds[i])        fp32, seeds in the given order, z made on the fly
        master <- cast(master*keep - lr*g)          keep = 1 - lr*wd (only where mask, if a mask)
        live   <- cast(master)                      if live is given (e.g. the bf16 model tensor)

    seeds: n ints, or an int32 keys tensor from noise_keys. coefs: n floats or an fp32 tensor;
    pass the engine's scaled coefficients (c_i * probe_scale(s_i), rounded once to fp32).
    lr: a float, or a one-element fp32 tensor on master's device that the kernel reads (so that a
    CUDA graph replays with each step's lr; not with weight decay, whose factor is formed on the host).
    grad_out: optional fp32 tensor (numel of master) that also receives g.
    Reads master once and writes master (and live) once; no θ-sized temporaries."""
    ks = _kernels()
    _check_tensor(master, "master")
    _flat(master, "master")
    if live is not None:
        _flat(live, "live")
        if live.numel() != master.numel() or live.device != master.device:
            raise ValueError("live must have master's numel and device")
        if live.data_ptr() == master.data_ptr():
            live = None
    drop = dropout_rate > 0
    keys = _keys_arg(seeds, param_id, master.device, drop)
    n = keys.shape[0]
    c = _coefs_arg(coefs, n, master.device)
    pm = _mask_arg(mask, master)
    if grad_out is not None:
        if grad_out.dtype != torch.float32 or grad_out.numel() != master.numel() or not grad_out.is_contiguous():
            raise ValueError("grad_out must be a contiguous fp32 tensor with master's numel")
    if master.numel() == 0:
        return
    _launch_update(ks, master, live, grad_out, keys, c, pm, n, _lr_arg(lr), float(weight_decay),
                   float(dropout_rate), distribution, True, block, mulhi)


@torch.no_grad()
def triton_grad(master: torch.Tensor, seeds, param_id: int, coefs, distribution: str = "rademacher", *,
                dropout_rate: float = 0.0, mask: torch.Tensor | None = None,
                out: torch.Tensor | None = None, block: int | None = None,
                mulhi: int | None = None) -> torch.Tensor:
    """g = Σ_i coefs[i] * z(seeds[i]) as an fp32 tensor shaped like master (master itself is not
    read: it gives shape and device). Bitwise equal to the engine's `_accumulate` for rademacher."""
    ks = _kernels()
    _check_tensor(master, "master")
    g = out if out is not None else torch.empty(master.shape, dtype=torch.float32, device=master.device)
    if g.dtype != torch.float32 or g.numel() != master.numel() or not g.is_contiguous():
        raise ValueError("out must be a contiguous fp32 tensor with master's numel")
    drop = dropout_rate > 0
    keys = _keys_arg(seeds, param_id, master.device, drop)
    n = keys.shape[0]
    c = _coefs_arg(coefs, n, master.device)
    pm = _mask_arg(mask, master)
    if master.numel() == 0:
        return g
    _launch_update(ks, master, None, g, keys, c, pm, n, 0.0, 0.0, float(dropout_rate), distribution,
                   False, block, mulhi)
    return g


# ------------------------------------------------------------------------------------------------
# Multi-tensor launches: one kernel over many (small) tensors
# ------------------------------------------------------------------------------------------------
# Small models are launch-bound: a step writes its probes and updates θ one tensor at a time, a few
# microseconds of GPU work behind tens of microseconds of host launch each. A plan lists the
# tensors' addresses once (a segment table) and which block of which tensor every program takes (a
# block table); the kernels then run the single-tensor code on each block, with the same noise
# counters and keys, so the results are bit for bit those of one launch per tensor. Plans hold the
# tensors they address; build one per set of buffers and reuse it while they live.
MULTI_MAX_NUMEL = 1 << 22  # tensors above this stay in their own launch (aligned, vectorised loads)


class MultiPlan:
    """Device tables of one multi-tensor launch (see `multi_apply_plan`, `multi_update_plan`)."""

    def __init__(self, kind: str, tensors: tuple, blk: torch.Tensor, seg: torch.Tensor, kinds: tuple,
                 numel: int, M: int, block: int):
        self.kind, self.tensors, self.blk, self.seg = kind, tensors, blk, seg
        self.kinds, self.numel, self.M, self.block = kinds, numel, M, block
        self.grid = (blk.shape[0],)

    def __len__(self) -> int:
        return self.seg.shape[0]


def _uniform(ts, what: str, device) -> int:
    kinds = {_kind(t, what) for t in ts}
    if len(kinds) != 1:
        raise TypeError(f"zo.kernels: a multi-tensor launch needs one dtype for all {what} tensors, got "
                        f"{sorted({str(t.dtype) for t in ts})}")
    for t in ts:
        _flat(t, what)
        if t.device != torch.device(device):
            raise ValueError(f"zo.kernels: {what} tensors must all be on {device}, one is on {t.device}")
    return kinds.pop()


def _tables(rows, numels, block: int, device):
    """(block table int32 [nb, 2], segment table int64 [S, width]) on `device`."""
    nblk = [triton_cdiv(n, block) for n in numels]
    seg_ids = torch.repeat_interleave(torch.arange(len(numels), dtype=torch.int32),
                                      torch.tensor(nblk, dtype=torch.int64))
    starts = torch.cat([torch.arange(b, dtype=torch.int32) for b in nblk]) if nblk else seg_ids
    blk = torch.stack([seg_ids, starts], dim=1).contiguous()
    if blk.numel() and int(blk[:, 1].max()) >= 1 << 31:
        raise ValueError("zo.kernels: a tensor of a multi-tensor launch has >= 2**31 blocks")
    seg = torch.tensor(rows, dtype=torch.int64)
    return blk.to(device), seg.to(device)


def multi_apply_plan(masters, outs, *, masks=None, key_rows=None, block: int | None = None) -> MultiPlan:
    """Plan for `triton_apply_probes_multi`: out[k] ([M, *master[k].shape], contiguous) receives the
    M probes of master[k]. key_rows[k] (default k) is master k's row of the [P, M, w] keys tensor."""
    masters, outs = list(masters), list(outs)
    if not masters or len(outs) != len(masters):
        raise ValueError(f"need one out buffer per master, got {len(masters)} masters and {len(outs)} outs")
    dev = masters[0].device
    for t in masters:
        _check_tensor(t, "master")
    mk, ok = _uniform(masters, "master", dev), _uniform(outs, "out", dev)
    M = outs[0].shape[0] if outs[0].dim() else 0
    for m, o in zip(masters, outs):
        if o.numel() != M * m.numel() or (o.shape[0] if o.dim() else 0) != M:
            raise ValueError(f"out {tuple(o.shape)} is not [M={M}, *{tuple(m.shape)}]")
    pms = _plan_masks(masks, masters)
    rows_k = list(range(len(masters))) if key_rows is None else [int(r) for r in key_rows]
    blk_sz = _block(block, PROBE_BLOCK)
    rows = [[_ptr_view(m).data_ptr(), _ptr_view(o).data_ptr(), m.numel(), r, pm.data_ptr() if pm is not None else 0]
            for m, o, r, pm in zip(masters, outs, rows_k, pms)]
    blk, seg = _tables(rows, [m.numel() for m in masters], blk_sz, dev)
    return MultiPlan("apply", (masters, outs, pms), blk, seg, (mk, ok, pms[0] is not None),
                     sum(m.numel() for m in masters), M, blk_sz)


def _plan_masks(masks, masters):
    if masks is None or all(m is None for m in masks):
        return [None] * len(masters)
    if any(m is None for m in masks) or len(masks) != len(masters):
        raise ValueError("a multi-tensor launch needs a mask for every tensor or for none")
    return [_mask_arg(m, t) for m, t in zip(masks, masters)]


def triton_apply_probes_multi(plan: MultiPlan, keys: torch.Tensor, coefs_M, distribution: str = "rademacher", *,
                              dropout_rate: float = 0.0, mulhi: int | None = None) -> None:
    """`triton_apply_probes` for every tensor of `plan` in one launch. keys: int32 [P, M, w] from
    noise_keys_multi (rows as in the plan's key_rows); coefs_M: M floats or an fp32 tensor."""
    if plan.kind != "apply":
        raise ValueError("triton_apply_probes_multi needs a plan from multi_apply_plan")
    ks = _kernels()
    dev = plan.seg.device
    drop = dropout_rate > 0
    if keys.dtype != torch.int32 or keys.dim() != 3 or keys.shape[1] != plan.M or keys.shape[2] < (4 if drop else 2):
        raise ValueError(f"keys must be int32 [P, M={plan.M}, {4 if drop else 2}] from noise_keys_multi, got "
                         f"{keys.dtype} {tuple(keys.shape)}")
    keys = keys.to(dev).contiguous()
    c = _coefs_arg(coefs_M, plan.M, dev)
    if plan.M == 0 or plan.numel == 0:
        return
    mk, ok, has_mask = plan.kinds
    _launch_apply(ks, plan.grid, keys, keys, keys, c, None, plan.M, 0, (plan.blk, plan.seg), mk, ok, has_mask,
                  dropout_rate, distribution, plan.block, mulhi)


def multi_update_plan(masters, *, lives=None, grads=None, masks=None, key_rows=None,
                      block: int | None = None) -> MultiPlan:
    """Plan for `triton_update_multi` over `masters` (updated in place), optionally writing each
    live copy (lives[k]) and/or the fp32 gradient (grads[k]). Without lives and with grads, the
    plan computes gradients only (masters give shape and device and are not read)."""
    masters = list(masters)
    if not masters:
        raise ValueError("a multi-tensor update needs at least one tensor")
    dev = masters[0].device
    for t in masters:
        _check_tensor(t, "master")
    mk = _uniform(masters, "master", dev)
    lk = 0
    for what, ts in (("live", lives), ("grad", grads)):
        if ts is not None:
            ts = list(ts)
            if len(ts) != len(masters) or any(t.numel() != m.numel() for t, m in zip(ts, masters)):
                raise ValueError(f"need one {what} tensor with master's numel per master")
            k = _uniform(ts, what, dev)
            if what == "live":
                lk = k
            elif k != 0:
                raise TypeError("grad tensors must be fp32")
    pms = _plan_masks(masks, masters)
    rows_k = list(range(len(masters))) if key_rows is None else [int(r) for r in key_rows]
    blk_sz = _block(block, UPDATE_BLOCK)
    rows = [[_ptr_view(m).data_ptr(), _ptr_view(lives[i]).data_ptr() if lives is not None else 0,
             grads[i].data_ptr() if grads is not None else 0, m.numel(), rows_k[i],
             pms[i].data_ptr() if pms[i] is not None else 0] for i, m in enumerate(masters)]
    blk, seg = _tables(rows, [m.numel() for m in masters], blk_sz, dev)
    return MultiPlan("update", (masters, lives, grads, pms), blk, seg,
                     (mk, lk, pms[0] is not None, lives is not None, grads is not None),
                     sum(m.numel() for m in masters), 0, blk_sz)


@torch.no_grad()
def triton_update_multi(plan: MultiPlan, keys: torch.Tensor, coefs, lr: float = 0.0, weight_decay: float = 0.0,
                        distribution: str = "rademacher", *, dropout_rate: float = 0.0, update: bool = True,
                        mulhi: int | None = None) -> None:
    """`triton_update` (update=True) or `triton_grad` (update=False, the plan's grads receive g) for
    every tensor of `plan` in one launch. keys: int32 [P, n, w] from noise_keys_multi."""
    if plan.kind != "update":
        raise ValueError("triton_update_multi needs a plan from multi_update_plan")
    mk, lk, has_mask, has_live, has_g = plan.kinds
    if not update and not has_g:
        raise ValueError("update=False computes gradients: build the plan with grads=")
    ks = _kernels()
    dev = plan.seg.device
    drop = dropout_rate > 0
    if keys.dtype != torch.int32 or keys.dim() != 3 or keys.shape[2] < (4 if drop else 2):
        raise ValueError(f"keys must be int32 [P, n, {4 if drop else 2}] from noise_keys_multi, got "
                         f"{keys.dtype} {tuple(keys.shape)}")
    keys = keys.to(dev).contiguous()
    n = keys.shape[1]
    c = _coefs_arg(coefs, n, dev)
    if plan.numel == 0:
        return
    _launch_update(ks, None, None, None, keys, c, None, n, _lr_arg(lr), float(weight_decay), float(dropout_rate),
                   distribution, update, plan.block, mulhi, grid=plan.grid, tables=(plan.blk, plan.seg),
                   kinds=(mk, lk, has_mask, has_live and update, has_g))


def update_bytes_per_element(master_dtype=torch.float32, live_dtype=torch.bfloat16) -> int:
    """HBM bytes the update moves per element: read master, write master, write live."""
    mb = torch.empty((), dtype=master_dtype).element_size()
    lb = torch.empty((), dtype=live_dtype).element_size() if live_dtype is not None else 0
    return 2 * mb + lb

