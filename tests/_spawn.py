"""Run a function in N local processes that can join one gloo process group (test helper).

    results = run_workers(fn, world_size=2, args=(tmp_dir,))   # fn(rank, world_size, *args) -> picklable

Each worker gets the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT
on a free port), runs with torch.set_num_threads(1) (reductions over different thread counts may
differ, and the tests compare bits), and sends back fn's return value. Workers start from a
forkserver that imported torch once, so a world of 4 costs well under a second to start.
Return tensors as bytes or numpy arrays, not torch tensors (those travel through shared memory
that dies with the worker).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import queue
import socket
import traceback

_CTX = None


def _context():
    global _CTX
    if _CTX is None:
        _CTX = mp.get_context("forkserver")
        _CTX.set_forkserver_preload(["torch"])
    return _CTX


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WorkerError(RuntimeError):
    pass


def _worker(fn, rank, world_size, port, env, args, q):
    os.environ.update(env)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world_size), OMP_NUM_THREADS="1")
    try:
        import torch
        torch.set_num_threads(1)
        q.put((rank, True, fn(rank, world_size, *args)))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        q.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def run_workers(fn, *, world_size: int, args=(), env=None, timeout_s: float = 120.0) -> list:
    """fn(rank, world_size, *args) in world_size processes; returns the results in rank order.

    Raises WorkerError with every failing rank's traceback, or when the workers do not finish in
    timeout_s (they are then killed)."""
    ctx = _context()
    q = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(fn, r, world_size, port, dict(env or {}), args, q), daemon=True)
             for r in range(world_size)]
    for p in procs:
        p.start()
    results, errors = {}, {}
    try:
        import time
        deadline = time.monotonic() + timeout_s
        while len(results) + len(errors) < world_size:
            try:
                rank, ok, val = q.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise WorkerError(f"workers did not finish within {timeout_s} s "
                                  f"(done: {sorted(results)}, failed: {sorted(errors)})") from None
            (results if ok else errors)[rank] = val
        for p in procs:
            p.join(timeout=30)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    if errors:
        raise WorkerError("\n".join(f"--- rank {r} ---\n{msg}" for r, msg in sorted(errors.items())))
    return [results[r] for r in range(world_size)]
