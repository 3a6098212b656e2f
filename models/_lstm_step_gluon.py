"""Gluon kernel of one LSTM time step, warp-specialised for Hopper (sm_90): the recurrent GEMM with
the cell as its epilogue, like `lstm_step_tma_kernel` (models/_lstm_step_triton.py), with the loads
of the next k-steps and of the cell's inputs running while the tensor cores work.

Imported lazily by models/lstm_fused.py (needs triton with Gluon, a CUDA device of compute
capability 9.x, bf16 weights). A persistent grid of one program per SM loops over the output tiles
(tile = batch rows x BD hidden units of one head of one stacked model, all four gates), in three
partitions of warps:

    producer  (1 warp):   TMA loads of h[rows, k-step] and the weight W[k-step, 4 gates x BD units]
                          into rings of STAGES shared-memory stages (mbarriers `ready` / `empty`)
    consumer 0 (4 warps): a tile's GEMM by wgmma, the previous k-step's still in flight, then the cell
    consumer 1 (4 warps): the same

The consumers either take alternate tiles of BM = 64 rows, each through its own ring (one shared
ring would let a consumer run two phases of a stage ahead, which an mbarrier's phase parity cannot
tell apart), so that one's cell overlaps the other's GEMM; or (COOP) share each tile of 128 rows,
one ring, every weight tile read from L2 once for both. ONE_DOT: one wgmma of 4*BD columns a
k-step, whose accumulator a thread holds for the same units of all four gates (split in registers);
else four wgmma of BD, one per gate, which read the h tile from shared memory four times. PREFETCH:
the cell's inputs (the input gates G[token], bf16, and c, fp32) are copied by 16-byte cp.async into
the consumer's shared buffers before the GEMM and read back in the accumulator layout after it;
STAGE_OUT: c and h go back out through the same buffers as 16-byte stores. Without PREFETCH the
cell loads them in the accumulator layout, 4- and 8-byte accesses whose latency is exposed.

The arithmetic is `lstm_step_tma_kernel`'s (fp32 accumulation, the cell in fp32 with the hardware
tanh, h rounded to bf16); on the H200 its h and c equal that kernel's bit for bit in every form.

Measured on the H200 (bench/results/step_kernel_sweep_2026-11-28_235254, _235543), ms a step against
the Triton TMA kernel in the same run: large 1.131 vs 1.296 (COOP, ONE_DOT, PREFETCH, BK 32, 5
stages; 2 models a launch), medium 0.781 vs 0.990 (alternate tiles, ONE_DOT, PREFETCH + STAGE_OUT, 7
stages), xlarge 4.093 vs 4.516 (COOP, ONE_DOT, PREFETCH + STAGE_OUT, 5 stages); the tuning entries of
models/step_tuning.json pick these for medium and xlarge. Large now runs the weight-resident ping-pong
form at the end of this file (`lstm_step_pp_kernel`: 1.9-2.1 against 2.1-2.3 ms a launch of 4 models,
bench/results/logs/pp_variants_2026-11-29_session12.log). The four-wgmma form without staging (the
first version) was 8-34% slower than the Triton kernel.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.ampere import async_copy
from triton.experimental.gluon.language.nvidia.hopper import (fence_async_shared, mbarrier, tma, warpgroup_mma,
                                                              warpgroup_mma_wait)

# the CTA's thread barrier: `thread_barrier` in triton 3.6, renamed `barrier` in 3.7 (the same operation)
_thread_barrier = getattr(gl, "thread_barrier", None) or gl.barrier


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
              NUM_PROGRAMS: gl.constexpr, A_REG: gl.constexpr, PREFETCH: gl.constexpr, COOP: gl.constexpr,
              ONE_DOT: gl.constexpr, STAGE_OUT: gl.constexpr, WHICH: gl.constexpr):
    (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty, g_sm, c_sm,
     B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b, num_tiles, num_m, a_rows_per_k) = args
    NK: gl.constexpr = Dk // BK
    NUM_D: gl.constexpr = Dk // BD
    TILE_M: gl.constexpr = 2 * BM if COOP else BM
    pid = gl.program_id(0)
    i = 0
    for tile in range(pid, num_tiles, NUM_PROGRAMS):
        pid_d, pid_m, pid_h = _tile_coords(tile, num_m, NUM_D)
        k = pid_h // N
        n = pid_h - k * N
        a_row = k * a_rows_per_k + pid_m * TILE_M
        for kk in gl.static_range(NK):
            if COOP:        # one ring: each stage holds both consumers' h rows and the weight tile they share
                count = i * NK + kk
                s = count % STAGES
            else:           # tile i goes to consumer i % 2, through its own ring
                count = (i // 2) * NK + kk
                s = (i % 2) * STAGES + count % STAGES
            mbarrier.wait(empty.index(s), ((count // STAGES) & 1) ^ 1)
            bar = ready.index(s)
            mbarrier.expect(bar, (2 if COOP else 1) * a_desc.block_type.nbytes
                            + (1 if ONE_DOT else 4) * w_desc.block_type.nbytes)
            if COOP:
                tma.async_copy_global_to_shared(a_desc, [a_row, n * Dk + kk * BK], bar, a_bufs.index(2 * s))
                tma.async_copy_global_to_shared(a_desc, [a_row + BM, n * Dk + kk * BK], bar, a_bufs.index(2 * s + 1))
            else:
                tma.async_copy_global_to_shared(a_desc, [a_row, n * Dk + kk * BK], bar, a_bufs.index(s))
            if ONE_DOT:
                tma.async_copy_global_to_shared(w_desc, [pid_h * Dk + kk * BK, pid_d * (4 * BD)], bar, w_bufs.index(s))
            else:
                for g in gl.static_range(4):
                    tma.async_copy_global_to_shared(w_desc, [pid_h * Dk + kk * BK, pid_d * (4 * BD) + g * BD], bar,
                                                    w_bufs.index(s * 4 + g))
        i += 1


@gluon.jit
def _consumer(args, Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
              NUM_PROGRAMS: gl.constexpr, A_REG: gl.constexpr, PREFETCH: gl.constexpr, COOP: gl.constexpr,
              ONE_DOT: gl.constexpr, STAGE_OUT: gl.constexpr, WHICH: gl.constexpr):
    (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty, g_sm, c_sm,
     B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b, num_tiles, num_m, a_rows_per_k) = args
    NK: gl.constexpr = Dk // BK
    NUM_D: gl.constexpr = Dk // BD
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BD, 16])
    row_layout: gl.constexpr = gl.SliceLayout(1, acc_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, acc_layout)
    TILE_M: gl.constexpr = 2 * BM if COOP else BM
    ROW0: gl.constexpr = WHICH * BM if COOP else 0          # this consumer's rows within a tile
    STEP: gl.constexpr = NUM_PROGRAMS if COOP else 2 * NUM_PROGRAMS
    pid = gl.program_id(0)
    cols = gl.arange(0, BD, layout=col_layout)
    first = pid if COOP else pid + WHICH * NUM_PROGRAMS
    # the cell's inputs are copied in 16-byte pieces: G's rows as [BM, BD] bf16 in 8-element vectors, c's in 4
    g_cp: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (BD // 8), BD // 8], [4, 1], [1, 0])
    c_cp: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (BD // 4), BD // 4] if BD <= 128 else [1, 32], [4, 1], [1, 0])
    if PREFETCH:      # the tokens of this consumer's first tile; later ones are loaded a tile ahead
        tok_next = _tile_tokens(tok_ptr, first, num_tiles, num_m, B, tok_stride_b, t, TILE_M, ROW0, BM,
                                gl.SliceLayout(1, g_cp))
    local = 0
    for tile in range(first, num_tiles, STEP):
        pid_d, pid_m, pid_h = _tile_coords(tile, num_m, NUM_D)
        k = pid_h // N
        n = pid_h - k * N
        rows = pid_m * TILE_M + ROW0 + gl.arange(0, BM, layout=row_layout)
        rmask = rows < B
        m2 = gl.expand_dims(rmask, 1) & gl.expand_dims(cols < BD, 0)
        if PREFETCH:
            # the cell's inputs copied (cp.async, 16 bytes a thread and copy) into this consumer's shared
            # buffers while the GEMM runs; read back in the accumulator layout after it
            _thread_barrier()         # every warp of this consumer has read the previous tile's
            tok = tok_next
            g_rows = pid_m * TILE_M + ROW0 + gl.arange(0, BM, layout=gl.SliceLayout(1, g_cp))
            g_cols = gl.arange(0, BD, layout=gl.SliceLayout(0, g_cp))
            g_row = ((k * V + tok) * N + n) * (4 * Dk)
            gp = g_ptr + (gl.expand_dims(g_row, 1) + gl.expand_dims(pid_d * BD + g_cols, 0))
            gm = gl.expand_dims(g_rows < B, 1) & gl.expand_dims(g_cols < BD, 0)
            for g in gl.static_range(4):
                async_copy.async_copy_global_to_shared(g_sm.index(WHICH * 4 + g), gp + g * Dk, mask=gm)
            c_rows = pid_m * TILE_M + ROW0 + gl.arange(0, BM, layout=gl.SliceLayout(1, c_cp))
            c_cols = gl.arange(0, BD, layout=gl.SliceLayout(0, c_cp))
            cm = gl.expand_dims(c_rows < B, 1) & gl.expand_dims(c_cols < BD, 0)
            async_copy.async_copy_global_to_shared(c_sm.index(WHICH), c_in_ptr + _c_in_offsets(
                c_rows, c_cols, pid_d, pid_h, stride_cin_h, stride_cin_b, BD), mask=cm)
            async_copy.commit_group()
            tok_next = _tile_tokens(tok_ptr, tile + STEP, num_tiles, num_m, B, tok_stride_b, t, TILE_M, ROW0, BM,
                                    gl.SliceLayout(1, g_cp))
        acc_i, acc_f, acc_z, acc_o = _tile_gemm(a_bufs, w_bufs, ready, empty, local, NK, STAGES, BM, BD, COOP,
                                                A_REG, ONE_DOT, WHICH)
        local += 1
        # the cell, in the accumulators' register layout
        if PREFETCH:
            async_copy.wait_group(0)
            _thread_barrier()         # this consumer's warps: every thread's copies have landed
            g_i = g_sm.index(WHICH * 4 + 0).load(acc_layout)
            g_f = g_sm.index(WHICH * 4 + 1).load(acc_layout)
            g_z = g_sm.index(WHICH * 4 + 2).load(acc_layout)
            g_o = g_sm.index(WHICH * 4 + 3).load(acc_layout)
            c = c_sm.index(WHICH).load(acc_layout)
        else:
            tok = gl.load(tok_ptr + rows.to(gl.int64) * tok_stride_b + t, mask=rmask, other=0)
            g_row = ((k * V + tok) * N + n) * (4 * Dk)
            gp = g_ptr + (gl.expand_dims(g_row, 1) + gl.expand_dims(pid_d * BD + cols, 0))
            g_i = gl.load(gp, mask=m2, other=0.0)
            g_f = gl.load(gp + Dk, mask=m2, other=0.0)
            g_z = gl.load(gp + 2 * Dk, mask=m2, other=0.0)
            g_o = gl.load(gp + 3 * Dk, mask=m2, other=0.0)
            c = gl.load(c_in_ptr + _c_in_offsets(rows, cols, pid_d, pid_h, stride_cin_h, stride_cin_b, BD), mask=m2,
                        other=0.0)
        i_g = acc_i + g_i.to(gl.float32)
        f_g = acc_f + g_f.to(gl.float32)
        z_g = acc_z + g_z.to(gl.float32)
        o_g = acc_o + g_o.to(gl.float32)
        c_new = _sig_fast(f_g) * c + _sig_fast(i_g) * _tanh_fast(z_g)
        h = _sig_fast(o_g) * _tanh_fast(c_new)
        if STAGE_OUT:
            # c and h back through the same shared buffers (each thread overwrites the elements it read),
            # then stored in 16-byte pieces
            c_sm.index(WHICH).store(c_new)
            g_sm.index(WHICH * 4).store(h.to(gl.bfloat16))
            _thread_barrier()
            _store_tile(c_out_ptr, h_out_ptr, c_sm.index(WHICH).load(c_cp), g_sm.index(WHICH * 4).load(g_cp),
                        pid_m * TILE_M + ROW0, pid_d, pid_h, k, n, B, stride_out_k, stride_hb, Dk, BM, BD)
        else:
            _store_tile(c_out_ptr, h_out_ptr, c_new, h.to(gl.bfloat16), pid_m * TILE_M + ROW0, pid_d, pid_h, k, n, B,
                        stride_out_k, stride_hb, Dk, BM, BD)


@gluon.jit
def _store_tile(c_out_ptr, h_out_ptr, c_new, h, row0, pid_d, pid_h, k, n, B, stride_out_k, stride_hb,
                Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr):
    """c_new (fp32) and h (bf16) of a tile's BM rows from row0, each in its own register layout."""
    rows = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, c_new.type.layout))
    cols = gl.arange(0, BD, layout=gl.SliceLayout(0, c_new.type.layout))
    m2 = gl.expand_dims(rows < B, 1) & gl.expand_dims(cols < BD, 0)
    off = gl.expand_dims((pid_h.to(gl.int64) * B + rows) * Dk, 1) + gl.expand_dims(pid_d * BD + cols, 0)
    gl.store(c_out_ptr + off, c_new, mask=m2)
    rows = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, h.type.layout))
    cols = gl.arange(0, BD, layout=gl.SliceLayout(0, h.type.layout))
    m2 = gl.expand_dims(rows < B, 1) & gl.expand_dims(cols < BD, 0)
    off = (k.to(gl.int64) * stride_out_k + gl.expand_dims(rows.to(gl.int64) * stride_hb, 1)
           + gl.expand_dims(n * Dk + pid_d * BD + cols, 0))
    gl.store(h_out_ptr + off, h, mask=m2)


@gluon.jit
def _tile_gemm(a_bufs, w_bufs, ready, empty, local, NK: gl.constexpr, STAGES: gl.constexpr, BM: gl.constexpr,
               BD: gl.constexpr, COOP: gl.constexpr, A_REG: gl.constexpr, ONE_DOT: gl.constexpr, WHICH: gl.constexpr):
    """A consumer's GEMM of one tile, h[rows, :Dk] @ W[:Dk, 4 gates x BD units], over NK k-steps of the
    ring; the four gates' [BM, BD] pre-activations in the [BM, BD] wgmma accumulator layout. ONE_DOT: one
    wgmma [BM, 4*BD] per k-step (the h tile read from shared memory once, not once per gate), its
    accumulator split by gate in registers; else four, one accumulator per gate."""
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BD, 16])
    acc4_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                          instr_shape=[16, 4 * BD, 16])
    if ONE_DOT:
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc4_layout, k_width=2)
        acc = gl.zeros([BM, 4 * BD], gl.float32, acc4_layout)
    else:
        a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_layout, k_width=2)
        acc_i = gl.zeros([BM, BD], gl.float32, acc_layout)
        acc_f = gl.zeros([BM, BD], gl.float32, acc_layout)
        acc_z = gl.zeros([BM, BD], gl.float32, acc_layout)
        acc_o = gl.zeros([BM, BD], gl.float32, acc_layout)
    s_prev = 0
    for kk in gl.static_range(NK):
        count = local * NK + kk
        if COOP:
            s = count % STAGES
            a_s = a_bufs.index(2 * s + WHICH)
        else:
            s = WHICH * STAGES + count % STAGES
            a_s = a_bufs.index(s)
        mbarrier.wait(ready.index(s), (count // STAGES) & 1)
        if A_REG:
            a = a_s.load(a_layout)
        else:
            a = a_s
        if ONE_DOT:
            acc = warpgroup_mma(a, w_bufs.index(s), acc, is_async=True)
        else:
            acc_i = warpgroup_mma(a, w_bufs.index(s * 4 + 0), acc_i, is_async=True)
            acc_f = warpgroup_mma(a, w_bufs.index(s * 4 + 1), acc_f, is_async=True)
            acc_z = warpgroup_mma(a, w_bufs.index(s * 4 + 2), acc_z, is_async=True)
            acc_o = warpgroup_mma(a, w_bufs.index(s * 4 + 3), acc_o, is_async=True)
        if kk > 0:
            # the previous k-step's MMAs are done (this step's stay in flight): free its stage. Only TMA and
            # wgmma (the async proxy) touch the ring, so no proxy fence (a MEMBAR that would wait for this
            # thread's cp.async copies of the cell's inputs)
            if ONE_DOT:
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
            else:
                acc_i, acc_f, acc_z, acc_o = warpgroup_mma_wait(num_outstanding=4, deps=(acc_i, acc_f, acc_z, acc_o))
            mbarrier.arrive(empty.index(s_prev), count=1)
        s_prev = s
    if ONE_DOT:
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
    else:
        acc_i, acc_f, acc_z, acc_o = warpgroup_mma_wait(num_outstanding=0, deps=(acc_i, acc_f, acc_z, acc_o))
    mbarrier.arrive(empty.index(s_prev), count=1)
    if ONE_DOT:
        # a thread holds the same units of all four gates (columns g*BD + u): splitting moves no data
        acc = gl.reshape(gl.permute(gl.reshape(acc, [BM, 4, BD]), [0, 2, 1]), [BM, BD, 2, 2])
        even, odd = gl.split(acc)
        acc_i, acc_z = gl.split(even)
        acc_f, acc_o = gl.split(odd)
        acc_i = gl.convert_layout(acc_i, acc_layout)
        acc_f = gl.convert_layout(acc_f, acc_layout)
        acc_z = gl.convert_layout(acc_z, acc_layout)
        acc_o = gl.convert_layout(acc_o, acc_layout)
    return acc_i, acc_f, acc_z, acc_o


@gluon.jit
def _tile_tokens(tok_ptr, tile, num_tiles, num_m, B, tok_stride_b, t, TILE_M: gl.constexpr, ROW0: gl.constexpr,
                 BM: gl.constexpr, row_layout: gl.constexpr):
    """The tokens at step t of a consumer's BM batch rows (from ROW0) of tile `tile` (0 past the last tile
    or the batch)."""
    pid_m = tile % num_m
    rows = pid_m * TILE_M + ROW0 + gl.arange(0, BM, layout=row_layout)
    return gl.load(tok_ptr + rows.to(gl.int64) * tok_stride_b + t, mask=(rows < B) & (tile < num_tiles), other=0)


@gluon.jit
def _c_in_offsets(rows, cols, pid_d, pid_h, stride_cin_h, stride_cin_b, BD: gl.constexpr):
    return (pid_h.to(gl.int64) * stride_cin_h + gl.expand_dims(rows.to(gl.int64) * stride_cin_b, 1)
            + gl.expand_dims(pid_d * BD + cols, 0))


@gluon.jit
def lstm_step_ws_kernel(a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                        B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b,
                        num_tiles, num_m, a_rows_per_k,
                        Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr,
                        STAGES: gl.constexpr, NUM_PROGRAMS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                        A_REG: gl.constexpr = False, PREFETCH: gl.constexpr = False, COOP: gl.constexpr = False,
                        ONE_DOT: gl.constexpr = False, STAGE_OUT: gl.constexpr = False):
    """Grid (NUM_PROGRAMS,), num_warps 4 (the default partition: consumer 0).

    a_desc: h_in as rows [k * a_rows_per_k + b, N*Dk] (bf16), block [BM, BK];
    w_desc: W [K*N*Dk, 4*Dk] tile-interleaved for BD (`tile_recurrent_weight`), block [BK, 4*BD] with
    ONE_DOT, else [BK, BD];
    the rest as in `lstm_step_kernel` (g [K, V, N, 4*Dk] bf16, tok int64, c fp32, h_out bf16)."""
    RINGS: gl.constexpr = 1 if COOP else 2
    a_bufs = gl.allocate_shared_memory(gl.bfloat16, [2 * STAGES, BM, BK], a_desc.layout)
    W_TILES: gl.constexpr = 1 if ONE_DOT else 4        # weight tiles a stage: [BK, 4*BD], or one [BK, BD] a gate
    w_bufs = gl.allocate_shared_memory(gl.bfloat16, [RINGS * STAGES * W_TILES, BK, 4 * BD // W_TILES], w_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [RINGS * STAGES, 1], mbarrier.MBarrierLayout())
    empty = gl.allocate_shared_memory(gl.int64, [RINGS * STAGES, 1], mbarrier.MBarrierLayout())
    if PREFETCH:
        # per consumer: the four input gates' and c's tiles of the cell, 16-byte chunks swizzled so that
        # the accumulator layout's 8 rows x 4 threads of a warp hit distinct banks
        G_PP: gl.constexpr = 1 if BD * 2 >= 128 else 128 // (BD * 2)
        G_MP: gl.constexpr = 8 if BD * 2 >= 128 else BD * 2 // 16
        C_PP: gl.constexpr = 1 if BD * 4 >= 128 else 128 // (BD * 4)
        C_MP: gl.constexpr = 8 if BD * 4 >= 128 else BD * 4 // 16
        g_sm = gl.allocate_shared_memory(gl.bfloat16, [8, BM, BD], gl.SwizzledSharedLayout(8, G_PP, G_MP, order=[1, 0]))
        c_sm = gl.allocate_shared_memory(gl.float32, [2, BM, BD], gl.SwizzledSharedLayout(4, C_PP, C_MP, order=[1, 0]))
    else:
        g_sm = gl.allocate_shared_memory(gl.bfloat16, [8, 1, BD], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))
        c_sm = gl.allocate_shared_memory(gl.float32, [2, 1, BD], gl.SwizzledSharedLayout(1, 1, 1, order=[1, 0]))
    for s in gl.static_range(RINGS * STAGES):
        mbarrier.init(ready.index(s), count=1)
        mbarrier.init(empty.index(s), count=2 if COOP else 1)       # COOP: both consumers free a stage
    args = (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty, g_sm, c_sm,
            B, N, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b, num_tiles, num_m,
            a_rows_per_k)
    gl.warp_specialize([(_consumer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, A_REG, PREFETCH, COOP, ONE_DOT, STAGE_OUT, 0)),
                        (_consumer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, A_REG, PREFETCH, COOP, ONE_DOT, STAGE_OUT, 1)),
                        (_producer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, A_REG, PREFETCH, COOP, ONE_DOT, STAGE_OUT, 0))],
                       [4, 1], [CONSUMER_REGS, 24])


# ---------------------------------------------------------------------------------------------------
# Weight-resident ping-pong form (`lstm_step_pp_kernel`)
#
# A program owns "units" (one head of one stacked model x BD hidden units, all four gates) and runs
# every row tile of a unit against the unit's weight tile W[:Dk, 4*BD], which it loads once into
# shared memory (NK chunks of BK rows, each with its own barriers, so the next unit's chunk k loads as
# soon as the unit's last tile is past k-step k). Only h streams through the ring, in [BM, BK] stages.
# The two consumers take alternate row tiles and pass a turn between them (mbarriers `turn`): one
# runs its GEMM while the other runs the cell of its previous tile, so the tensor cores do not wait
# on the cell. With the turn the ring is consumed strictly in tile order, as by one consumer.
# The cell's inputs G[token] and c are copied (16-byte cp.async) into the consumer's shared buffers a
# tile ahead and read into registers in the accumulator's layout when the tile starts; c and h go out
# through shared memory in 16-byte stores. BD 32 keeps the accumulator at 64 registers a thread.
# L2 traffic a row tile: its h rows only ([BM, Dk]); the weight tile is read once per unit.
# LOADER: a fourth partition, one warp (`_pp_loader`), copies every tile's cell inputs instead (into
# the buffers of the consumer that runs the tile, signalling `in_ready` by cp.async's own mbarrier
# arrive), so a consumer issues no copies of its own. Its releases of ring stages, weight chunks and
# the turn are then arrives by every thread (cp.async's arrive, on barriers that count 128), which need
# no thread barrier: an arrive by one thread (mbarrier.arrive) is fenced by two thread barriers that
# the compiler adds, three a k-step. Measured at large, 64 probes, on a board held at 1425-1460 MHz:
# 679-684 against 687-693 ms a step (bench/results/logs/pp_loader_2026-11-29_session17.log).
# No proxy fences in the mainloop: only TMA and wgmma (the async proxy) touch the ring and the weight
# tile, and a fence there compiles to a MEMBAR that waits for the thread's copies and stores.
# TMA_OUT: c and h go out from the staging buffers by TMA (one thread's bulk tensor stores, after one
# proxy fence and thread barrier a tile) instead of every thread's loads from them and 16-byte global
# stores. Measured at large, 64 probes, at the power limit: 637-640 against 676-678 ms a step
# (bench/results/logs/pp_tma_out_2026-11-29_session18.log).
# The compiler's shared-memory analysis tells allocations apart but not the barriers within one, and
# puts a thread barrier before a wait or arrive on an allocation that an earlier one touched: the
# weight chunks' and the turn's barriers are allocations of their own (`_pp_bars`), and so are the
# ring's where it has one stage a k-step (STAGES == Dk / BK); with a deeper ring (whose stage of a
# k-step is known only at run time) one thread barrier a k-step remains.

@gluon.jit
def _pp_bars(n: gl.constexpr):
    """n mbarriers, each its own allocation (a tuple, indexed by compile-time constants): the compiler's
    shared-memory analysis tells allocations apart but not the elements of one, and fences every wait
    or arrive on an allocation that a previous one touched with a thread barrier."""
    out = ()
    for i in gl.static_range(n):
        out = out + (gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout()),)
    return out


@gluon.jit
def _pp_bar(bars, kk: gl.constexpr, s, STATIC: gl.constexpr):
    """The ring's barrier of k-step kk, in stage s: with STATIC (STAGES == NK: stage kk, its own
    allocation) bars[kk], else bars.index(s) of one [STAGES, 1] allocation."""
    if STATIC:
        return bars[kk]
    else:
        return bars.index(s)


@gluon.jit
def _pp_unit(q, pid, NUM_M: gl.constexpr, NUM_D: gl.constexpr, NUM_PROGRAMS: gl.constexpr):
    """(unit index in this program, row tile, unit tile, head) of this program's q-th row tile."""
    ui = q // NUM_M
    unit = pid + ui * NUM_PROGRAMS
    return ui, q - ui * NUM_M, unit % NUM_D, unit // NUM_D


@gluon.jit
def _pp_producer(args, Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr,
                 STAGES: gl.constexpr, NUM_PROGRAMS: gl.constexpr, N: gl.constexpr, NUM_M: gl.constexpr,
                 WHICH: gl.constexpr):
    (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty, w_ready, w_empty,
     turn, in_ready, in_empty, g_sm, c_sm, oc_sm, oh_sm, B, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h,
     stride_cin_b, num_q, a_rows_per_k, h_desc, c_desc) = args
    NK: gl.constexpr = Dk // BK
    NUM_D: gl.constexpr = Dk // BD
    STATIC: gl.constexpr = STAGES == NK         # stage kk holds k-step kk (`_pp_bar`)
    pid = gl.program_id(0)
    for q in range(num_q):
        ui, pid_m, pid_d, pid_h = _pp_unit(q, pid, NUM_M, NUM_D, NUM_PROGRAMS)
        k = pid_h // N
        n = pid_h - k * N
        a_row = k * a_rows_per_k + pid_m * BM
        for kk in gl.static_range(NK):
            if pid_m == 0:      # the unit's weight chunk kk, once the previous unit's last tile is done with it
                mbarrier.wait(w_empty[kk], (ui & 1) ^ 1)
                mbarrier.expect(w_ready[kk], w_desc.block_type.nbytes)
                tma.async_copy_global_to_shared(w_desc, [pid_h * Dk + kk * BK, pid_d * (4 * BD)], w_ready[kk],
                                                w_bufs.index(kk))
            count = q * NK + kk
            s = count % STAGES
            stage_ready = _pp_bar(ready, kk, s, STATIC)
            mbarrier.wait(_pp_bar(empty, kk, s, STATIC), ((count // STAGES) & 1) ^ 1)
            mbarrier.expect(stage_ready, a_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(a_desc, [a_row, n * Dk + kk * BK], stage_ready, a_bufs.index(s))


@gluon.jit
def _pp_tokens(tok_ptr, q, num_q, B, tok_stride_b, t, BM: gl.constexpr, NUM_M: gl.constexpr, layout: gl.constexpr):
    """The tokens at step t of row tile q's BM rows (0 past this program's last tile or the batch), int32."""
    rows = (q % NUM_M) * BM + gl.arange(0, BM, layout=layout)
    return gl.load(tok_ptr + (rows * tok_stride_b + t), mask=(rows < B) & (q < num_q), other=0).to(gl.int32)


@gluon.jit
def _pp_stage_in(g_sm, c_sm, WHICH, g_ptr, c_in_ptr, tok, q, num_q, pid, B, V, stride_cin_h, stride_cin_b,
                 Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, NUM_PROGRAMS: gl.constexpr, N: gl.constexpr,
                 NUM_M: gl.constexpr, g_cp: gl.constexpr, c_cp: gl.constexpr, C_UNITS: gl.constexpr):
    """Copy (cp.async, 16 bytes a thread and copy) G[token]'s four gates and c of row tile q into this
    consumer's shared buffers g_sm[4 WHICH + gate], c_sm[WHICH] (zeros past this program's last tile);
    tok: the tile's tokens in g_cp's row layout. The tile's base offsets are scalars (int64), the
    threads' offsets within it int32."""
    NUM_D: gl.constexpr = Dk // BD
    ui, pid_m, pid_d, pid_h = _pp_unit(q, pid, NUM_M, NUM_D, NUM_PROGRAMS)
    k = pid_h // N
    n = pid_h - k * N
    live = q < num_q
    g_rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, g_cp))
    g_cols = gl.arange(0, BD, layout=gl.SliceLayout(0, g_cp))
    g_base = g_ptr + ((k * V).to(gl.int64) * N + n) * (4 * Dk) + pid_d * BD
    gp = g_base + (gl.expand_dims(tok.to(gl.int64) * (N * 4 * Dk), 1) + gl.expand_dims(g_cols, 0))
    gm = gl.expand_dims((g_rows < B) & live, 1) & gl.expand_dims(g_cols < BD, 0)
    for g in gl.static_range(4):
        async_copy.async_copy_global_to_shared(g_sm.index(4 * WHICH + g), gp + g * Dk, mask=gm)
    c_rows = pid_m * BM + gl.arange(0, BM, layout=gl.SliceLayout(1, c_cp))
    c_cols = gl.arange(0, BD, layout=gl.SliceLayout(0, c_cp))
    if C_UNITS < Dk:        # the padding units' c is not read (zero in the buffer: copied as zeros)
        cm = gl.expand_dims((c_rows < B) & live, 1) & gl.expand_dims(pid_d * BD + c_cols < C_UNITS, 0)
    else:
        cm = gl.expand_dims((c_rows < B) & live, 1) & gl.expand_dims(c_cols < BD, 0)
    c_base = c_in_ptr + pid_h.to(gl.int64) * stride_cin_h + pid_d * BD
    async_copy.async_copy_global_to_shared(c_sm.index(WHICH), c_base + (gl.expand_dims(c_rows * stride_cin_b, 1)
                                                                        + gl.expand_dims(c_cols, 0)), mask=cm)
    async_copy.commit_group()


@gluon.jit
def _pp_loader(args, Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr,
               NUM_PROGRAMS: gl.constexpr, N: gl.constexpr, NUM_M: gl.constexpr, C_UNITS: gl.constexpr,
               WHICH: gl.constexpr):
    """LOADER: one warp copies every row tile's cell inputs (G[token]'s four gates, c) into the buffers of
    the consumer that runs it (tile q: consumer q % 2), once that consumer has read its previous tile's
    (`in_empty`), and signals `in_ready` when they land (cp.async's mbarrier arrive, one a lane); the
    next tile's tokens load while it waits."""
    (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty, w_ready, w_empty,
     turn, in_ready, in_empty, g_sm, c_sm, oc_sm, oh_sm, B, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h,
     stride_cin_b, num_q, a_rows_per_k, h_desc, c_desc) = args
    g_cp: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (BD // 8), BD // 8], [1, 1], [1, 0])
    c_cp: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (BD // 4), BD // 4], [1, 1], [1, 0])
    pid = gl.program_id(0)
    tok = _pp_tokens(tok_ptr, 0, num_q, B, tok_stride_b, t, BM, NUM_M, gl.SliceLayout(1, g_cp))
    for q in range(num_q):
        w = q % 2
        tok_next = _pp_tokens(tok_ptr, q + 1, num_q, B, tok_stride_b, t, BM, NUM_M, gl.SliceLayout(1, g_cp))
        mbarrier.wait(in_empty.index(w), ((q // 2) & 1) ^ 1)
        _pp_stage_in(g_sm, c_sm, w, g_ptr, c_in_ptr, tok, q, num_q, pid, B, V, stride_cin_h, stride_cin_b, Dk, BM, BD,
                     NUM_PROGRAMS, N, NUM_M, g_cp, c_cp, C_UNITS)
        async_copy.mbarrier_arrive(in_ready.index(w), increment_count=False)
        tok = tok_next


@gluon.jit
def _pp_store(c_out_ptr, h_out_ptr, c_new, h, row0, pid_d, pid_h, k, n, B, stride_out_k, stride_hb,
              Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, C_UNITS: gl.constexpr):
    """c_new (fp32) and h (bf16) of a tile's BM rows from row0, each in its own register layout: scalar
    (int64) bases, int32 offsets within the tile; c of units C_UNITS.. (the padding, where C_UNITS < Dk)
    not written."""
    rows = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, c_new.type.layout))
    cols = gl.arange(0, BD, layout=gl.SliceLayout(0, c_new.type.layout))
    if C_UNITS < Dk:
        m2 = gl.expand_dims(rows < B, 1) & gl.expand_dims(pid_d * BD + cols < C_UNITS, 0)
    else:
        m2 = gl.expand_dims(rows < B, 1) & gl.expand_dims(cols < BD, 0)
    c_base = c_out_ptr + pid_h.to(gl.int64) * B * Dk + pid_d * BD
    gl.store(c_base + (gl.expand_dims(rows * Dk, 1) + gl.expand_dims(cols, 0)), c_new, mask=m2)
    rows = row0 + gl.arange(0, BM, layout=gl.SliceLayout(1, h.type.layout))
    cols = gl.arange(0, BD, layout=gl.SliceLayout(0, h.type.layout))
    m2 = gl.expand_dims(rows < B, 1) & gl.expand_dims(cols < BD, 0)
    h_base = h_out_ptr + k.to(gl.int64) * stride_out_k + n * Dk + pid_d * BD
    gl.store(h_base + (gl.expand_dims(rows * stride_hb, 1) + gl.expand_dims(cols, 0)), h, mask=m2)


@gluon.jit
def _pp_release(stage_empty, chunk_empty, last, LOADER: gl.constexpr):
    """A consumer frees a ring stage (and, on a unit's last tile, the weight chunk of the same k-step):
    every thread's arrive with LOADER (see LOADER above the kernels), else one thread's."""
    if LOADER:
        async_copy.mbarrier_arrive(stage_empty, increment_count=False)
        if last:
            async_copy.mbarrier_arrive(chunk_empty, increment_count=False)
    else:
        mbarrier.arrive(stage_empty, count=1)
        mbarrier.arrive(chunk_empty, count=1, pred=last)


@gluon.jit
def _pp_consumer(args, Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr,
                 STAGES: gl.constexpr, NUM_PROGRAMS: gl.constexpr, N: gl.constexpr, NUM_M: gl.constexpr,
                 K_LAST: gl.constexpr, C_UNITS: gl.constexpr, LOADER: gl.constexpr, TMA_OUT: gl.constexpr,
                 WHICH: gl.constexpr):
    (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty, w_ready, w_empty,
     turn, in_ready, in_empty, g_sm, c_sm, oc_sm, oh_sm, B, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h,
     stride_cin_b, num_q, a_rows_per_k, h_desc, c_desc) = args
    NK: gl.constexpr = Dk // BK
    NUM_D: gl.constexpr = Dk // BD
    STATIC: gl.constexpr = STAGES == NK         # stage kk holds k-step kk (`_pp_bar`)
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                         instr_shape=[16, BD, 16])
    acc4_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                          instr_shape=[16, 4 * BD, 16])
    # 16-byte pieces: G's rows as [BM, BD] bf16 in 8-element vectors, c's (fp32) in 4
    g_cp: gl.constexpr = gl.BlockedLayout([1, 8], [32 // (BD // 8), BD // 8], [4, 1], [1, 0])
    c_cp: gl.constexpr = gl.BlockedLayout([1, 4], [32 // (BD // 4), BD // 4], [4, 1], [1, 0])
    tok_layout: gl.constexpr = gl.SliceLayout(1, g_cp)
    pid = gl.program_id(0)
    if not LOADER:
        tok = _pp_tokens(tok_ptr, WHICH, num_q, B, tok_stride_b, t, BM, NUM_M, tok_layout)
        _pp_stage_in(g_sm, c_sm, WHICH, g_ptr, c_in_ptr, tok, WHICH, num_q, pid, B, V, stride_cin_h, stride_cin_b,
                     Dk, BM, BD, NUM_PROGRAMS, N, NUM_M, g_cp, c_cp, C_UNITS)
        tok_next = _pp_tokens(tok_ptr, WHICH + 2, num_q, B, tok_stride_b, t, BM, NUM_M, tok_layout)
    j = 0
    for q in range(WHICH, num_q, 2):
        ui, pid_m, pid_d, pid_h = _pp_unit(q, pid, NUM_M, NUM_D, NUM_PROGRAMS)
        k = pid_h // N
        n = pid_h - k * N
        last = pid_m == NUM_M - 1           # the unit's last row tile frees its weight chunks
        # this tile's cell inputs into registers, in the accumulator layout; then the next tile's copies
        if LOADER:
            mbarrier.wait(in_ready.index(WHICH), j & 1)
        else:
            async_copy.wait_group(0)
            _thread_barrier()                 # every thread's copies have landed
        g_i = g_sm.index(4 * WHICH + 0).load(acc_layout)
        g_f = g_sm.index(4 * WHICH + 1).load(acc_layout)
        g_z = g_sm.index(4 * WHICH + 2).load(acc_layout)
        g_o = g_sm.index(4 * WHICH + 3).load(acc_layout)
        c = c_sm.index(WHICH).load(acc_layout)
        if LOADER:
            mbarrier.arrive(in_empty.index(WHICH), count=1)
        else:
            _thread_barrier()                 # every thread has read them
            _pp_stage_in(g_sm, c_sm, WHICH, g_ptr, c_in_ptr, tok_next, q + 2, num_q, pid, B, V, stride_cin_h,
                         stride_cin_b, Dk, BM, BD, NUM_PROGRAMS, N, NUM_M, g_cp, c_cp, C_UNITS)
            tok_next = _pp_tokens(tok_ptr, q + 4, num_q, B, tok_stride_b, t, BM, NUM_M, tok_layout)
        # this tile's turn: the other consumer has issued its last k-step
        mbarrier.wait(turn[WHICH], (j & 1) ^ (1 - WHICH))
        acc = gl.zeros([BM, 4 * BD], gl.float32, acc4_layout)
        s_prev = 0
        for kk in gl.static_range(NK):
            count = q * NK + kk
            s = count % STAGES
            mbarrier.wait(w_ready[kk], ui & 1)
            mbarrier.wait(_pp_bar(ready, kk, s, STATIC), (count // STAGES) & 1)
            if kk == NK - 1 and K_LAST < BK:
                # the last k-step's columns K_LAST..BK are head padding (zero in h and in W): skipped.
                # Slices must be powers of two: K_LAST as a sum of them (48 = 32 + 16)
                K_HI: gl.constexpr = 32 if K_LAST >= 32 else 16
                acc = warpgroup_mma(a_bufs.index(s).slice(0, K_HI, dim=1), w_bufs.index(kk).slice(0, K_HI, dim=0),
                                    acc, is_async=True)
                if K_LAST > K_HI:
                    acc = warpgroup_mma(a_bufs.index(s).slice(K_HI, K_LAST - K_HI, dim=1),
                                        w_bufs.index(kk).slice(K_HI, K_LAST - K_HI, dim=0), acc, is_async=True)
            else:
                acc = warpgroup_mma(a_bufs.index(s), w_bufs.index(kk), acc, is_async=True)
            if kk > 0:
                # the previous k-step's MMA is done: free its stage (and, on the unit's last tile, its
                # weight chunk). Only the async proxy (TMA, wgmma) touches these buffers, so no proxy
                # fence (it compiles to a MEMBAR that waits for this thread's copies and stores)
                acc = warpgroup_mma_wait(num_outstanding=1, deps=(acc,))
                _pp_release(_pp_bar(empty, kk - 1, s_prev, STATIC), w_empty[kk - 1], last, LOADER)
            s_prev = s
        if LOADER:
            async_copy.mbarrier_arrive(turn[1 - WHICH], increment_count=False)
        else:
            mbarrier.arrive(turn[1 - WHICH], count=1)
        acc = warpgroup_mma_wait(num_outstanding=0, deps=(acc,))
        _pp_release(_pp_bar(empty, NK - 1, s_prev, STATIC), w_empty[NK - 1], last, LOADER)
        j += 1
        # a thread holds the same units of all four gates (columns g*BD + u): splitting moves no data
        acc = gl.reshape(gl.permute(gl.reshape(acc, [BM, 4, BD]), [0, 2, 1]), [BM, BD, 2, 2])
        even, odd = gl.split(acc)
        acc_i, acc_z = gl.split(even)
        acc_f, acc_o = gl.split(odd)
        i_g = gl.convert_layout(acc_i, acc_layout) + g_i.to(gl.float32)
        f_g = gl.convert_layout(acc_f, acc_layout) + g_f.to(gl.float32)
        z_g = gl.convert_layout(acc_z, acc_layout) + g_z.to(gl.float32)
        o_g = gl.convert_layout(acc_o, acc_layout) + g_o.to(gl.float32)
        c_new = _sig_fast(f_g) * c + _sig_fast(i_g) * _tanh_fast(z_g)
        h = _sig_fast(o_g) * _tanh_fast(c_new)
        if TMA_OUT:
            # c and h out through shared memory by TMA (one thread's bulk stores; the descriptors clip rows
            # past B and, where c is updated in place, its padding units), once this consumer's previous
            # stores have read the buffers
            tma.store_wait(0)
            _thread_barrier()
            oc_sm.index(WHICH).store(c_new)
            oh_sm.index(WHICH).store(h.to(gl.bfloat16))
            fence_async_shared()
            _thread_barrier()
            tma.async_copy_shared_to_global(c_desc, [pid_h, pid_m * BM, pid_d * BD],
                                            oc_sm.index(WHICH).reshape([1, BM, BD]))
            tma.async_copy_shared_to_global(h_desc, [k, pid_m * BM, n * Dk + pid_d * BD],
                                            oh_sm.index(WHICH).reshape([1, BM, BD]))
        else:
            # c and h out through shared memory, then stored in 16-byte pieces
            oc_sm.index(WHICH).store(c_new)
            oh_sm.index(WHICH).store(h.to(gl.bfloat16))
            _thread_barrier()
            _pp_store(c_out_ptr, h_out_ptr, oc_sm.index(WHICH).load(c_cp), oh_sm.index(WHICH).load(g_cp), pid_m * BM,
                      pid_d, pid_h, k, n, B, stride_out_k, stride_hb, Dk, BM, BD, C_UNITS)
    if TMA_OUT:
        tma.store_wait(0)       # the staging buffers stay valid until the last stores have read them


@gluon.jit
def lstm_step_pp_kernel(a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr,
                        B, V, tok_stride_b, t, stride_out_k, stride_hb, stride_cin_h, stride_cin_b,
                        num_units, a_rows_per_k, h_desc, c_desc,
                        Dk: gl.constexpr, BM: gl.constexpr, BD: gl.constexpr, BK: gl.constexpr,
                        STAGES: gl.constexpr, NUM_PROGRAMS: gl.constexpr, CONSUMER_REGS: gl.constexpr,
                        N: gl.constexpr, NUM_M: gl.constexpr, K_LAST: gl.constexpr, C_UNITS: gl.constexpr = 0,
                        LOADER: gl.constexpr = False, LOADER_REGS: gl.constexpr = 56, TMA_OUT: gl.constexpr = False):
    """Grid (NUM_PROGRAMS,), num_warps 4. Descriptors as in `lstm_step_ws_kernel` with ONE_DOT
    (a_desc block [BM, BK], w_desc block [BK, 4*BD]); units = K*N*(Dk/BD), program p takes units
    p, p + NUM_PROGRAMS, ..., each for all NUM_M row tiles of BM rows. N (heads a model) and NUM_M
    (cdiv(B, BM)) are compile-time constants, one compile per model shape and batch: the tile -> unit
    mapping then needs no runtime division. K_LAST (a multiple of 16, at most BK): the columns of the
    last k-step the MMA multiplies; less than BK where the head's padding (h's columns and W's rows
    D..Dk, all zero) fills the rest, which adds nothing to the sums and is skipped. C_UNITS (0: Dk): where
    less than Dk, the units of c past it (the head's padding) are neither read nor written: c_in is
    c_out, whose padding is zero and stays so, and the padding's c and h come out zero as before.
    LOADER: a fourth partition of one warp copies the cell's inputs (see LOADER above the kernels), with
    LOADER_REGS registers a thread for its warpgroup (the launch's 168 x 3 less 2 x CONSUMER_REGS).
    TMA_OUT: c and h stored by TMA through h_desc (h_out as [K, B, N*Dk], block [1, BM, BD]) and c_desc
    (c_out as [K*N, B, C_UNITS or Dk], block [1, BM, BD]), which clip the rows past B and c's padding
    units; else (both None) by the consumers' threads."""
    NK: gl.constexpr = Dk // BK
    STATIC: gl.constexpr = STAGES == NK
    a_bufs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BM, BK], a_desc.layout)
    w_bufs = gl.allocate_shared_memory(gl.bfloat16, [NK, BK, 4 * BD], w_desc.layout)
    if STATIC:              # stage kk holds k-step kk: each stage's barriers their own allocations
        ready = _pp_bars(STAGES)
        empty = _pp_bars(STAGES)
    else:
        ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
        empty = gl.allocate_shared_memory(gl.int64, [STAGES, 1], mbarrier.MBarrierLayout())
    w_ready = _pp_bars(NK)
    w_empty = _pp_bars(NK)
    turn = _pp_bars(2)
    in_ready = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    in_empty = gl.allocate_shared_memory(gl.int64, [2, 1], mbarrier.MBarrierLayout())
    # per consumer: the cell's inputs (four gates of G[token], c) and outputs (c, h), 16-byte chunks
    # swizzled so that the accumulator layout's 8 rows x 4 threads of a warp hit distinct banks
    G_PP: gl.constexpr = 1 if BD * 2 >= 128 else 128 // (BD * 2)
    G_MP: gl.constexpr = 8 if BD * 2 >= 128 else BD * 2 // 16
    C_PP: gl.constexpr = 1 if BD * 4 >= 128 else 128 // (BD * 4)
    C_MP: gl.constexpr = 8 if BD * 4 >= 128 else BD * 4 // 16
    g_layout: gl.constexpr = gl.SwizzledSharedLayout(8, G_PP, G_MP, order=[1, 0])
    c_layout: gl.constexpr = gl.SwizzledSharedLayout(4, C_PP, C_MP, order=[1, 0])
    g_sm = gl.allocate_shared_memory(gl.bfloat16, [8, BM, BD], g_layout)
    c_sm = gl.allocate_shared_memory(gl.float32, [2, BM, BD], c_layout)
    if TMA_OUT:     # the outputs' staging in the descriptors' layouts
        oc_sm = gl.allocate_shared_memory(gl.float32, [2, BM, BD], gl.NVMMASharedLayout.get_default_for([BM, BD],
                                                                                                       gl.float32))
        oh_sm = gl.allocate_shared_memory(gl.bfloat16, [2, BM, BD], gl.NVMMASharedLayout.get_default_for([BM, BD],
                                                                                                        gl.bfloat16))
    else:
        oc_sm = gl.allocate_shared_memory(gl.float32, [2, BM, BD], c_layout)
        oh_sm = gl.allocate_shared_memory(gl.bfloat16, [2, BM, BD], g_layout)
    ARR: gl.constexpr = 128 if LOADER else 1       # arrivals of a consumer's release: its threads, or one
    for s in gl.static_range(STAGES):
        mbarrier.init(_pp_bar(ready, s, s, STATIC), count=1)
        mbarrier.init(_pp_bar(empty, s, s, STATIC), count=ARR)
    for s in gl.static_range(NK):
        mbarrier.init(w_ready[s], count=1)
        mbarrier.init(w_empty[s], count=ARR)
    for s in gl.static_range(2):
        mbarrier.init(turn[s], count=ARR)
        if LOADER:
            mbarrier.init(in_ready.index(s), count=32)
            mbarrier.init(in_empty.index(s), count=1)
    pid = gl.program_id(0)
    num_q = ((num_units - pid + NUM_PROGRAMS - 1) // NUM_PROGRAMS) * NUM_M     # this program's row tiles
    args = (a_desc, w_desc, h_out_ptr, g_ptr, tok_ptr, c_in_ptr, c_out_ptr, a_bufs, w_bufs, ready, empty, w_ready,
            w_empty, turn, in_ready, in_empty, g_sm, c_sm, oc_sm, oh_sm, B, V, tok_stride_b, t, stride_out_k, stride_hb,
            stride_cin_h, stride_cin_b, num_q, a_rows_per_k, h_desc, c_desc)
    C_U: gl.constexpr = C_UNITS if C_UNITS > 0 and C_UNITS < Dk else Dk
    if LOADER:
        gl.warp_specialize([(_pp_consumer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, N, NUM_M, K_LAST, C_U, True,
                                            TMA_OUT, 0)),
                            (_pp_consumer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, N, NUM_M, K_LAST, C_U, True,
                                            TMA_OUT, 1)),
                            (_pp_producer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, N, NUM_M, 0)),
                            (_pp_loader, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, N, NUM_M, C_U, 0))],
                           [4, 1, 1], [CONSUMER_REGS, 24, LOADER_REGS])
    else:
        gl.warp_specialize([(_pp_consumer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, N, NUM_M, K_LAST, C_U, False,
                                            TMA_OUT, 0)),
                            (_pp_consumer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, N, NUM_M, K_LAST, C_U, False,
                                            TMA_OUT, 1)),
                            (_pp_producer, (args, Dk, BM, BD, BK, STAGES, NUM_PROGRAMS, N, NUM_M, 0))],
                           [4, 1], [CONSUMER_REGS, 24])
