"""Loss of a model on a batch: time-chunked and micro-batched, through the one masked loss."""
from __future__ import annotations

import torch

from tasks import Batch, LossAccumulator
from tasks.loss import IGNORE_INDEX, masked_ce_sum_stacked


def chunked_accumulator(model, inputs_BT: torch.Tensor, targets_BT: torch.Tensor, *, time_chunk: int = 0) -> LossAccumulator:
    """Run the model over the sequence in chunks of `time_chunk` steps (0: all at once),
    carrying its state, and accumulate loss and accuracy chunk by chunk. The logits of only one
    chunk exist at a time, so the working set does not grow with T."""
    acc = LossAccumulator()
    state = model.init_state(inputs_BT.shape[0])
    T = inputs_BT.shape[1]
    step = time_chunk if time_chunk > 0 else T
    # a backend with per-pass weight layouts builds them once, not once per chunk (K = 1 stacked)
    prep = getattr(model, "prepare_stacked", None)
    P1 = prep({n: p.unsqueeze(0) for n, p in model.named_parameters()}) if prep is not None else None
    for t0 in range(0, T, step):
        if P1 is not None:
            logits, state = model.forward_chunk_stacked(P1, inputs_BT[:, t0:t0 + step], state)
            logits = logits[0]
        else:
            logits, state = model.forward_chunk(inputs_BT[:, t0:t0 + step], state)
        acc.update(logits, targets_BT[:, t0:t0 + step])
    return acc


def batch_loss(model, batch: Batch, *, time_chunk: int = 0, micro_batch_size: int = 0) -> torch.Tensor:
    """Mean masked cross entropy over the batch (fp32 scalar on the model's device).

    With micro_batch_size > 0 the rows are processed in micro-batches; the result is the
    token-weighted mean over all of them, identical to one pass up to summation order. A model
    that evaluates stacked parameter sets takes `stacked_batch_loss` with one set: the loss alone
    (no accuracy) and, on the fused backend, the cross-entropy kernel instead of fp32 logits."""
    if hasattr(model, "forward_chunk_stacked"):
        P1 = {n: p.unsqueeze(0) for n, p in model.named_parameters()}
        return stacked_batch_loss(model, P1, batch, time_chunk=time_chunk, micro_batch_size=micro_batch_size)[0]
    B = batch.inputs.shape[0]
    mb = micro_batch_size if 0 < micro_batch_size < B else B
    total, count = None, None
    for r0 in range(0, B, mb):
        acc = chunked_accumulator(model, batch.inputs[r0:r0 + mb], batch.targets[r0:r0 + mb], time_chunk=time_chunk)
        s, c = acc.loss_sum, acc.count
        total = s if total is None else total + s
        count = c if count is None else count + c
    return (total / count.clamp(min=1)).float()


@torch.inference_mode()
def evaluate_batch(model, batch: Batch, *, time_chunk: int = 0):
    """(loss, token_accuracy, seq_accuracy) as fp32 scalar tensors, and the full logits."""
    state = model.init_state(batch.inputs.shape[0])
    logits, _ = model.forward(batch.inputs, state, time_chunk=time_chunk)
    acc = LossAccumulator()
    acc.update(logits, batch.targets)
    return acc.loss(), acc.token_accuracy(), acc.seq_accuracy(), logits


def stack_layouts_fn(model, batch_rows: int, micro_batch_size: int = 0):
    """For `zo_step(stack_layouts=...)`: a callable M -> {name: layout} of the parameter layouts the model
    declares (`stack_layouts`) for a pass of M models over a batch of `batch_rows` rows split as
    `stacked_batch_loss` splits it, or None where the model declares none. A layout is used only when
    every forward of the pass (the micro-batches, the last one possibly smaller) would read the same."""
    declare = getattr(model, "stack_layouts", None)
    if declare is None:
        return None
    mb = micro_batch_size if 0 < micro_batch_size < batch_rows else batch_rows
    sizes = sorted({mb, batch_rows - (batch_rows - 1) // mb * mb})

    def layouts(M: int) -> dict:
        each = [declare(rows, M) for rows in sizes]
        return each[0] if all(e == each[0] for e in each) else {}
    return layouts


def _row_order(model, batch: Batch) -> torch.Tensor | None:
    """The model's `batch_row_order` of this batch's rows (None: keep the order), computed once per batch:
    a step evaluates the same batch once a pass (32 passes at large with 64 probes), and the order
    depends only on the tokens. Kept on the batch object, keyed by the model's order function and the
    identity, shape and version counter of the inputs (an in-place change or a new tensor orders again);
    inference tensors, which have no version counter, are ordered every time."""
    order = getattr(model, "batch_row_order", None)
    if order is None:
        return None
    x = batch.inputs
    if x.is_inference():        # no version counter (a graphed loss refills its inputs in place): every time
        return order(x)
    key = (order, x.data_ptr(), tuple(x.shape), x._version)
    memo = batch.__dict__.get("_row_order_memo")
    if memo is not None and memo[0] == key:
        return memo[1]
    perm = order(x)
    batch.__dict__["_row_order_memo"] = (key, perm)
    return perm


def stacked_batch_loss(model, P: dict, batch: Batch, *, time_chunk: int = 0, micro_batch_size: int = 0) -> torch.Tensor:
    """Mean masked cross entropy [K] of K stacked models (see LSTMModel.forward_chunk_stacked). Time
    chunks wholly before `batch.scored_from` only advance the state (`advance_chunk_stacked` where the
    model has one), and a fused loss skips the logits of a chunk's steps before it: the same sums,
    without that output projection. The rows run in the order the model's `batch_row_order` asks for
    (where it has one, computed once per batch: `_row_order`), every micro-batch from the initial state."""
    B, T = batch.inputs.shape
    mb = micro_batch_size if 0 < micro_batch_size < B else B
    # a model may ask for its rows in another order (a sum over rows: only the rounding changes); each
    # chunk's rows are gathered as it runs, so nothing of the size of the whole batch is copied
    perm = _row_order(model, batch)
    step = time_chunk if time_chunk > 0 else T
    total, tiles = None, []
    prep = getattr(model, "prepare_stacked", None)
    P = (prep(P) if prep is not None else None) or P      # per-pass layouts, built once for all chunks
    fused_loss = getattr(model, "loss_chunk_stacked", None)
    advance = getattr(model, "advance_chunk_stacked", None)
    for r0 in range(0, B, mb):
        rows = slice(r0, r0 + mb) if perm is None else perm[r0:r0 + mb]
        state = model.init_state_stacked(P, min(mb, B - r0))
        for t0 in range(0, T, step):
            inp = batch.inputs[:, t0:t0 + step][rows]        # this chunk's tokens, in row order
            if t0 + min(step, T - t0) <= batch.scored_from:
                # no target of this chunk is scored (the batch promises it): the state only, no logits
                state = advance(P, inp, state) if advance else model.forward_chunk_stacked(P, inp, state)[1]
                continue
            tgt = batch.targets[:, t0:t0 + step][rows]
            # a model that scores its chunk in one kernel (no fp32 copy of the logits) returns the sums itself;
            # the chunk's steps before `scored_from` get no logits
            out = fused_loss(P, inp, tgt, state, ignore_index=IGNORE_INDEX,
                             skip_steps=max(0, batch.scored_from - t0)) if fused_loss else None
            if out is not None:
                part, state = out
                tiles.append(part)    # per-tile sums: all chunks' tiles are summed in one reduction below
            else:
                logits, state = model.forward_chunk_stacked(P, inp, state)
                s, _ = masked_ce_sum_stacked(logits, tgt)
                total = s if total is None else total + s
    if tiles:
        # one fp64 reduction over every chunk's fp32 tile sums (a chunk's own sum differs only by fp64 rounding)
        s = torch.cat(tiles, dim=1).double().sum(dim=1)
        total = s if total is None else total + s
    if total is None:           # no chunk holds a scored target
        return torch.zeros(next(t.shape[0] for t in P.values() if torch.is_tensor(t)), device=batch.inputs.device)
    # the scored targets of the chunks scored above, counted once (not per chunk: fewer small kernels)
    count = (batch.targets[:, (batch.scored_from // step) * step:] != IGNORE_INDEX).sum()
    return (total / count.clamp(min=1)).float()
