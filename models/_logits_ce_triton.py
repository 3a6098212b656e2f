"""Triton kernel of the fused output projection + masked cross entropy (imported lazily by
models/logits_ce.py: needs triton)."""
import triton
import triton.language as tl


@triton.jit
def logits_ce_kernel(h_ptr, w_ptr, b_ptr, tgt_ptr, out_ptr, R, B, H, V, stride_hk, stride_wk, stride_bk,
                     tgt_stride_b, tgt_stride_t, ignore_index, BM: tl.constexpr, BH: tl.constexpr,
                     VP: tl.constexpr, IEEE: tl.constexpr, H_LOOP: tl.constexpr):
    """Grid (cdiv(R, BM), K). Per program: BM rows of model k's hidden states, their logits and the
    sum of their cross entropies, written to out[k, pid_m] (fp32; 0 where no row is scored).

    h:   [K, R, H] rows r = t*B + b (the chunk's hidden states, weight dtype, zero padding allowed)
    w:   [K, H, V] output weight; b: [K, V] output bias
    tgt: element (b, t) at b*tgt_stride_b + t*tgt_stride_t (int64, ignore_index = not scored)

    The logits never leave registers: each row's [VP] logits (V padded to a power of two, the
    padding at -inf) are rounded to the weight dtype, as the unfused output GEMM rounds them, and
    scored in fp32. A tile whose rows are all unscored loads nothing. H_LOOP: H as a constexpr under
    the interpreter (it cannot range() over a runtime scalar), -1 when compiled."""
    pid_m = tl.program_id(0)
    k = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    rmask = rows < R
    t = rows // B
    bb = rows - t * B
    tgt = tl.load(tgt_ptr + bb.to(tl.int64) * tgt_stride_b + t.to(tl.int64) * tgt_stride_t, mask=rmask,
                  other=ignore_index)
    scored = rmask & (tgt != ignore_index)
    n_scored = tl.sum(scored.to(tl.int32), axis=0)
    total = 0.0
    if n_scored > 0:
        cols = tl.arange(0, VP)
        cmask = cols < V
        hh = tl.arange(0, BH)
        a_rows = h_ptr + k * stride_hk + rows[:, None].to(tl.int64) * H
        w_base = w_ptr + k * stride_wk
        acc = tl.zeros((BM, VP), dtype=tl.float32)
        for h0 in range(0, H_LOOP if H_LOOP >= 0 else H, BH):
            hm = (h0 + hh) < H
            a = tl.load(a_rows + h0 + hh[None, :], mask=rmask[:, None] & hm[None, :], other=0.0)
            w = tl.load(w_base + (h0 + hh)[:, None].to(tl.int64) * V + cols[None, :],
                        mask=hm[:, None] & cmask[None, :], other=0.0)
            if IEEE:
                acc = tl.dot(a, w, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, w, acc)
        bias = tl.load(b_ptr + k * stride_bk + cols, mask=cmask, other=0.0).to(tl.float32)
        logits = (acc + bias[None, :]).to(w_ptr.dtype.element_ty).to(tl.float32)
        logits = tl.where(cmask[None, :], logits, float("-inf"))
        m = tl.max(logits, axis=1)
        lse = m + tl.log(tl.sum(tl.exp(logits - m[:, None]), axis=1))
        picked = tl.sum(tl.where(cols[None, :] == tgt[:, None], logits, 0.0), axis=1)
        total = tl.sum(tl.where(scored, lse - picked, 0.0), axis=0)
    tl.store(out_ptr + k * tl.num_programs(0) + pid_m, total)
