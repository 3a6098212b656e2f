"""CUDA-graph replay of a stacked probe loss: one launch instead of dozens for small models.

    graphed = GraphedStackedLoss(lambda P, batch: stacked_batch_loss(model, P, batch, time_chunk=tc))
    losses = graphed(P, batch)          # [M] losses, as the eager call would return

The ZO engine writes every pass's perturbed parameters into the same stacked buffers, so a graph
captured once for those buffers replays with the new values. A graph is keyed by the addresses,
shapes and dtypes of P's tensors and the batch's shapes; the batch is copied into the graph's own
input tensors before each replay. The first call with a new key runs eagerly (it compiles kernels
and settles the backend), the second captures, later ones replay. Captured memory stays reserved
for the graph, so this helps where launches dominate (models of a few million parameters) and
costs memory on large ones. CUDA only; both trainers take --cuda_graphs auto|true|false|loss, auto (the
default) turning it on for models of at most GRAPHS_AUTO_MAX_PARAMS parameters (`use_cuda_graphs`).
Where graphs are on, `GraphedZOStep` replays the whole step (probe writes, forwards, coefficients,
update), except with 'loss', which keeps to this probe-loss graph.
Measured on the H200 at 12 probes (2026-11-28, after the step's host work was trimmed): tiny 2.00 ->
1.09 ms per step, small 3.81 -> 3.35 ms, medium 25.7 ms either way.
"""
from __future__ import annotations

import torch

from tasks import Batch


GRAPH_SETTINGS = ("auto", "true", "false", "loss")
# auto turns graphs on up to this size: measured on the H200 at 12 probes (2026-11-28), tiny 2.00 ->
# 1.09 ms and small 3.81 -> 3.35 ms per step; medium (10.6M) 25.7 ms either way
GRAPHS_AUTO_MAX_PARAMS = 5_000_000


def graphs_setting(v) -> str:
    """'auto', 'true' or 'false' from a flag value (bools and the CLIs' spellings of them accepted)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    s = str(v).strip().lower()
    if s in ("auto", ""):
        return "auto"
    if s in ("true", "t", "1", "yes", "y"):
        return "true"
    if s in ("false", "f", "0", "no", "n"):
        return "false"
    if s == "loss":
        return "loss"
    raise ValueError(f"--cuda_graphs must be one of {', '.join(GRAPH_SETTINGS)}, got {v!r}")


def use_cuda_graphs(setting, *, device, n_params: int, models_per_pass: int) -> bool:
    """Whether to replay the stacked probe loss as a CUDA graph: 'true' always (the configs refuse it
    off CUDA), 'false' never, 'auto' on CUDA when several models share a pass and the model has at
    most GRAPHS_AUTO_MAX_PARAMS parameters (launch-bound sizes; larger models gain nothing and the
    graph keeps its memory reserved)."""
    s = graphs_setting(setting)
    if s != "auto":
        return s in ("true", "loss")
    return torch.device(device).type == "cuda" and models_per_pass > 1 and n_params <= GRAPHS_AUTO_MAX_PARAMS


def build_graphs(setting, fn, *, device, n_params: int, models_per_pass: int):
    """The graphs a ZO trainer replays, as (GraphedStackedLoss or None, GraphedZOStep or None): both
    where `use_cuda_graphs` turns graphs on, except that 'loss' keeps to the probe loss alone (the step
    graph itself falls back to the loss graph, and says so once, where `GraphedZOStep.why_not` finds a
    reason). fn(P, batch) -> [M] losses of the stacked pass."""
    if not use_cuda_graphs(setting, device=device, n_params=n_params, models_per_pass=models_per_pass):
        return None, None
    return GraphedStackedLoss(fn), (None if graphs_setting(setting) == "loss" else GraphedZOStep(fn))


class GraphedStackedLoss:
    def __init__(self, fn, *, max_graphs: int = 8):
        self.fn = fn
        self.max_graphs = max_graphs
        self._seen: dict = {}
        self._graphs: dict = {}
        self.replays = 0

    @staticmethod
    def _key(P: dict, batch: Batch):
        return (tuple((n, t.data_ptr(), tuple(t.shape), t.dtype) for n, t in sorted(P.items())),
                tuple(batch.inputs.shape), tuple(batch.targets.shape), batch.inputs.device)

    def __call__(self, P: dict, batch: Batch) -> torch.Tensor:
        if not batch.inputs.is_cuda:
            raise ValueError("CUDA graphs need a CUDA device; run without --cuda_graphs on CPU")
        key = self._key(P, batch)
        ent = self._graphs.get(key)
        if ent is None:
            n = self._seen.get(key, 0)
            self._seen[key] = n + 1
            if n == 0 or len(self._graphs) >= self.max_graphs:
                return self.fn(P, batch)                      # eager: warm-up, or too many shapes
            ent = self._capture(P, batch)
            self._graphs[key] = ent
        graph, inp, tgt, out = ent
        inp.copy_(batch.inputs)
        tgt.copy_(batch.targets)
        graph.replay()
        self.replays += 1
        return out.clone()

    def _capture(self, P: dict, batch: Batch):
        inp, tgt = batch.inputs.clone(), batch.targets.clone()
        static = Batch(inputs=inp, targets=tgt)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):                         # allocator warm-up off the main stream
            self.fn(P, static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.fn(P, static)
        return graph, inp, tgt, out


class GraphedZOStep:
    """A whole CD-RGE step as CUDA graph replays: the probe writes, the stacked forwards and losses, the
    coefficients, the mean loss and the early update (`zo_step(step_graph=...)`).

    For a tiny model the step's GPU work is well under a millisecond and its host work (dozens of
    launches and small uploads) is the larger part; here the host fills one pinned buffer with the
    step's keys, coefficients and lr (`ZOEngine.fill_step_args`), makes one copy, copies the batch
    into the graph's input tensors and replays: one graph in a world of one process, two around the
    loss all-gather otherwise. The values are the eager step's, bit for bit: every kernel reads the
    same numbers, from device buffers instead of launch arguments.

    As with GraphedStackedLoss, a new key (local seeds, models per pass, batch shape) first runs
    eagerly (the same device-args calls, uncaptured: this compiles kernels and builds the engine's
    launch plans), the second time captures, later replays. At most `max_graphs` graphs are kept; a
    new capture beyond them drops the oldest (a curriculum's lengths grow: the newest shapes are the
    ones that recur). Only where `why_not` finds nothing:
    CD-RGE on the Triton kernel path with an update that needs no host value, several models per pass.
    """

    def __init__(self, fn, *, max_graphs: int = 4, capture: bool = True):
        self.fn = fn                    # fn(P, batch) -> [M] losses, as GraphedStackedLoss takes
        self.max_graphs = max_graphs
        self.capture = capture          # False: always the eager device-args path (any device; for tests)
        self._warm: dict = {}           # key -> the pass buffers' addresses after its last eager run
        self._args: dict = {}           # key -> StepArgs (kept for the key's graph, or its next capture)
        self._ents: dict = {}           # key -> a captured graph and its static tensors, oldest first
        self.replays = 0

    def why_not(self, engine, *, models_per_pass: int) -> str | None:
        """Why a step of this engine cannot be replayed whole (None: it can)."""
        if not engine.use_kernels:
            return "the Triton noise kernels do not run here"
        if engine.cfg.needs_baseline:
            return "FD-RGE needs the baseline forward"
        if not engine.update_before_sync:
            return ("the update needs host values (Adam, gradient clipping or normalisation, weight decay), "
                    "or engine.update_before_sync was set False")
        if models_per_pass < 2:
            return "one model per forward pass (no stacked pass to capture)"
        if self.capture and not engine.params[0].master.is_cuda:
            return "not on CUDA"
        return None

    def run(self, engine, *, seeds, lo: int, hi: int, lr: float, batch: Batch, comm, models_per_pass: int,
            layouts=None) -> tuple[torch.Tensor, torch.Tensor]:
        """The step's device work for `seeds` (this rank evaluates seeds[lo:hi]): returns the gathered
        [n, 2] loss table and the packed float64 [n + 1] (coefficients, then the mean loss), both
        still on the device; the update is queued, guarded to a no-op where a value is not finite."""
        local = list(seeds[lo:hi])
        key = (len(local), models_per_pass, comm.world_size, tuple(batch.inputs.shape), tuple(batch.targets.shape),
               batch.inputs.dtype, batch.targets.dtype, batch.inputs.device)
        bufs = engine.stack_buffers()
        token = tuple(t.data_ptr() for t in bufs)
        ent = self._ents.get(key)
        if ent is not None and ent["token"] != token:
            self._ents.pop(key)                 # the engine's pass buffers moved: the graph addresses the old ones
            ent = None
        if ent is None:
            args = self._args.get(key)
            if args is None:
                args = self._args[key] = engine.step_args(len(local), models_per_pass=models_per_pass)
            engine.fill_step_args(args, seeds, local, lr=lr, models_per_pass=models_per_pass)
            if not self.capture or self._warm.get(key) != token:
                # eager: a new key's warm-up (kernels compiled, launch plans and pass buffers made), or
                # the first step after the pass buffers moved
                while len(self._args) > 2 * self.max_graphs:    # keys not seen for long are forgotten
                    old = next(k for k in self._args if k != key)
                    for d in (self._args, self._ents, self._warm):
                        d.pop(old, None)
                local_losses = engine.evaluate_stacked(local, self._loss(batch), lr=lr,
                                                       models_per_pass=models_per_pass, layouts=layouts, args=args)
                gathered = comm.all_gather_rows(local_losses)
                self._warm[key] = tuple(t.data_ptr() for t in engine.stack_buffers())
                return gathered, self._finish(engine, args, seeds, gathered)
            while len(self._ents) >= self.max_graphs:           # the least recently captured graph goes
                self._ents.pop(next(iter(self._ents)))
            ent = self._ents[key] = self._capture(engine, args, seeds, local, lr, batch, comm, models_per_pass,
                                                  layouts)
            ent["token"], ent["bufs"] = token, bufs     # (the buffers stay alive as long as the graph)
        else:
            engine.fill_step_args(ent["args"], seeds, local, lr=lr, models_per_pass=models_per_pass)
        ent["inp"].copy_(batch.inputs)
        ent["tgt"].copy_(batch.targets)
        ent["a"].replay()
        if ent["b"] is not None:
            ent["gin"].copy_(comm.all_gather_rows(ent["local"]))
            ent["b"].replay()
        self.replays += 1
        return ent["gin"], ent["packed"]

    def _loss(self, batch):
        fn = self.fn

        def loss(P):
            with torch.inference_mode():
                return fn(P, batch)
        return loss

    @staticmethod
    def _finish(engine, args, seeds, gathered) -> torch.Tensor:
        coefs = engine.coefficients(gathered, scale=args.coef_scale)
        packed = torch.cat([coefs.double().reshape(-1), gathered.double().mean().reshape(1)])
        engine.enqueue_update(seeds, coefs, torch.isfinite(packed).all(), args=args)
        return packed

    def _capture(self, engine, args, seeds, local, lr, batch, comm, models_per_pass, layouts) -> dict:
        inp, tgt = batch.inputs.clone(), batch.targets.clone()
        loss = self._loss(Batch(inputs=inp, targets=tgt))
        ent = {"args": args, "inp": inp, "tgt": tgt, "b": None}

        def stage_a():
            return engine.evaluate_stacked(local, loss, lr=lr, models_per_pass=models_per_pass, layouts=layouts,
                                           args=args)

        torch.cuda.current_stream().synchronize()    # args' copy and the batch are in place before capture
        a = torch.cuda.CUDAGraph()
        if comm.world_size == 1:
            with torch.cuda.graph(a):
                ent["local"] = ent["gin"] = stage_a()
                ent["packed"] = self._finish(engine, args, seeds, ent["gin"])
        else:
            with torch.cuda.graph(a):
                ent["local"] = stage_a()
            ent["gin"] = torch.empty((len(seeds), 2), dtype=ent["local"].dtype, device=ent["local"].device)
            b = torch.cuda.CUDAGraph()
            with torch.cuda.graph(b, pool=a.pool()):
                ent["packed"] = self._finish(engine, args, seeds, ent["gin"])
            ent["b"] = b
        ent["a"] = a
        return ent
