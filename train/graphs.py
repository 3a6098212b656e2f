"""CUDA-graph replay of a stacked probe loss: one launch instead of dozens for small models.

    graphed = GraphedStackedLoss(lambda P, batch: stacked_batch_loss(model, P, batch, time_chunk=tc))
    losses = graphed(P, batch)          # [M] losses, as the eager call would return

The ZO engine writes every pass's perturbed parameters into the same stacked buffers, so a graph
captured once for those buffers replays with the new values. A graph is keyed by the addresses,
shapes and dtypes of P's tensors and the batch's shapes; the batch is copied into the graph's own
input tensors before each replay. The first call with a new key runs eagerly (it compiles kernels
and settles the backend), the second captures, later ones replay. Captured memory stays reserved
for the graph, so this helps where launches dominate (models of a few million parameters) and
costs memory on large ones. CUDA only; both trainers take --cuda_graphs auto|true|false, auto (the
default) turning it on for models of at most GRAPHS_AUTO_MAX_PARAMS parameters (`use_cuda_graphs`).
Measured on the H200 at 12 probes (2026-11-28, after the step's host work was trimmed): tiny 2.00 ->
1.09 ms per step, small 3.81 -> 3.35 ms, medium 25.7 ms either way.
"""
from __future__ import annotations

import torch

from tasks import Batch


GRAPH_SETTINGS = ("auto", "true", "false")
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
    raise ValueError(f"--cuda_graphs must be one of {', '.join(GRAPH_SETTINGS)}, got {v!r}")


def use_cuda_graphs(setting, *, device, n_params: int, models_per_pass: int) -> bool:
    """Whether to replay the stacked probe loss as a CUDA graph: 'true' always (the configs refuse it
    off CUDA), 'false' never, 'auto' on CUDA when several models share a pass and the model has at
    most GRAPHS_AUTO_MAX_PARAMS parameters (launch-bound sizes; larger models gain nothing and the
    graph keeps its memory reserved)."""
    s = graphs_setting(setting)
    if s != "auto":
        return s == "true"
    return torch.device(device).type == "cuda" and models_per_pass > 1 and n_params <= GRAPHS_AUTO_MAX_PARAMS


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
