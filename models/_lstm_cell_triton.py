"""Triton kernel of the fused LSTM cell (imported lazily by models/lstm_fused.py: needs triton)."""
import os

import triton
import triton.language as tl

from models.lstm_fused import interpreted


def _fast_act_mode() -> int:
    """ZO_FAST_ACT: unset or 'auto' -> 1 (fast activations where the state is bf16/fp16), '0' -> 0
    (never), '1' -> 2 (always). The interpreter always runs the exact form."""
    if interpreted():
        return 0
    v = os.environ.get("ZO_FAST_ACT", "auto").strip().lower()
    if v not in ("auto", "", "0", "1"):
        raise ValueError(f"ZO_FAST_ACT={v!r}: use 0 (exact activations), 1 (hardware tanh) or auto")
    return {"0": 0, "1": 2}.get(v, 1)


# The cell's activations: exact (exp and a division: two special-function ops each), or fast: from
# the hardware tanh (tanh.approx.f32, max relative error about 2^-11; sigmoid(x) = (1 + tanh(x/2))/2),
# one op each. The cell is bound by these ops (5 activations per unit), and with a bf16 state the
# h it writes is rounded to 2^-8 anyway, so by default (FAST_ACT 1) a kernel takes the fast form
# when its h is bf16/fp16 and the exact form for fp32. Each kernel decides at compile time:
#     FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and h_ptr.dtype.element_ty != tl.float32)
FAST_ACT = tl.constexpr(_fast_act_mode())


@triton.jit
def _tanh_approx(x):
    return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=tl.float32, is_pure=True,
                                     pack=1)


@triton.jit
def _sigmoid(x, FAST: tl.constexpr):
    if FAST:
        return 0.5 * _tanh_approx(0.5 * x) + 0.5
    else:
        return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _tanh(x, FAST: tl.constexpr):
    if FAST:
        return _tanh_approx(x)
    else:
        # 1 - 2 / (exp(2x) + 1): exact limits +-1 for large |x| (exp overflows to inf, never NaN)
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def lstm_cell_kernel(pre_ptr, c_ptr, h_ptr, total, Dp, BLOCK: tl.constexpr):
    """c <- sig(f) c + sig(i) tanh(z); h <- sig(o) tanh(c). pre rows hold [i | f | z | o] blocks of Dp."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and h_ptr.dtype.element_ty != tl.float32)
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    row = offs // Dp
    d = offs - row * Dp
    base = row * (4 * Dp) + d
    i = tl.load(pre_ptr + base, mask=mask, other=0.0).to(tl.float32)
    f = tl.load(pre_ptr + base + Dp, mask=mask, other=0.0).to(tl.float32)
    z = tl.load(pre_ptr + base + 2 * Dp, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(pre_ptr + base + 3 * Dp, mask=mask, other=0.0).to(tl.float32)
    c = tl.load(c_ptr + offs, mask=mask, other=0.0)
    c_new = _sigmoid(f, FAST) * c + _sigmoid(i, FAST) * _tanh(z, FAST)
    h = _sigmoid(o, FAST) * _tanh(c_new, FAST)
    tl.store(c_ptr + offs, c_new, mask=mask)
    tl.store(h_ptr + offs, h.to(h_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _cell_coords(total, Dp, B, N, BLOCK: tl.constexpr):
    """This program's BLOCK elements of a [K*N*B, Dp] state (rows ordered model k, head n, batch b):
    (offsets, in-range mask, row, unit d, head k*N + n, batch b, model k, head n)."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    row = offs // Dp
    d = offs - row * Dp
    head = row // B
    b = row - head * B
    k = head // N
    n = head - k * N
    return offs, mask, row, d, head, b, k, n


@triton.jit
def lstm_cell_out_kernel(pre_ptr, bias_ptr, c_ptr, h_ptr, hs_ptr, total, Dp, B, N, h_stride, hs_k_stride,
                         BLOCK: tl.constexpr):
    """Cell update for the fused chunk forward.

    pre [R, 4*Dp] with R = K*N*B rows ordered (model k, head n, batch b); bias [K*N, 4*Dp] fp32;
    c [R, Dp] fp32 in place; h is written twice: into the next step's GEMM operand (row stride
    h_stride) and into hs, laid out [K, (T,) B, N*Dp] so the output projection is one GEMM per model."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and h_ptr.dtype.element_ty != tl.float32)
    offs, mask, row, d, head, b, k, n = _cell_coords(total, Dp, B, N, BLOCK)
    base = row * (4 * Dp) + d
    bb = head * (4 * Dp) + d
    i = tl.load(pre_ptr + base, mask=mask, other=0.0).to(tl.float32) + tl.load(bias_ptr + bb, mask=mask, other=0.0)
    f = tl.load(pre_ptr + base + Dp, mask=mask, other=0.0).to(tl.float32) + tl.load(bias_ptr + bb + Dp, mask=mask, other=0.0)
    z = tl.load(pre_ptr + base + 2 * Dp, mask=mask, other=0.0).to(tl.float32) + tl.load(bias_ptr + bb + 2 * Dp, mask=mask, other=0.0)
    o = tl.load(pre_ptr + base + 3 * Dp, mask=mask, other=0.0).to(tl.float32) + tl.load(bias_ptr + bb + 3 * Dp, mask=mask, other=0.0)
    c = tl.load(c_ptr + offs, mask=mask, other=0.0)
    c_new = _sigmoid(f, FAST) * c + _sigmoid(i, FAST) * _tanh(z, FAST)
    h = _sigmoid(o, FAST) * _tanh(c_new, FAST)
    tl.store(c_ptr + offs, c_new, mask=mask)
    tl.store(h_ptr + row * h_stride + d, h.to(h_ptr.dtype.element_ty), mask=mask)
    tl.store(hs_ptr + k * hs_k_stride + b * (N * Dp) + n * Dp + d, h.to(hs_ptr.dtype.element_ty), mask=mask)


@triton.jit
def lstm_cell_gather_kernel(pre_ptr, g_ptr, tok_ptr, c_ptr, a_ptr, hs_ptr, total, B, N, V, tok_stride_b, t,
                            stride_hs_k, Dk: tl.constexpr, BLOCK: tl.constexpr):
    """The cell after a cuBLAS recurrent GEMM (the `split` form of the fused chunk forward).

    pre [K*N*B, 4*Dk] (rows (k, n, b), gate-major blocks of Dk) from h @ W; the input gates and bias
    are gathered per token from g [K, V, N, 4*Dk] (tok [B, *], column t); c [K*N, B, Dk] fp32 in
    place; h goes to a [K*N, B, Dk] (the next step's GEMM operand) and to hs, element (k, b, n, d)
    at k*stride_hs_k + b*N*Dk + n*Dk + d."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and a_ptr.dtype.element_ty != tl.float32)
    offs, mask, row, d, head, b, k, n = _cell_coords(total, Dk, B, N, BLOCK)
    tok = tl.load(tok_ptr + b * tok_stride_b + t, mask=mask, other=0)
    gb = ((k * V + tok) * N + n) * (4 * Dk) + d
    base = row * (4 * Dk) + d
    i = (tl.load(pre_ptr + base, mask=mask, other=0.0).to(tl.float32)
         + tl.load(g_ptr + gb, mask=mask, other=0.0).to(tl.float32))
    f = (tl.load(pre_ptr + base + Dk, mask=mask, other=0.0).to(tl.float32)
         + tl.load(g_ptr + gb + Dk, mask=mask, other=0.0).to(tl.float32))
    z = (tl.load(pre_ptr + base + 2 * Dk, mask=mask, other=0.0).to(tl.float32)
         + tl.load(g_ptr + gb + 2 * Dk, mask=mask, other=0.0).to(tl.float32))
    o = (tl.load(pre_ptr + base + 3 * Dk, mask=mask, other=0.0).to(tl.float32)
         + tl.load(g_ptr + gb + 3 * Dk, mask=mask, other=0.0).to(tl.float32))
    c = tl.load(c_ptr + offs, mask=mask, other=0.0)
    c_new = _sigmoid(f, FAST) * c + _sigmoid(i, FAST) * _tanh(z, FAST)
    h = (_sigmoid(o, FAST) * _tanh(c_new, FAST)).to(a_ptr.dtype.element_ty)
    tl.store(c_ptr + offs, c_new, mask=mask)
    tl.store(a_ptr + offs, h, mask=mask)
    tl.store(hs_ptr + k * stride_hs_k + b * (N * Dk) + n * Dk + d, h, mask=mask)
