"""Gluon kernel of one LSTM time step, warp-specialised for Hopper (sm_90): the recurrent GEMM with
the cell as its epilogue, like `lstm_step_tma_kernel` (models/_lstm_step_triton.py), but with the
epilogue of one tile overlapping the GEMM of the next.

Imported lazily by models/lstm_fused.py (needs triton with Gluon, a CUDA device of compute
capability 9.x, bf16 weights). A persistent grid of one program per SM loops over the output tiles
(tile = BM batch rows x BD hidden units of one head of one stacked model, all four gates), in three
partitions of warps:

    producer  (1 warp):   TMA loads of h[rows, k-step] and the four gates' W[k-step, units] into
                          two rings of STAGES shared-memory stages, one per consumer (mbarriers
                          `ready` / `empty`; with one shared ring a consumer could run two phases of
                          a stage ahead, and an mbarrier's phase parity cannot tell them apart)
    consumer 0 (4 warps): even tiles of the program: per k-step four wgmma (one accumulator [BM, BD]
                          per gate; h from shared memory, or A_REG: from registers), the previous
                          step's still in flight, then the cell: input gates G[token]
                          and c loaded straight into the accumulators' register layout, c and h out
    consumer 1 (4 warps): odd tiles, the same

so while one consumer runs its cell (special-function ops, loads, stores) the other keeps the tensor
cores busy. The arithmetic is `lstm_step_tma_kernel`'s (fp32 accumulation, the cell in fp32 with the
hardware tanh, h rounded to bf16); on the H200 its h and c equal that kernel's bit for bit.

Opt-in (step-config key `ws`; the sweep's `ws` and `all` grids). Measured on the H200
(bench/results/step_kernel_sweep_2026-11-28_225414, _225645, _225955): 8-12% slower than the Triton per-step kernel
at large, 26-34% at medium: a consumer's cell, its loads in the accumulator layout with their latency
exposed, takes several times the tile's MMA; issuing them before the GEMM spills registers.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)


@gluon.jit
def _tanh_fast(x):
    return gl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [x], dtype=gl.float32, is_pure=True,
                                     pack=1)


@gluon.jit
def _sig_fast(x):
    return 0.5 * _tanh_fast(0.5 * x) + 0.5


@gluon.jit
def _tile_coords(tile, num_m, NUM_D: gl.constexpr):
    """(unit tile, row tile, head) of output tile `tile`: row tiles fastest, then unit tiles, so that
    tiles in flight together share a head's weight tile in L2."""
    pid_m = tile % num_m
    rest = tile // num_m
    return rest % NUM_D, pid_m, rest // NUM_D


@gluon.jit
def _producer(args, Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
              NUM_PROGRAMS: gl.constexpr, A_REG: gl.constexpr, PREFETCH: gl.constexpr, WHICH: gl.constexpr):
    (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty,
     B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b, num_tiles, num_m, a_rows_per_k) = args
    NK: gl.constexpr = Dk // BK
    NUM_D: gl.constexpr = Dk // BD
    pid = gl.program_id(0)
    i = 0
    for tile in range(pid, num_tiles, NUM_PROGRAMS):
        pid_d, pid_m, pid_h = _tile_coords(tile, num_m, NUM_D)
        k = pid_h // N
        n = pid_h - k * N
        a_row = k * a_rows_per_k + pid_m * BM
        ring = i % 2                                  # tile i goes to consumer i % 2, through its own ring
        for kk in gl.static_range(NK):
            count = (i // 2) * NK + kk
            s = ring * STAGES + count % STAGES
            mbarrier.wait(empty.index(s), ((count // STAGES) & 1) ^ 1)
            bar = ready.index(s)
            mbarrier.expect(bar, a_desc.block_type.nbytes + 4 * w_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [a_row, n * Dk + kk * BK], bar, a_bufs.index(s))
            for g in gl.static_range(4):
                tma.async_copy_global_to_shared(w_desc, [pid_h * Dk + kk * BK, pid_d * (4 * BD) + g * BD], bar,
                                                w_bufs.index(s * 4 + g))
        i += 1


@gluon.jit
def _consumer(args, Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
              NUM_PROGRAMS: gl.constexpr, A_REG: gl.constexpr, PREFETCH: gl.constexpr, WHICH: gl.constexpr):
    (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty,
     B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b, num_tiles, num_m, a_rows_per_k) = args
    NK: gl.constexpr = Dk // BK
    NUM_D: gl.constexpr = Dk // BD
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BD, 16])
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, acc_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, acc_layout)
    pid = gl.program_id(0)
    cols = gl.arange(0, BD, layout=col_layout)
    local = 0
    for tile in range(pid + WHICH * NUM_PROGRAMS, num_tiles, 2 * NUM_PROGRAMS):
        pid_d, pid_m, pid_h = _tile_coords(tile, num_m, NUM_D)
        k = pid_h // N
        n = pid_h - k * N
        rows = pid_m * BM + gl.arange(0, BM, layout=row_layout)
        rmask = rows < B
        m2 = gl.expand_dims(rmask, 1) & gl.expand_dims(cols < BD, 0)
        if PREFETCH:       # the cell's loads before the GEMM: their latency hides behind it
            g_i, g_f, g_z, g_o, c = _cell_loads(g_ptr, tok_ptr, c_in_ptr, rows, rmask, m2, cols, k, n, pid_d, pid_h,
                                                V, N, tok_stride_b, t, stride_cin_h, stride_cin_b, Dk, BD)
        acc_i = gl.zeros([BM, BD], gl.float32, acc_layout)
        acc_f = gl.zeros([BM, BD], gl.float32, acc_layout)
        acc_z = gl.zeros([BM, BD], gl.float32, acc_layout)
        acc_o = gl.zeros([BM, BD], gl.float32, acc_layout)
        s_prev = 0
        for kk in gl.static_range(NK):
            count = local * NK + kk
            s = WHICH * STAGES + count % STAGES
            mbarrier.wait(ready.index(s), (count // STAGES) & 1)
            if A_REG:
                a = a_bufs.index(s).load(a_layout)
            else:
                a = a_bufs.index(s)
            acc_i = warpgroup_mma(a, w_bufs.index(s * 4 + 0), acc_i, is_async=True)
            acc_f = warpgroup_mma(a, w_bufs.index(s * 4 + 1), acc_f, is_async=True)
            acc_z = warpgroup_mma(a, w_bufs.index(s * 4 + 2), acc_z, is_async=True)
            acc_o = warpgroup_mma(a, w_bufs.index(s * 4 + 3), acc_o, is_async=True)
            if kk > 0:
                # the previous k-step's four MMAs are done (this step's four stay in flight): free its stage
                acc_i, acc_f, acc_z, acc_o = warpgroup_mma_wait(num_outstanding=4,
                                                                deps=(acc_i, acc_f, acc_z, acc_o))
                fence_async_shared()
                mbarrier.arrive(empty.index(s_prev), count=1)
            s_prev = s
        acc_i, acc_f, acc_z, acc_o = warpgroup_mma_wait(num_outstanding=0, deps=(acc_i, acc_f, acc_z, acc_o))
        fence_async_shared()
        mbarrier.arrive(empty.index(s_prev), count=1)
        local += 1
        # the cell, in the accumulators' register layout
        if not PREFETCH:
            g_i, g_f, g_z, g_o, c = _cell_loads(g_ptr, tok_ptr, c_in_ptr, rows, rmask, m2, cols, k, n, pid_d, pid_h,
                                                V, N, tok_stride_b, t, stride_cin_h, stride_cin_b, Dk, BD)
        i_g = acc_i + g_i.to(gl.float32)
        f_g = acc_f + g_f.to(gl.float32)
        z_g = acc_z + g_z.to(gl.float32)
        o_g = acc_o + g_o.to(gl.float32)
        c_new = _sig_fast(f_g) * c + _sig_fast(i_g) * _tanh_fast(z_g)
        h = _sig_fast(o_g) * _tanh_fast(c_new)
        c_off = gl.expand_dims((pid_h.to(gl.int64) * B + rows) * Dk, 1) + gl.expand_dims(pid_d * BD + cols, 0)
        gl.store(c_out_ptr + c_off, c_new, mask=m2)
        h_off = (k.to(gl.int64) * stride_out_k + gl.expand_dims(rows.to(gl.int64) * stride_hb, 1)
                 + gl.expand_dims(n * Dk + pid_d * BD + cols, 0))
        gl.store(h_out_ptr + h_off, h.to(gl.bfloat16), mask=m2)


@gluon.jit
def _cell_loads(g_ptr, tok_ptr, c_in_ptr, rows, rmask, m2, cols, k, n, pid_d, pid_h, V, N, tok_stride_b, t,
                stride_cin_h, stride_cin_b, Dk: gl.constexpr, BD: gl.constexpr):
    """The input gates G[token] (bf16) and c (fp32) of a tile, in the layout of `rows` / `cols`."""
    tok = gl.load(tok_ptr + rows.to(gl.int64) * tok_stride_b + t, mask=rmask, other=0)
    g_row = ((k * V + tok) * N + n) * (4 * Dk)
    gp = g_ptr + (gl.expand_dims(g_row, 1) + gl.expand_dims(pid_d * BD + cols, 0))
    c_in_off = (pid_h.to(gl.int64) * stride_cin_h + gl.expand_dims(rows.to(gl.int64) * stride_cin_b, 1)
                + gl.expand_dims(pid_d * BD + cols, 0))
    return (gl.load(gp, mask=m2, other=0.0), gl.load(gp + Dk, mask=m2, other=0.0),
            gl.load(gp + 2 * Dk, mask=m2, other=0.0), gl.load(gp + 3 * Dk, mask=m2, other=0.0),
            gl.load(c_in_ptr + c_in_off, mask=m2, other=0.0))


@gluon.jit
def lstm_step_ws_kernel(a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                        B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b,
                        num_tiles, num_m, a_rows_per_k,
                        Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr,
                        STAGES: gl.constexpr, NUM_PROGRAMS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                        A_REG: gl.constexpr = False, PREFETCH: gl.constexpr = False):
    """Grid (NUM_PROGRAMS,), num_warps 4 (the default partition: consumer 0).

    a_desc: h_in as rows [k * a_rows_per_k + b, N*Dk] (bf16), block [BM, BK];
    w_desc: W [K*N*Dk, 4*Dk] tile-interleaved for BD (`tile_recurrent_weight`), block [BK, BD];
    the rest as in `lstm_step_kernel` (g [K, V, N, 4*Dk] bf16, tok int64, c fp32, h_out bf16)."""
    a_bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * STAGES, BM, BK], a_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * STAGES * 4, BK, BD], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], mbarrier.MBarrierLayout())
    for s in gl.static_range(2 * STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=1)
    args = (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty,
            B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b, num_tiles, num_m,
            a_rows_per_k)
    gl.warp_specialize([(_consumer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, A_REG, PREFETCH, 0)),
                        (_consumer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, A_REG, PREFETCH, 1)),
                        (_producer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, A_REG, PREFETCH, 0))],
                       [4, 1], [CONSUMER_REGS, 24])
