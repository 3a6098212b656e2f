"""Triton kernel of one LSTM time step: the recurrent GEMM with the cell as its epilogue.

Imported lazily by models/lstm_fused.py (needs triton). One program computes, for one head of one
stacked model and a tile of BM batch rows x BD hidden units, all four gates of those units:

    acc[g] = h_prev[rows, :] @ W[head][:, units of gate g]       tensor cores, fp32 accumulation
    pre[g] = acc[g] + G[model, token[rows, t], head, g, units]   the input projection and bias,
                                                                 looked up (fp32) per token
    c      = sig(f) c + sig(i) tanh(z);  h = sig(o) tanh(c)      fp32, c updated in place
    h      -> h_next[rows, units] in the weight dtype

so the [rows, 4*units] pre-activations never leave registers. Heads are zero-padded to Dk (a
multiple of BD and BK): padded units see pre-activation 0 on every gate and keep c = h = 0.

The recurrent weight is stored tile-interleaved, [K*N, Dk, Dk/BD, 4, BD]: the four gates of one
tile of BD units are 4*BD contiguous columns, so a program's weight tile is one dense block (one
TMA box in `lstm_step_tma_kernel`, which loads h and W through tensor descriptors).

`lstm_step_persistent_kernel` is the same step (one-dot form) as a persistent kernel: a fixed grid
of programs (SMs x occupancy) loops over the output tiles, so the software pipeline spans tile
boundaries and the next tile's loads overlap this tile's cell epilogue (a tile's k-loop alone, 5
iterations at Dk 320 and 14 at 896, is too short for the pipeline to reach a steady state).

`lstm_persist_kernel` runs a whole chunk per launch for heads of any size: one program per head and
row tile, the weight streamed per step, h and c read back from memory only that program writes
(L2-resident), a barrier between steps. Opt-in through the tuning file (timed on the H200: slower than
the per-step kernel at large, medium and xlarge).

`lstm_step_wres_kernel` is the per-step kernel with a program's weight tile held in shared memory
across its row tiles (the weight read once a step instead of once per row tile). Timed on the H200:
slower at large (1.63 against 1.28 ms a step), equal at medium; opt-in through the tuning file.

`first_step_gemv_kernel` and `first_step_cell_kernel` run step 0 of a chunk whose initial state is
the same for every batch row (the learned h0, c0): the recurrent term is then one matrix-vector
product per head, and the cell a pass over tiles of rows x units (step-config key `first_gemv`; the
H200's entries for medium, large and xlarge have it: 6-10% faster end to end, 2026-11-29). With
`step1_table` step 1 follows from tables over step 0's token: `first_step_cell_kernel` over the V
tokens gives (h1, c1) per token, `token_table_gemm_kernel` their recurrent term, and
`step1_table_cell_kernel` gathers them per row (3-6% faster at large end to end, bit-equal on the H200).

`input_table_kernel` builds the per-pass input table G = emb @ W_in + b straight into its padded
gate layout (1.4-1.5x faster than a batched GEMM plus a strided copy at large and xlarge on the H200).

Small heads (Dk <= 64: the paper's tiny and small presets) take `lstm_seq_kernel` instead: one
launch per chunk, a program keeps its head's weight, h and c in registers for all the chunk's steps,
so per step and unit only the input gates are read and h written (no c or h round trips, and one
launch instead of one per step).
"""
import triton
import triton.language as tl

from models._lstm_cell_triton import FAST_ACT, _sigmoid, _tanh


@triton.jit
def _split_gates(acc, BM: tl.constexpr, BD: tl.constexpr):
    """[BM, 4*BD] (gate-major blocks of BD) -> four [BM, BD] tensors i, f, z, o."""
    acc = tl.permute(tl.reshape(acc, (BM, 4, BD)), (0, 2, 1))      # [BM, BD, 4]
    acc = tl.reshape(acc, (BM, BD, 2, 2))                          # last axes (g // 2, g % 2)
    even, odd = tl.split(acc)                                      # g % 2 == 0 / 1
    acc_i, acc_z = tl.split(even)
    acc_f, acc_o = tl.split(odd)
    return acc_i, acc_f, acc_z, acc_o


@triton.jit
def _gate_tile_raw(g_rows, col0, rmask, W: tl.constexpr, Dk: tl.constexpr):
    """Input gates [BM, W] each (the table's dtype, 0 where ~rmask) of units col0..col0+W-1 from the
    per-row table rows g_rows ([BM] pointers to G[k, token, n, :], columns g*Dk + d)."""
    gp = g_rows[:, None] + col0 + tl.arange(0, W)[None, :]
    m2 = rmask[:, None]
    return (tl.load(gp, mask=m2, other=0.0), tl.load(gp + Dk, mask=m2, other=0.0),
            tl.load(gp + 2 * Dk, mask=m2, other=0.0), tl.load(gp + 3 * Dk, mask=m2, other=0.0))


@triton.jit
def _gate_tile(g_rows, col0, rmask, W: tl.constexpr, Dk: tl.constexpr):
    """`_gate_tile_raw` in fp32."""
    g_i, g_f, g_z, g_o = _gate_tile_raw(g_rows, col0, rmask, W, Dk)
    return g_i.to(tl.float32), g_f.to(tl.float32), g_z.to(tl.float32), g_o.to(tl.float32)


@triton.jit
def _g_rows(g_ptr, tok, k, n, V, N, Dk: tl.constexpr):
    """[BM] pointers to the table rows G[k, tok, n, :] of G [K, V, N, 4*Dk]."""
    return g_ptr + ((k * V + tok).to(tl.int64) * N + n) * (4 * Dk)


@triton.jit
def _head_rows(pid_m, pid_h, N, B, BM: tl.constexpr):
    """(model k, head n, rows, row mask) of the tile of head pid_h = k*N + n and row tile pid_m."""
    k = pid_h // N
    n = pid_h - k * N
    rows = pid_m * BM + tl.arange(0, BM)
    return k, n, rows, rows < B


@triton.jit
def _gates_gemm(a_ptrs, rmask, w_base, Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
                IEEE: tl.constexpr):
    """acc [BM, 4*BD] fp32 = h[rows, :Dk] @ W[:Dk, tile]: a_ptrs [BM, BK] points at h[rows, 0:BK]
    (rows masked by rmask), w_base at the first column of the weight tile (row stride 4*Dk)."""
    kk = tl.arange(0, BK)
    q = tl.arange(0, 4 * BD)
    acc = tl.zeros((BM, 4 * BD), dtype=tl.float32)
    for k0 in range(0, Dk, BK):
        a = tl.load(a_ptrs + k0, mask=rmask[:, None], other=0.0)
        w = tl.load(w_base + (k0 + kk)[:, None] * (4 * Dk) + q[None, :])
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def _tile_ids(tile, num_m, num_d):
    """(unit tile, row tile, head) of output tile number `tile`: row tiles fastest, then unit tiles,
    so consecutive tiles share one head's weight tile (in L2)."""
    pid_m = tile % num_m
    rest = tile // num_m
    pid_d = rest % num_d
    return pid_d, pid_m, rest // num_d


@triton.jit
def _c_tile(c_in_ptr, pid_d, pid_m, pid_h, B, N, stride_cin_h, stride_cin_b, BM: tl.constexpr, BD: tl.constexpr):
    """c (fp32) of the tile (unit tile pid_d, row tile pid_m, head pid_h); 0 in rows past B."""
    k, n, rows, rmask = _head_rows(pid_m, pid_h, N, B, BM)
    e = tl.arange(0, BD)
    return tl.load(c_in_ptr + pid_h.to(tl.int64) * stride_cin_h + rows[:, None].to(tl.int64) * stride_cin_b
                   + pid_d * BD + e[None, :], mask=rmask[:, None], other=0.0)


@triton.jit
def _c_tile_any(c_in, pid_d, pid_m, pid_h, B, N, stride_cin_h, stride_cin_b, BM: tl.constexpr, BD: tl.constexpr,
                DESC: tl.constexpr):
    """`_c_tile`, or with DESC the same tile through c_in as a tensor descriptor (block [1, BM, BD])."""
    if DESC:
        c = c_in.load([pid_h, pid_m * BM, pid_d * BD]).reshape(BM, BD)
    else:
        c = _c_tile(c_in, pid_d, pid_m, pid_h, B, N, stride_cin_h, stride_cin_b, BM, BD)
    return c


@triton.jit
def _epilogue_loads(g_ptr, tok_ptr, c_in_ptr, pid_d, pid_m, pid_h, B, N, V, tok_stride_b, t, stride_cin_h,
                    stride_cin_b, Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    """The cell's inputs other than the GEMM, for the tile (unit tile pid_d, row tile pid_m, head pid_h):
    the input gates G[token] (table dtype, as loaded) and c (fp32). None depends on the GEMM, so a
    kernel may issue these loads before its k-loop and let their latency hide behind it."""
    g_i, g_f, g_z, g_o = _gate_loads(g_ptr, tok_ptr, pid_d, pid_m, pid_h, B, N, V, tok_stride_b, t, Dk, BM, BD)
    c = _c_tile(c_in_ptr, pid_d, pid_m, pid_h, B, N, stride_cin_h, stride_cin_b, BM, BD)
    return g_i, g_f, g_z, g_o, c


@triton.jit
def _cell_math(acc_i, acc_f, acc_z, acc_o, g_i, g_f, g_z, g_o, c, FAST: tl.constexpr):
    """pre = acc + G[token] (input projection and bias), then the cell in fp32: (c_new, h fp32)."""
    i = acc_i + g_i.to(tl.float32)
    f = acc_f + g_f.to(tl.float32)
    z = acc_z + g_z.to(tl.float32)
    o = acc_o + g_o.to(tl.float32)
    c_new = _sigmoid(f, FAST) * c + _sigmoid(i, FAST) * _tanh(z, FAST)
    return c_new, _sigmoid(o, FAST) * _tanh(c_new, FAST)


@triton.jit
def _cell_finish(acc_i, acc_f, acc_z, acc_o, g_i, g_f, g_z, g_o, c, h_out_ptr, c_out_ptr, pid_d, pid_m, pid_h,
                 B, N, stride_out_k, stride_hb, Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    """`_cell_math`, then c and h out through pointers."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and h_out_ptr.dtype.element_ty != tl.float32)
    k, n, rows, rmask = _head_rows(pid_m, pid_h, N, B, BM)
    e = tl.arange(0, BD)
    m2 = rmask[:, None]
    c_new, h = _cell_math(acc_i, acc_f, acc_z, acc_o, g_i, g_f, g_z, g_o, c, FAST)
    c_off = (pid_h.to(tl.int64) * B + rows[:, None]) * Dk + pid_d * BD + e[None, :]
    tl.store(c_out_ptr + c_off, c_new, mask=m2)
    h_ptrs = (h_out_ptr + k.to(tl.int64) * stride_out_k + rows[:, None].to(tl.int64) * stride_hb
              + n * Dk + pid_d * BD + e[None, :])
    tl.store(h_ptrs, h.to(h_out_ptr.dtype.element_ty), mask=m2)


@triton.jit
def _gate_loads(g_ptr, tok_ptr, pid_d, pid_m, pid_h, B, N, V, tok_stride_b, t, Dk: tl.constexpr, BM: tl.constexpr,
                BD: tl.constexpr):
    """The input gates G[token] of the tile (unit tile pid_d, row tile pid_m, head pid_h), table dtype."""
    k, n, rows, rmask = _head_rows(pid_m, pid_h, N, B, BM)
    tok = tl.load(tok_ptr + rows.to(tl.int64) * tok_stride_b + t, mask=rmask, other=0)
    return _gate_tile_raw(_g_rows(g_ptr, tok, k, n, V, N, Dk), pid_d * BD, rmask, BD, Dk)


@triton.jit
def _cell_epilogue(acc_i, acc_f, acc_z, acc_o, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                   pid_d, pid_m, pid_h, B, N, V, tok_stride_b, t, stride_out_k, stride_hb,
                   stride_cin_h, stride_cin_b, Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr):
    """`_epilogue_loads` then `_cell_finish`: the whole cell after the GEMM."""
    g_i, g_f, g_z, g_o, c = _epilogue_loads(g_ptr, tok_ptr, c_in_ptr, pid_d, pid_m, pid_h, B, N, V, tok_stride_b,
                                            t, stride_cin_h, stride_cin_b, Dk, BM, BD)
    _cell_finish(acc_i, acc_f, acc_z, acc_o, g_i, g_f, g_z, g_o, c, h_out_ptr, c_out_ptr, pid_d, pid_m, pid_h,
                 B, N, stride_out_k, stride_hb, Dk, BM, BD)


@triton.jit
def lstm_step_kernel(h_in_ptr, h_out_ptr, w_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                     B, N, V, tok_stride_b, t, stride_in_k, stride_in_b, stride_out_k, stride_hb,
                     stride_cin_h, stride_cin_b,
                     Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
                     ONE_DOT: tl.constexpr, IEEE: tl.constexpr, PREFETCH: tl.constexpr = False):
    """Grid (Dk // BD, cdiv(B, BM), K * N). PREFETCH: load the cell's other inputs (G[token], c)
    before the GEMM, so that their latency overlaps it (they then hold registers through the k-loop).

    h_in:  element (k, b, n, d) at k*stride_in_k + b*stride_in_b + n*Dk + d (stride_in_b 0: broadcast)
    h_out: element (k, b, n, d) at k*stride_out_k + b*stride_hb + n*Dk + d (weight dtype)
    w:   [K*N, Dk, Dk/BD, 4, BD]  tile-interleaved gates (weight dtype, zero padding)
    g:   [K, V, N, 4*Dk]   input projection + bias per token, column g*Dk + d (zero padding)
    tok: [B, *] int64 tokens, column t is this step's
    c_in:  element (head, b, d) at head*stride_cin_h + b*stride_cin_b + d, fp32 (stride_cin_b 0: broadcast)
    c_out: [K*N, B, Dk] fp32 (may be c_in itself: each program reads and writes only its own tile)"""
    pid_d = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_h = tl.program_id(2)
    k, n, rows, rmask = _head_rows(pid_m, pid_h, N, B, BM)
    if PREFETCH:
        g_i, g_f, g_z, g_o, c = _epilogue_loads(g_ptr, tok_ptr, c_in_ptr, pid_d, pid_m, pid_h, B, N, V,
                                                tok_stride_b, t, stride_cin_h, stride_cin_b, Dk, BM, BD)
    kk = tl.arange(0, BK)
    e = tl.arange(0, BD)
    a_ptrs = (h_in_ptr + k.to(tl.int64) * stride_in_k + rows[:, None].to(tl.int64) * stride_in_b
              + n * Dk + kk[None, :])
    w_base = w_ptr + pid_h.to(tl.int64) * (Dk * 4 * Dk) + pid_d * (4 * BD)
    if ONE_DOT:
        # one dense [BK, 4*BD] weight tile and one accumulator
        acc_i, acc_f, acc_z, acc_o = _split_gates(_gates_gemm(a_ptrs, rmask, w_base, Dk, BM, BD, BK, IEEE), BM, BD)
    else:
        acc_i = tl.zeros((BM, BD), dtype=tl.float32)
        acc_f = tl.zeros((BM, BD), dtype=tl.float32)
        acc_z = tl.zeros((BM, BD), dtype=tl.float32)
        acc_o = tl.zeros((BM, BD), dtype=tl.float32)
        for k0 in range(0, Dk, BK):
            a = tl.load(a_ptrs + k0, mask=rmask[:, None], other=0.0)
            wp = w_base + (k0 + kk)[:, None] * (4 * Dk) + e[None, :]
            w_i = tl.load(wp)
            w_f = tl.load(wp + BD)
            w_z = tl.load(wp + 2 * BD)
            w_o = tl.load(wp + 3 * BD)
            if IEEE:
                acc_i = tl.dot(a, w_i, acc_i, input_precision="ieee")
                acc_f = tl.dot(a, w_f, acc_f, input_precision="ieee")
                acc_z = tl.dot(a, w_z, acc_z, input_precision="ieee")
                acc_o = tl.dot(a, w_o, acc_o, input_precision="ieee")
            else:
                acc_i = tl.dot(a, w_i, acc_i)
                acc_f = tl.dot(a, w_f, acc_f)
                acc_z = tl.dot(a, w_z, acc_z)
                acc_o = tl.dot(a, w_o, acc_o)
    if not PREFETCH:
        g_i, g_f, g_z, g_o, c = _epilogue_loads(g_ptr, tok_ptr, c_in_ptr, pid_d, pid_m, pid_h, B, N, V,
                                                tok_stride_b, t, stride_cin_h, stride_cin_b, Dk, BM, BD)
    _cell_finish(acc_i, acc_f, acc_z, acc_o, g_i, g_f, g_z, g_o, c, h_out_ptr, c_out_ptr, pid_d, pid_m, pid_h,
                 B, N, stride_out_k, stride_hb, Dk, BM, BD)


@triton.jit
def lstm_step_tma_kernel(a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                         B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b,
                         Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
                         IEEE: tl.constexpr, PREFETCH: tl.constexpr = False, TMA_EPI: tl.constexpr = False):
    """`lstm_step_kernel` (one-dot form) with h and W read through tensor descriptors (TMA on Hopper):
    a_desc over h_in viewed [K, B, N*Dk] with block [1, BM, BK]; w_desc over W [K*N, Dk, 4*Dk] with
    block [1, BK, 4*BD]. h_in must not broadcast (a descriptor needs nonzero strides).
    TMA_EPI: c_in_ptr, c_out_ptr and h_out_ptr are descriptors too (c over [K*N, B, Dk], h_out over
    [K, B, N*Dk], blocks [1, BM, BD]): c is loaded and c and h stored as whole tiles, with no per-element
    addresses and no register layout change on the way to or from memory (c_in must not broadcast).
    15% fewer instructions at large, yet 3-7% slower at large, xlarge and medium on the H200
    (`step_kernel_sweep_2026-11-28_222323`): the c tile's load and the stores' completion now wait
    on the copy engine; kept for the sweep's `all` grid."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and g_ptr.dtype.element_ty != tl.float32)
    pid_d = tl.program_id(0)
    pid_m = tl.program_id(1)
    pid_h = tl.program_id(2)
    k = pid_h // N
    n = pid_h - k * N
    if PREFETCH:
        g_i, g_f, g_z, g_o = _gate_loads(g_ptr, tok_ptr, pid_d, pid_m, pid_h, B, N, V, tok_stride_b, t, Dk, BM, BD)
        c = _c_tile_any(c_in_ptr, pid_d, pid_m, pid_h, B, N, stride_cin_h, stride_cin_b, BM, BD, TMA_EPI)
    acc = tl.zeros((BM, 4 * BD), dtype=tl.float32)
    for k0 in range(0, Dk, BK):
        a = a_desc.load([k, pid_m * BM, n * Dk + k0]).reshape(BM, BK)
        w = w_desc.load([pid_h, k0, pid_d * (4 * BD)]).reshape(BK, 4 * BD)
        if IEEE:
            acc = tl.dot(a, w, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, w, acc)
    acc_i, acc_f, acc_z, acc_o = _split_gates(acc, BM, BD)
    if not PREFETCH:
        g_i, g_f, g_z, g_o = _gate_loads(g_ptr, tok_ptr, pid_d, pid_m, pid_h, B, N, V, tok_stride_b, t, Dk, BM, BD)
        c = _c_tile_any(c_in_ptr, pid_d, pid_m, pid_h, B, N, stride_cin_h, stride_cin_b, BM, BD, TMA_EPI)
    if TMA_EPI:
        c_new, h = _cell_math(acc_i, acc_f, acc_z, acc_o, g_i, g_f, g_z, g_o, c, FAST)
        c_out_ptr.store([pid_h, pid_m * BM, pid_d * BD], c_new.reshape(1, BM, BD))
        h_out_ptr.store([k, pid_m * BM, n * Dk + pid_d * BD], h.to(g_ptr.dtype.element_ty).reshape(1, BM, BD))
    else:
        _cell_finish(acc_i, acc_f, acc_z, acc_o, g_i, g_f, g_z, g_o, c, h_out_ptr, c_out_ptr, pid_d, pid_m, pid_h,
                     B, N, stride_out_k, stride_hb, Dk, BM, BD)


@triton.jit
def lstm_step_persistent_kernel(h_in_ptr, h_out_ptr, w_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                                B, N, V, tok_stride_b, t, stride_in_k, stride_in_b, stride_out_k, stride_hb,
                                stride_cin_h, stride_cin_b, KN,
                                Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
                                IEEE: tl.constexpr, NUM_PROGRAMS: tl.constexpr, WS: tl.constexpr):
    """`lstm_step_kernel` (one-dot form; same arguments and layouts, KN = K*N heads) as a persistent
    kernel: grid (NUM_PROGRAMS,), at most the number of tiles; program p takes tiles p, p + NUM_PROGRAMS, ...
    of the KN * cdiv(B, BM) * Dk/BD output tiles (`_tile_ids`: row tiles fastest). The tile loop is
    flattened with the k-loop, so the pipeline issues the next tile's loads during this tile's cell.
    WS: ask the compiler to warp-specialize the loop (Triton 3.6 leaves it unpartitioned on sm_90).
    c_out may be c_in: every tile reads and writes only its own rows and units."""
    start = tl.program_id(0)
    num_m = tl.cdiv(B, BM)
    num_d: tl.constexpr = Dk // BD
    num_tiles = KN * num_m * num_d
    kk = tl.arange(0, BK)
    # the epilogue's tile ids come from their own counter, as in Triton's persistent matmul tutorial
    # (its workaround for a pipeliner bug on values used by both the loads and the epilogue)
    tile_c = start - NUM_PROGRAMS
    for tile in tl.range(start, num_tiles, NUM_PROGRAMS, flatten=True, warp_specialize=WS):
        pid_d, pid_m, pid_h = _tile_ids(tile, num_m, num_d)
        k, n, rows, rmask = _head_rows(pid_m, pid_h, N, B, BM)
        a_ptrs = (h_in_ptr + k.to(tl.int64) * stride_in_k + rows[:, None].to(tl.int64) * stride_in_b
                  + n * Dk + kk[None, :])
        w_base = w_ptr + pid_h.to(tl.int64) * (Dk * 4 * Dk) + pid_d * (4 * BD)
        acc = _gates_gemm(a_ptrs, rmask, w_base, Dk, BM, BD, BK, IEEE)
        tile_c += NUM_PROGRAMS
        cd, cm, ch = _tile_ids(tile_c, num_m, num_d)
        acc_i, acc_f, acc_z, acc_o = _split_gates(acc, BM, BD)
        _cell_epilogue(acc_i, acc_f, acc_z, acc_o, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                       cd, cm, ch, B, N, V, tok_stride_b, t, stride_out_k, stride_hb,
                       stride_cin_h, stride_cin_b, Dk, BM, BD)


WRES_MAX_CHUNKS = 8  # the weight-resident kernel holds Dk / BK <= 8 weight chunks


@triton.jit
def _w_chunk(w_base, i: tl.constexpr, Dk: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr):
    """Rows i*BK..(i+1)*BK-1 of a program's weight tile [Dk, 4*BD] (w_base: its first column; row stride 4*Dk)."""
    kk = tl.arange(0, BK)
    return tl.load(w_base + (i * BK + kk)[:, None] * (4 * Dk) + tl.arange(0, 4 * BD)[None, :])


@triton.jit
def _dot_chunk(acc, a_ptrs, m2, w, i: tl.constexpr, BK: tl.constexpr, IEEE: tl.constexpr):
    """acc + h[rows, i*BK:(i+1)*BK] @ w (a_ptrs: [BM, BK] pointers at h[rows, 0:BK])."""
    a = tl.load(a_ptrs + i * BK, mask=m2, other=0.0)
    if IEEE:
        acc = tl.dot(a, w, acc, input_precision="ieee")
    else:
        acc = tl.dot(a, w, acc)
    return acc


@triton.jit
def lstm_step_wres_kernel(h_in_ptr, h_out_ptr, w_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                          B, N, V, tok_stride_b, t, stride_in_k, stride_in_b, stride_out_k, stride_hb,
                          stride_cin_h, stride_cin_b, ROW_TILES,
                          Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr, BK: tl.constexpr,
                          IEEE: tl.constexpr, PREFETCH: tl.constexpr = False):
    """`lstm_step_kernel` (one-dot form; same arguments and layouts) with the weight tile resident:
    grid (Dk // BD, cdiv(cdiv(B, BM), ROW_TILES), K * N). A program loads its weight tile
    W[head][:, units of tile pid_d] ([Dk, 4*BD], as Dk / BK chunks the compiler keeps in shared
    memory) once, then loops over ROW_TILES row tiles of BM rows: per row tile only h[rows, :]
    is read. The per-step kernel reads the weight tile once per row tile (16 times a step at
    B = 1024, BM = 64), which at Dk = 320 is 4/5 of its L2 traffic. Measured on the H200
    (`step_kernel_sweep_2026-11-28_221033`): large 1.63 ms a step at best (BD 64, BM 128, 8 warps) against
    1.28 ms for the per-step kernel in the same run, medium 1.036 against 1.038 ms: the per-step kernel
    is bound by latency, not by L2 traffic, and a weight tile of 160 KB leaves room for one program per
    SM and no pipelining of the h loads."""
    NKC: tl.constexpr = Dk // BK
    tl.static_assert(NKC <= 8, "the weight-resident kernel holds at most 8 weight chunks (Dk / BK <= 8)")
    pid_d = tl.program_id(0)
    pid_s = tl.program_id(1)
    pid_h = tl.program_id(2)
    w_base = w_ptr + pid_h.to(tl.int64) * (Dk * 4 * Dk) + pid_d * (4 * BD)
    w0 = _w_chunk(w_base, 0, Dk, BD, BK)
    if NKC > 1:
        w1 = _w_chunk(w_base, 1, Dk, BD, BK)
    if NKC > 2:
        w2 = _w_chunk(w_base, 2, Dk, BD, BK)
    if NKC > 3:
        w3 = _w_chunk(w_base, 3, Dk, BD, BK)
    if NKC > 4:
        w4 = _w_chunk(w_base, 4, Dk, BD, BK)
    if NKC > 5:
        w5 = _w_chunk(w_base, 5, Dk, BD, BK)
    if NKC > 6:
        w6 = _w_chunk(w_base, 6, Dk, BD, BK)
    if NKC > 7:
        w7 = _w_chunk(w_base, 7, Dk, BD, BK)
    kk = tl.arange(0, BK)
    m_lo = pid_s * ROW_TILES
    m_hi = tl.minimum(m_lo + ROW_TILES, tl.cdiv(B, BM))
    for pid_m in range(m_lo, m_hi):
        k, n, rows, rmask = _head_rows(pid_m, pid_h, N, B, BM)
        if PREFETCH:
            g_i, g_f, g_z, g_o, c = _epilogue_loads(g_ptr, tok_ptr, c_in_ptr, pid_d, pid_m, pid_h, B, N, V,
                                                    tok_stride_b, t, stride_cin_h, stride_cin_b, Dk, BM, BD)
        a_ptrs = (h_in_ptr + k.to(tl.int64) * stride_in_k + rows[:, None].to(tl.int64) * stride_in_b
                  + n * Dk + kk[None, :])
        m2 = rmask[:, None]
        acc = _dot_chunk(tl.zeros((BM, 4 * BD), dtype=tl.float32), a_ptrs, m2, w0, 0, BK, IEEE)
        if NKC > 1:
            acc = _dot_chunk(acc, a_ptrs, m2, w1, 1, BK, IEEE)
        if NKC > 2:
            acc = _dot_chunk(acc, a_ptrs, m2, w2, 2, BK, IEEE)
        if NKC > 3:
            acc = _dot_chunk(acc, a_ptrs, m2, w3, 3, BK, IEEE)
        if NKC > 4:
            acc = _dot_chunk(acc, a_ptrs, m2, w4, 4, BK, IEEE)
        if NKC > 5:
            acc = _dot_chunk(acc, a_ptrs, m2, w5, 5, BK, IEEE)
        if NKC > 6:
            acc = _dot_chunk(acc, a_ptrs, m2, w6, 6, BK, IEEE)
        if NKC > 7:
            acc = _dot_chunk(acc, a_ptrs, m2, w7, 7, BK, IEEE)
        acc_i, acc_f, acc_z, acc_o = _split_gates(acc, BM, BD)
        if not PREFETCH:
            g_i, g_f, g_z, g_o, c = _epilogue_loads(g_ptr, tok_ptr, c_in_ptr, pid_d, pid_m, pid_h, B, N, V,
                                                    tok_stride_b, t, stride_cin_h, stride_cin_b, Dk, BM, BD)
        _cell_finish(acc_i, acc_f, acc_z, acc_o, g_i, g_f, g_z, g_o, c, h_out_ptr, c_out_ptr, pid_d, pid_m, pid_h,
                     B, N, stride_out_k, stride_hb, Dk, BM, BD)


@triton.jit
def _gather_gates(g_ptr, tok_rows, t, rmask, k, n, V, N, Dk: tl.constexpr):
    """The input gates G[k, token[rows, t], n] as four [BM, Dk] fp32 tensors (0 where ~rmask)."""
    tok = tl.load(tok_rows + t, mask=rmask, other=0)
    return _gate_tile(_g_rows(g_ptr, tok, k, n, V, N, Dk), 0, rmask, Dk, Dk)


@triton.jit
def lstm_seq_kernel(h_in_ptr, hs_ptr, w_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                    B, N, V, T, tok_stride_b, stride_in_k, stride_in_b, stride_hs_k, stride_hs_t,
                    stride_cin_h, stride_cin_b, Dk: tl.constexpr, BM: tl.constexpr, T_LOOP: tl.constexpr,
                    IEEE: tl.constexpr, PREFETCH: tl.constexpr):
    """All T steps of a chunk in one launch, for heads small enough to live in one program.

    Grid (cdiv(B, BM), K * N). A program owns one head of one stacked model and BM batch rows for
    the whole chunk: the head's recurrent weight [Dk, 4*Dk] is loaded once, and h and c stay in
    registers from step to step; per step it only gathers the input gates G[token] and writes h to
    hs. The recurrence of one head needs no other head's state, so no program waits for another.
    The arithmetic is `lstm_step_kernel`'s (h rounded to the weight dtype before each GEMM, c in
    fp32); only the order of the GEMM's fp32 sums may differ.

    h_in:  element (k, b, n, d) at k*stride_in_k + b*stride_in_b + n*Dk + d (stride_in_b 0: broadcast)
    hs:    element (k, t, b, n, d) at k*stride_hs_k + t*stride_hs_t + b*N*Dk + n*Dk + d
    w:     [K*N, Dk, 4*Dk], gate-major columns (tile-interleaved with BD = Dk)
    g:     [K, V, N, 4*Dk];  tok: [B, T] (row stride tok_stride_b), int64
    c_in:  element (head, b, d) at head*stride_cin_h + b*stride_cin_b + d (fp32, may broadcast)
    c_out: [K*N, B, Dk] fp32 (may be c_in: each program reads its rows before writing them)
    T_LOOP: T as a compile-time bound (the interpreter needs one), or -1 to loop to T at run time.
    PREFETCH: gather step t+1's input gates before step t's cell math, so that their latency hides
    behind it (the gathers do not depend on the recurrence)."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and hs_ptr.dtype.element_ty != tl.float32)
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    k, n, rows, rmask = _head_rows(pid_m, pid_h, N, B, BM)
    m2 = rmask[:, None]
    d = tl.arange(0, Dk)
    q = tl.arange(0, 4 * Dk)
    w = tl.load(w_ptr + pid_h.to(tl.int64) * (Dk * 4 * Dk) + d[:, None] * (4 * Dk) + q[None, :])
    h = tl.load(h_in_ptr + k.to(tl.int64) * stride_in_k + rows[:, None].to(tl.int64) * stride_in_b + n * Dk
                + d[None, :], mask=m2, other=0.0)
    c = tl.load(c_in_ptr + pid_h.to(tl.int64) * stride_cin_h + rows[:, None].to(tl.int64) * stride_cin_b
                + d[None, :], mask=m2, other=0.0)
    hs_rows = hs_ptr + k.to(tl.int64) * stride_hs_k + rows[:, None].to(tl.int64) * (N * Dk) + n * Dk + d[None, :]
    tok_rows = tok_ptr + rows.to(tl.int64) * tok_stride_b
    if PREFETCH:
        x_i, x_f, x_z, x_o = _gather_gates(g_ptr, tok_rows, 0, rmask, k, n, V, N, Dk)
    for t in range(0, T_LOOP if T_LOOP >= 0 else T):
        if IEEE:
            acc = tl.dot(h, w, input_precision="ieee")
        else:
            acc = tl.dot(h, w)
        acc_i, acc_f, acc_z, acc_o = _split_gates(acc, BM, Dk)
        if PREFETCH:
            i = acc_i + x_i
            f = acc_f + x_f
            z = acc_z + x_z
            o = acc_o + x_o
            x_i, x_f, x_z, x_o = _gather_gates(g_ptr, tok_rows, t + 1, rmask & (t + 1 < T), k, n, V, N, Dk)
        else:
            g_i, g_f, g_z, g_o = _gather_gates(g_ptr, tok_rows, t, rmask, k, n, V, N, Dk)
            i = acc_i + g_i
            f = acc_f + g_f
            z = acc_z + g_z
            o = acc_o + g_o
        c = _sigmoid(f, FAST) * c + _sigmoid(i, FAST) * _tanh(z, FAST)
        h = (_sigmoid(o, FAST) * _tanh(c, FAST)).to(hs_ptr.dtype.element_ty)
        tl.store(hs_rows + t * stride_hs_t.to(tl.int64), h, mask=m2)
    tl.store(c_out_ptr + (pid_h.to(tl.int64) * B + rows[:, None]) * Dk + d[None, :], c, mask=m2)


@triton.jit
def lstm_persist_kernel(h_in_ptr, hs_ptr, w_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                        B, N, V, T, tok_stride_b, stride_in_k, stride_in_b, stride_hs_k, stride_hs_t,
                        stride_cin_h, stride_cin_b, Dk: tl.constexpr, BM: tl.constexpr, BD: tl.constexpr,
                        BK: tl.constexpr, T_LOOP: tl.constexpr, IEEE: tl.constexpr):
    """All T steps of a chunk in one launch for heads of any size (grid (cdiv(B, BM), K * N)).

    A program owns one head and BM batch rows for the whole chunk, as in `lstm_seq_kernel`, but the
    head's weight is streamed per step (from L2: the programs of one head share it) and the state is
    not held in registers: each step loops over the head's unit tiles of BD, computing all four gates
    of a tile (`lstm_step_kernel`'s one-dot form), and reads h_{t-1} from hs[:, t-1] and c from c_out,
    which only this program writes, so both stay in L2 between steps. A barrier between steps makes
    one step's writes visible to the next step's reads of every warp of the program.
    Layouts as in `lstm_seq_kernel`, with w tiled for BD (`tile_recurrent_weight`)."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and hs_ptr.dtype.element_ty != tl.float32)
    pid_m = tl.program_id(0)
    pid_h = tl.program_id(1)
    k, n, rows, rmask = _head_rows(pid_m, pid_h, N, B, BM)
    m2 = rmask[:, None]
    kk = tl.arange(0, BK)
    e = tl.arange(0, BD)
    w_head = w_ptr + pid_h.to(tl.int64) * (Dk * 4 * Dk)
    c_rows = c_out_ptr + (pid_h.to(tl.int64) * B + rows[:, None]) * Dk
    cin_rows = c_in_ptr + pid_h.to(tl.int64) * stride_cin_h + rows[:, None].to(tl.int64) * stride_cin_b
    for j in range(0, Dk // BD):                 # c_in -> c_out for these rows (c_out may be c_in)
        cv = tl.load(cin_rows + j * BD + e[None, :], mask=m2, other=0.0)
        tl.store(c_rows + j * BD + e[None, :], cv, mask=m2)
    hs_rows = hs_ptr + k.to(tl.int64) * stride_hs_k + rows[:, None].to(tl.int64) * (N * Dk) + n * Dk
    h0_rows = h_in_ptr + k.to(tl.int64) * stride_in_k + rows[:, None].to(tl.int64) * stride_in_b + n * Dk
    tok_rows = tok_ptr + rows.to(tl.int64) * tok_stride_b
    for t in range(0, T_LOOP if T_LOOP >= 0 else T):
        tl.debug_barrier()                       # step t-1's h and c, written by every warp, are visible
        if t == 0:
            a_rows = h0_rows
        else:
            a_rows = hs_rows + (t - 1) * stride_hs_t.to(tl.int64)
        g_rows = _g_rows(g_ptr, tl.load(tok_rows + t, mask=rmask, other=0), k, n, V, N, Dk)
        for j in range(0, Dk // BD):
            acc = _gates_gemm(a_rows + kk[None, :], rmask, w_head + j * (4 * BD), Dk, BM, BD, BK, IEEE)
            acc_i, acc_f, acc_z, acc_o = _split_gates(acc, BM, BD)
            g_i, g_f, g_z, g_o = _gate_tile(g_rows, j * BD, rmask, BD, Dk)
            i = acc_i + g_i
            f = acc_f + g_f
            z = acc_z + g_z
            o = acc_o + g_o
            c = tl.load(c_rows + j * BD + e[None, :], mask=m2, other=0.0)
            c = _sigmoid(f, FAST) * c + _sigmoid(i, FAST) * _tanh(z, FAST)
            h = _sigmoid(o, FAST) * _tanh(c, FAST)
            tl.store(c_rows + j * BD + e[None, :], c, mask=m2)
            tl.store(hs_rows + t * stride_hs_t.to(tl.int64) + j * BD + e[None, :], h.to(hs_ptr.dtype.element_ty), mask=m2)


@triton.jit
def tile_weight_kernel(r_ptr, w_ptr, N, D, Dk, J, ROWS: tl.constexpr, BD: tl.constexpr):
    """The recurrent weight R [K, 4, N, D, D] (contiguous) in the step kernels' layout
    W [K*N, Dk, J, 4, BD] (J = Dk / BD), zero-padded. Grid (cdiv(Dk, ROWS), J, K*N): a program
    writes rows i0..i0+ROWS-1 of unit tile j for all four gates, each a run of BD contiguous
    elements loaded from one row of one gate's matrix (zero past D). Every element of W is written
    exactly once, so W needs no prior fill."""
    pid_i = tl.program_id(0)
    j = tl.program_id(1)
    kn = tl.program_id(2)
    k = kn // N
    n = kn - k * N
    rows = pid_i * ROWS + tl.arange(0, ROWS)
    cols = j * BD + tl.arange(0, BD)
    m = (rows < D)[:, None] & (cols < D)[None, :]
    out_rows = rows < Dk
    for g in range(4):
        src = r_ptr + (((k * 4 + g) * N + n).to(tl.int64) * D + rows[:, None]) * D + cols[None, :]
        v = tl.load(src, mask=m, other=0.0)
        dst = w_ptr + ((kn.to(tl.int64) * Dk + rows[:, None]) * J + j) * (4 * BD) + g * BD + tl.arange(0, BD)[None, :]
        tl.store(dst, v, mask=out_rows[:, None])


@triton.jit
def input_table_kernel(e_ptr, w_ptr, b_ptr, g_ptr, V, N, D, Dk, I: tl.constexpr, BV: tl.constexpr,
                       BU: tl.constexpr, BI: tl.constexpr, IEEE: tl.constexpr, COLS_FIRST: tl.constexpr = False,
                       CPB: tl.constexpr = 1):
    """The input table G [K, V, N, 4, Dk] = e @ W_in + b written straight into its padded gate layout:
    e [K, V, I], W_in [K, I, 4*N*D] (columns ordered gate, head, unit), b [K, 4*N*D], all contiguous and
    in the weight dtype; products and bias summed in fp32, rounded once. A column block is BV
    vocabulary rows x BU units of one gate of one head, a contiguous run of W_in's columns and of G's
    row, so loads and stores are coalesced; a program computes CPB column blocks in turn, and where
    the input fits one step (I <= BI) it loads its e tile once for all of them. Grid (cdiv(V, BV),
    cdiv(4*N*cdiv(Dk, BU), CPB), K), or with COLS_FIRST (for more than 65535 programs on that axis,
    where a grid's second axis stops) its first two axes swapped. It also writes the padding units
    D..Dk (zero: no W_in column, no bias), so every element of G is written once and its row stores
    are whole 16-byte pieces."""
    k = tl.program_id(2).to(tl.int64)
    nub = tl.cdiv(Dk, BU)
    vs = tl.program_id(1 if COLS_FIRST else 0) * BV + tl.arange(0, BV)
    C = 4 * N * D
    vmask = vs < V
    if I <= BI:                                         # one input step: e loaded once a program
        i_one = tl.arange(0, BI)
        e_one = tl.load(e_ptr + (k * V + vs[:, None]) * I + i_one[None, :], mask=vmask[:, None] & (i_one < I)[None, :],
                        other=0.0)
    for cb in range(CPB):
        pid_cb = tl.program_id(0 if COLS_FIRST else 1) * CPB + cb
        pid = tl.minimum(pid_cb, 4 * N * nub - 1)       # the last program's blocks may pass the table's end
        gn = pid // nub                                 # gate-major (g * N + n), as W_in's columns
        d0 = (pid - gn * nub) * BU
        g = gn // N
        n = gn - g * N
        ds = d0 + tl.arange(0, BU)
        dmask = ds < D
        col = gn * D + ds
        acc = tl.zeros([BV, BU], tl.float32)
        for i0 in range(0, I, BI):
            i_s = i0 + tl.arange(0, BI)
            if I <= BI:
                e = e_one
            else:
                e = tl.load(e_ptr + (k * V + vs[:, None]) * I + i_s[None, :], mask=vmask[:, None] & (i_s < I)[None, :],
                            other=0.0)
            w = tl.load(w_ptr + (k * I + i_s[:, None]) * C + col[None, :], mask=(i_s < I)[:, None] & dmask[None, :],
                        other=0.0)
            if IEEE:        # fp32 weights, or the interpreter (whose dot mishandles bf16): exact products in fp32
                acc = tl.dot(e.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
            else:           # bf16 products are exact in fp32: the tensor cores' sum equals the GEMM's up to order
                acc = tl.dot(e, w, acc)
        acc += tl.load(b_ptr + k * C + col, mask=dmask, other=0.0).to(tl.float32)[None, :]
        dst = g_ptr + ((k * V + vs) * N + n)[:, None] * (4 * Dk) + g * Dk + ds[None, :]
        smask = (ds < Dk) & (pid_cb + 0 * ds < 4 * N * nub)      # no store for a block past the end
        tl.store(dst, acc.to(g_ptr.dtype.element_ty), mask=vmask[:, None] & smask[None, :])


@triton.jit
def first_step_gemv_kernel(h0_ptr, w_ptr, u_ptr, Dk: tl.constexpr, BC: tl.constexpr, BJ: tl.constexpr):
    """u[kn, cols] = h0[kn, :] @ W[kn][:, cols] in fp32, W tile-interleaved [K*N, Dk, 4*Dk]: the recurrent
    term of step 0 when every batch row starts from the same state h0 [K*N, Dk]. Grid (cdiv(4*Dk, BC), K*N)."""
    kn = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BC + tl.arange(0, BC)
    cmask = cols < 4 * Dk
    acc = tl.zeros([BC], tl.float32)
    for j0 in range(0, Dk, BJ):
        js = j0 + tl.arange(0, BJ)
        h = tl.load(h0_ptr + kn * Dk + js, mask=js < Dk, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + (kn * Dk + js[:, None]) * (4 * Dk) + cols[None, :],
                    mask=(js[:, None] < Dk) & cmask[None, :], other=0.0).to(tl.float32)
        acc += tl.sum(h[:, None] * w, axis=0)
    tl.store(u_ptr + kn * (4 * Dk) + cols, acc, mask=cmask)


@triton.jit
def first_step_cell_kernel(u_ptr, g_ptr, tok_ptr, c0_ptr, c_ptr, h_ptr, B, N, V, tok_stride_b, t, stride_hk,
                           Dk: tl.constexpr, BD: tl.constexpr, BB: tl.constexpr, BDW: tl.constexpr = 0):
    """The cell of step 0 from a batch-broadcast state, for BB batch rows x the BD units of one unit tile
    of one head kn = k*N + n: pre = u[kn] (`first_step_gemv_kernel`; the tile's four gates are contiguous
    in W's tile-interleaved columns) + G[k, token[b, t], n]; c from c0 [K*N, Dk]. Writes c [K*N, B, Dk]
    fp32 and h [K, B, N, Dk] (rows of N*Dk, model stride stride_hk) in full, rows of BD contiguous
    elements each. Grid (cdiv(B, BB), Dk // BD, K*N).

    BDW: the unit tile of u's (W's) column interleave where it differs from this kernel's BD (both
    divide Dk): unit d of gate g is then u's column (d // BDW) 4 BDW + g BDW + d % BDW."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and h_ptr.dtype.element_ty != tl.float32)
    kn = tl.program_id(2).to(tl.int64)
    k = kn // N
    n = kn - k * N
    d0 = tl.program_id(1) * BD
    bs = tl.program_id(0) * BB + tl.arange(0, BB)
    ds = tl.arange(0, BD)
    UW: tl.constexpr = BD if BDW == 0 else BDW             # u's (W's) unit tile
    uc = ((d0 + ds) // UW) * (4 * UW) + (d0 + ds) % UW     # u's gate-i column of each unit
    bmask = bs < B
    m2 = bmask[:, None] & (ds < BD)[None, :]
    rows = bs.to(tl.int64)
    tok = tl.load(tok_ptr + rows * tok_stride_b + t, mask=bmask, other=0)
    g_i, g_f, g_z, g_o = _gate_tile_raw(_g_rows(g_ptr, tok, k, n, V, N, Dk), d0, bmask, BD, Dk)
    ub = u_ptr + kn * (4 * Dk) + uc                       # the units' four gates, UW columns apart
    zero = tl.zeros([BB, BD], tl.float32)
    c_new, h = _cell_math(zero + tl.load(ub)[None, :], zero + tl.load(ub + UW)[None, :],
                          zero + tl.load(ub + 2 * UW)[None, :], zero + tl.load(ub + 3 * UW)[None, :],
                          g_i, g_f, g_z, g_o, zero + tl.load(c0_ptr + kn * Dk + d0 + ds)[None, :], FAST)
    tl.store(c_ptr + (kn * B + rows)[:, None] * Dk + d0 + ds[None, :], c_new, mask=m2)
    tl.store(h_ptr + (k * stride_hk + (rows * N + n) * Dk + d0)[:, None] + ds[None, :], h.to(h_ptr.dtype.element_ty),
             mask=m2)


@triton.jit
def _step1_gather(u_ptr, g_ptr, tok_ptr, c1_ptr, h1_ptr, bs, kn, k, n, d0, ds, uc, B, N, V, tok_stride_b,
                  Dk: tl.constexpr, BD: tl.constexpr, UW: tl.constexpr, COPY_H1: tl.constexpr):
    """The step-1 inputs of rows bs (j = token[b, 0], v = token[b, 1]): the tables' u[kn, j] four gates
    (fp32), G[k, v, n] four gates, c1[kn, j] and, if COPY_H1, h1[k, j, n] (else c1 again, unused)."""
    bmask = bs < B
    m2 = bmask[:, None] & (ds < BD)[None, :]
    rows = bs.to(tl.int64)
    v = tl.load(tok_ptr + rows * tok_stride_b + 1, mask=bmask, other=0)     # both tokens first: one wait
    j = tl.load(tok_ptr + rows * tok_stride_b, mask=bmask, other=0)
    g_i, g_f, g_z, g_o = _gate_tile_raw(_g_rows(g_ptr, v, k, n, V, N, Dk), d0, bmask, BD, Dk)
    ub = u_ptr + ((kn * V + j) * (4 * Dk))[:, None] + uc[None, :]
    c_prev = tl.load(c1_ptr + ((kn * V + j) * Dk + d0)[:, None] + ds[None, :], mask=m2, other=0.0)
    if COPY_H1:
        h1 = tl.load(h1_ptr + (k * V * N * Dk + (j * N + n) * Dk + d0)[:, None] + ds[None, :], mask=m2, other=0.0)
    else:
        h1 = c_prev
    return (tl.load(ub, mask=m2, other=0.0), tl.load(ub + UW, mask=m2, other=0.0),
            tl.load(ub + 2 * UW, mask=m2, other=0.0), tl.load(ub + 3 * UW, mask=m2, other=0.0),
            g_i, g_f, g_z, g_o, c_prev, h1)


@triton.jit
def step1_table_cell_kernel(u_ptr, g_ptr, tok_ptr, c1_ptr, c_ptr, h_ptr, h1_ptr, hp_ptr, B, N, V, tok_stride_b,
                            stride_hk, stride_hpk, Dk: tl.constexpr, BD: tl.constexpr, RB: tl.constexpr,
                            BB: tl.constexpr, BDW: tl.constexpr = 0, COPY_H1: tl.constexpr = True):
    """Step 1's cell from tables over the token of step 0 (`lstm_first_steps_table_`): per row, with
    j = token[b, 0], pre = u[kn, j] (u [K*N, V, 4*Dk] fp32, the step-0 states' recurrent terms) +
    G[k, token[b, 1], n] and c from c1 [K*N, V, Dk]. Writes c [K*N, B, Dk] fp32 and h [K, B, N, Dk]
    (rows of N*Dk, model stride stride_hk); also copies the row's step-0 state h1 [K, V, N, Dk] (rows of
    N*Dk, model stride V*N*Dk) to hp [K, B, N, Dk] (model stride stride_hpk), unless not COPY_H1 (a
    chunk whose step-0 h nobody reads). Grid (cdiv(B, RB), Dk // BD, K*N).

    A program takes RB rows x the BD units of one unit tile of one head kn = k*N + n, in sub-tiles of
    BB rows: the next sub-tile's gathers are issued before this one's cell and stores, so the tables'
    latency overlaps the stores (1.2-1.3x faster than one tile a program at large on the H200,
    bench/results/logs/step1_cell_subtiles_2026-11-29_session16.log).
    BDW: u's (W's) unit tile where it differs from BD, as in `first_step_cell_kernel`."""
    FAST: tl.constexpr = (FAST_ACT == 2) or (FAST_ACT == 1 and h_ptr.dtype.element_ty != tl.float32)
    kn = tl.program_id(2).to(tl.int64)
    k = kn // N
    n = kn - k * N
    d0 = tl.program_id(1) * BD
    r_base = tl.program_id(0) * RB
    ds = tl.arange(0, BD)
    UW: tl.constexpr = BD if BDW == 0 else BDW
    uc = ((d0 + ds) // UW) * (4 * UW) + (d0 + ds) % UW
    x0, x1, x2, x3, x4, x5, x6, x7, x8, x9 = _step1_gather(
        u_ptr, g_ptr, tok_ptr, c1_ptr, h1_ptr, r_base + tl.arange(0, BB), kn, k, n, d0, ds, uc, B, N, V,
        tok_stride_b, Dk, BD, UW, COPY_H1)
    for r0 in tl.static_range(0, RB, BB):
        bs = r_base + r0 + tl.arange(0, BB)
        u_i, u_f, u_z, u_o, g_i, g_f, g_z, g_o, c_prev, h1 = x0, x1, x2, x3, x4, x5, x6, x7, x8, x9
        if r0 + BB < RB:                                    # the next sub-tile's gathers, before this one's stores
            x0, x1, x2, x3, x4, x5, x6, x7, x8, x9 = _step1_gather(
                u_ptr, g_ptr, tok_ptr, c1_ptr, h1_ptr, bs + BB, kn, k, n, d0, ds, uc, B, N, V, tok_stride_b, Dk, BD,
                UW, COPY_H1)
        m2 = (bs < B)[:, None] & (ds < BD)[None, :]
        rows = bs.to(tl.int64)
        c_new, h = _cell_math(u_i, u_f, u_z, u_o, g_i, g_f, g_z, g_o, c_prev, FAST)
        tl.store(c_ptr + (kn * B + rows)[:, None] * Dk + d0 + ds[None, :], c_new, mask=m2)
        tl.store(h_ptr + (k * stride_hk + (rows * N + n) * Dk + d0)[:, None] + ds[None, :],
                 h.to(h_ptr.dtype.element_ty), mask=m2)
        if COPY_H1:
            tl.store(hp_ptr + (k * stride_hpk + (rows * N + n) * Dk + d0)[:, None] + ds[None, :], h1, mask=m2)


@triton.jit
def token_table_gemm_kernel(h_ptr, w_ptr, u_ptr, V, N, Dk: tl.constexpr, BV: tl.constexpr, BC: tl.constexpr,
                            BJ: tl.constexpr, IEEE: tl.constexpr):
    """u[kn, v, cols] = h[k, v, n, :] @ W[kn][:, cols] in fp32, for the V rows of a table over the
    vocabulary (`lstm_first_steps_table_`): h [K, V, N, Dk] (rows of N*Dk), W tile-interleaved
    [K*N, Dk, 4*Dk], u [K*N, V, 4*Dk] fp32. Grid (cdiv(V, BV), cdiv(4*Dk, BC), K*N)."""
    kn = tl.program_id(2).to(tl.int64)
    k = kn // N
    n = kn - k * N
    vs = tl.program_id(0) * BV + tl.arange(0, BV)
    cols = tl.program_id(1) * BC + tl.arange(0, BC)
    vmask = vs < V
    cmask = cols < 4 * Dk
    acc = tl.zeros([BV, BC], tl.float32)
    for j0 in range(0, Dk, BJ):
        js = j0 + tl.arange(0, BJ)
        jm = js < Dk
        h = tl.load(h_ptr + ((k * V + vs[:, None]) * N + n) * Dk + js[None, :], mask=vmask[:, None] & jm[None, :],
                    other=0.0)
        w = tl.load(w_ptr + (kn * Dk + js[:, None]) * (4 * Dk) + cols[None, :], mask=jm[:, None] & cmask[None, :],
                    other=0.0)
        if IEEE:        # fp32 weights, or the interpreter (whose dot mishandles bf16)
            acc = tl.dot(h.to(tl.float32), w.to(tl.float32), acc, input_precision="ieee")
        else:
            acc = tl.dot(h, w, acc)
    tl.store(u_ptr + (kn * V + vs[:, None]) * (4 * Dk) + cols[None, :], acc, mask=vmask[:, None] & cmask[None, :])


@triton.jit
def pad_output_weight_kernel(src_ptr, dst_ptr, D, V, Dk, Vp: tl.constexpr, BR: tl.constexpr, BV: tl.constexpr):
    """The output weight in the padded layout of the output GEMM: dst [KN, Dk, Vp] = src [KN, D, V]
    (both contiguous) with rows D..Dk and columns V..Vp zero, every element of dst written once (no
    separate zero fill). Grid (cdiv(Dk, BR), KN); a program writes BR rows, BV columns at a time."""
    kn = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    for v0 in range(0, Vp, BV):
        cols = v0 + tl.arange(0, BV)
        x = tl.load(src_ptr + (kn * D + rows[:, None]) * V + cols[None, :],
                    mask=(rows < D)[:, None] & (cols < V)[None, :], other=0.0)
        tl.store(dst_ptr + (kn * Dk + rows[:, None]) * Vp + cols[None, :], x,
                 mask=(rows < Dk)[:, None] & (cols < Vp)[None, :])
