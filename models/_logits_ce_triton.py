"""Triton kernel of the masked cross entropy of stacked logits (imported lazily by
models/logits_ce.py: needs triton)."""
import triton
import triton.language as tl


@triton.jit
def ce_rows_kernel(x_ptr, tgt_ptr, out_ptr, R, B, V, stride_xk, stride_xr, tgt_stride_b, tgt_stride_t,
                   ignore_index, BM: tl.constexpr, VB: tl.constexpr, V_LOOP: tl.constexpr):
    """Grid (cdiv(R, BM), K). Per program: the summed cross entropy of BM rows of model k's logits,
    written to out[k, pid_m] (fp32; 0 where no row is scored).

    x:   logits, row r of model k at k*stride_xk + r*stride_xr, V columns (any float dtype)
    tgt: element (b, t) at b*tgt_stride_b + t*tgt_stride_t (int64, ignore_index = not scored); row
         r = t*B + b (the layout the fused LSTM forward keeps its outputs in)

    Each row's log-sum-exp runs online over column blocks of VB (any V), in fp32. A tile whose rows
    are all unscored loads nothing. V_LOOP: V as a constexpr under the interpreter (it cannot
    range() over a runtime scalar), -1 when compiled."""
    pid_m = tl.program_id(0)
    k = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < R
    t = rows // B
    bb = rows - t * B
    tgt = tl.load(tgt_ptr + bb.to(tl.int64) * tgt_stride_b + t.to(tl.int64) * tgt_stride_t, mask=rmask,
                  other=ignore_index)
    scored = rmask & (tgt != ignore_index)
    total = tl.sum(tl.zeros((BM,), dtype=tl.float32), axis=0)
    if tl.sum(scored.to(tl.int32), axis=0) > 0:
        x_rows = x_ptr + k * stride_xk + rows[:, None].to(tl.int64) * stride_xr
        cols = tl.arange(0, VB)
        m = tl.full((BM,), float("-inf"), dtype=tl.float32)
        s = tl.zeros((BM,), dtype=tl.float32)
        picked = tl.zeros((BM,), dtype=tl.float32)
        for v0 in range(0, V_LOOP if V_LOOP >= 0 else V, VB):
            c = v0 + cols
            x = tl.load(x_rows + c[None, :], mask=scored[:, None] & (c < V)[None, :],
                        other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, tl.max(x, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)      # unscored rows: all -inf
            s = s * tl.exp(m - m_safe) + tl.sum(tl.exp(x - m_safe[:, None]), axis=1)
            picked += tl.sum(tl.where(c[None, :] == tgt[:, None], x, 0.0), axis=1)
            m = m_new
        total = tl.sum(tl.where(scored, m + tl.log(s) - picked, 0.0), axis=0)
    tl.store(out_ptr + k * tl.num_programs(0) + pid_m, total)
