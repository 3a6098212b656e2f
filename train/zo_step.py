"""One CD-RGE / FD-RGE optimisation step over a communicator (series = world of one)."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

import torch


class NonFiniteLossError(RuntimeError):
    """A probe loss was NaN or inf; raised on every rank, with the weights as they were before the step."""

    def __init__(self, step: int, lr: float):
        super().__init__(f"non-finite loss at step {step} (lr={lr:g}); the weights were NOT updated. "
                         f"Lower the learning rate (e.g. --learning_rate {lr / 10:g}) and resume from the last checkpoint.")
        self.step = step


@dataclass
class StepResult:
    train_loss: float
    losses: torch.Tensor     # [num_seeds, 2] gathered probe losses
    timings: dict            # seconds per phase
    info: dict


_NOTED_NO_STEP_GRAPH: set = set()


def _note_no_step_graph(why: str) -> None:
    if why not in _NOTED_NO_STEP_GRAPH:
        _NOTED_NO_STEP_GRAPH.add(why)
        print(f"[zo] note: the whole step is not replayed as a CUDA graph ({why}); only the probe loss is",
              file=sys.stderr, flush=True)


def zo_step(engine, *, step: int, lr: float, loss_for_probe, comm, baseline_fn=None, stacked_loss=None,
            models_per_pass: int = 1, stack_layouts=None, step_graph=None, batch=None) -> StepResult:
    """Evaluate this rank's share of the probes, gather the loss pairs, update identically.

    loss_for_probe(i) -> the loss closure of probe i (it may return the same closure for every i,
    or one that draws a per-probe batch). baseline_fn: the closure for L(theta) (FD-RGE only).
    stacked_loss(P) with models_per_pass > 1: evaluate that many perturbed models per forward
    (same batch for all probes); the losses are the same as the one-at-a-time path's. stack_layouts:
    the model's declared parameter layouts for such a pass (`train.evaluate.stack_layouts_fn`).
    One host synchronisation: coefficients and mean loss come back together, and a non-finite
    value stops the step with the weights unchanged (on every rank alike, since all see the same
    losses). Where the engine allows it (`update_before_sync`), the update is queued before that
    sync with a device-side finiteness guard that turns it into a no-op, so its launches overlap
    the forwards instead of following the sync.
    step_graph (a `train.graphs.GraphedZOStep`) with batch (the batch stacked_loss reads): the step's
    device work replayed as CUDA graphs, same values, where the step graph allows it (`why_not`);
    elsewhere the step runs as without it, and says once why."""
    t0 = time.perf_counter()
    seeds = engine.seeds(step)
    lo, hi = comm.shard(len(seeds))
    stacked = stacked_loss is not None and models_per_pass > 1
    if step_graph is not None:
        why = step_graph.why_not(engine, models_per_pass=models_per_pass if stacked else 1)
        if why is None and batch is None:
            raise ValueError("zo_step(step_graph=...) needs the step's batch")
        if why is None:
            return _graphed_step(engine, step_graph, step=step, lr=lr, seeds=seeds, lo=lo, hi=hi, comm=comm,
                                 batch=batch, models_per_pass=models_per_pass, layouts=stack_layouts, t0=t0)
        _note_no_step_graph(why)
    if stacked:
        local = engine.evaluate_stacked(seeds[lo:hi], stacked_loss, lr=lr, models_per_pass=models_per_pass,
                                        layouts=stack_layouts)
    else:
        rows = [engine.evaluate([s], loss_for_probe(i), lr=lr) for i, s in zip(range(lo, hi), seeds[lo:hi])]
        local = torch.cat(rows) if rows else torch.empty(0, 2)
    baseline = None
    if engine.cfg.needs_baseline:
        if baseline_fn is None:
            raise ValueError("FD-RGE needs a baseline loss closure")
        baseline = engine.baseline(baseline_fn)
    t1 = time.perf_counter()
    losses = comm.all_gather_rows(local)
    t2 = time.perf_counter()
    two_sided = engine.cfg.central_difference or engine.cfg.antithetic
    used = losses if two_sided else losses[:, :1]
    coefs = engine.coefficients(losses, lr=lr, baseline=baseline)
    mean_loss = baseline if baseline is not None else used.double().mean()
    packed = torch.cat([coefs.double().reshape(-1), mean_loss.double().reshape(1)])
    prefetch = getattr(engine, "prefetch_keys", None)
    if prefetch is not None:
        # host work that needs no loss value (this update's and the next step's noise keys) runs
        # now, while the GPU still works through the forwards
        stacked = stacked_loss is not None and models_per_pass > 1
        prefetch(seeds, engine.seeds(step + 1)[lo:hi], models_per_pass=models_per_pass if stacked else 1)
    early = getattr(engine, "update_before_sync", False)
    if early:
        engine.enqueue_update(seeds, coefs, torch.isfinite(packed).all(), lr=lr)
    ts0 = time.perf_counter()
    host = _sync_checked(packed, step, lr)
    ts1 = time.perf_counter()
    train_loss = host[-1]
    info = {} if early else engine.update(seeds, host[:-1], lr=lr)
    t3 = time.perf_counter()
    # On a GPU the phases before the sync only launch work: probe_eval_s is host time, the forwards'
    # device time lands in sync_wait_s, and the update's kernels finish after this function returns.
    return StepResult(train_loss, losses, {"probe_eval_s": t1 - t0, "all_gather_s": t2 - t1,
                                           "sync_wait_s": ts1 - ts0, "update_s": (ts0 - t2) + (t3 - ts1)}, info)


def _sync_checked(packed: torch.Tensor, step: int, lr: float) -> list:
    """The step's one sync: on a GPU the queued forwards finish here (sync_wait_s)."""
    host = packed.tolist()
    if not all(math.isfinite(v) for v in host):
        raise NonFiniteLossError(step, lr)
    return host


def _graphed_step(engine, graph, *, step, lr, seeds, lo, hi, comm, batch, models_per_pass, layouts, t0) -> StepResult:
    losses, packed = graph.run(engine, seeds=seeds, lo=lo, hi=hi, lr=lr, batch=batch, comm=comm,
                               models_per_pass=models_per_pass, layouts=layouts)
    losses = losses.clone()                   # the graph's output tensor is rewritten by the next replay
    t1 = time.perf_counter()
    # the next step's key hashing, while the GPU runs this one
    nxt = engine.seeds(step + 1)
    engine.prefetch_host_keys(nxt, nxt[lo:hi], models_per_pass=models_per_pass)
    ts0 = time.perf_counter()
    host = _sync_checked(packed, step, lr)
    ts1 = time.perf_counter()
    engine.clear_step_cache()
    return StepResult(host[-1], losses, {"probe_eval_s": t1 - t0, "all_gather_s": 0.0, "sync_wait_s": ts1 - ts0,
                                         "update_s": ts0 - t1}, {"cuda_graph": "step"})
