"""The one module that imports torch.distributed: process-group start-up and the scalar collectives.

    comm = init_comm(device_arg="cuda", init_timeout_s=300)   # LocalComm without a launcher
    lo, hi = comm.shard(n_total)                               # this rank's probes
    losses_N2 = comm.all_gather_rows(local_M2)                 # [n_total, 2]: the only per-step traffic
    comm.check_replicas(engine.master_checksum(), step=t)      # 8 bytes per rank, every K steps
    comm.close()                                               # destroys the process group

What crosses the wire per step is the [n_total, 2] loss table (plus, every --sync_check_iters steps,
one float64 per rank). The weights are broadcast once (`broadcast_tensors`, at start-up and after a
checkpoint load) and never reduced. `bytes_communicated` counts, per rank, the payload it contributes
to collectives plus the payload it receives from the other ranks (logical bytes, independent of the
algorithm the backend picks).

Launchers: torchrun and `python -m torch.distributed.launch` set RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; without them (a plain `python script.py`) the world is one process and
no process group is created. Backend: NCCL when the device is CUDA, gloo otherwise.
"""
from __future__ import annotations

import datetime
import inspect
import os
import sys
import threading

import torch
import torch.distributed as dist

from zo.comm import LocalComm, ReplicaMismatchError, shard_range

EXIT_INIT_TIMEOUT = 5  # exit status when the first rendezvous/barrier does not complete in time


class DistInitError(RuntimeError):
    """The process group could not be started (rendezvous failure or timeout)."""


def launch_env() -> dict:
    """rank / world_size / local_rank from the launcher's environment (world 1 when absent)."""
    def _int(name, default):
        v = os.environ.get(name)
        if v in (None, ""):
            return default
        try:
            return int(v)
        except ValueError:
            raise ValueError(f"environment variable {name}={v!r} is not an integer") from None
    world = _int("WORLD_SIZE", 1)
    rank = _int("RANK", 0)
    local_rank = _int("LOCAL_RANK", None)
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world}")
    return {"world_size": world, "rank": rank, "local_rank": local_rank}


def resolve_device(device_arg: str | None, local_rank: int, world_size: int) -> torch.device:
    """The device of this rank: its LOCAL_RANK GPU under CUDA, else the CPU."""
    if device_arg in (None, "", "auto"):
        device_arg = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device_arg)
    except RuntimeError:
        raise ValueError(f"--device {device_arg!r} is not a device; use cpu, cuda or cuda:N") from None
    if dev.type == "cpu":
        return torch.device("cpu")
    if dev.type != "cuda":
        raise ValueError(f"--device {device_arg!r} is not supported; use cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise ValueError(f"--device {device_arg} was requested but CUDA is not available; use --device cpu")
    n = torch.cuda.device_count()
    if world_size > 1 or dev.index is None:
        if dev.index is not None and dev.index != local_rank:
            print(f"[rank {local_rank}] warning: --device {device_arg} ignored under a launcher; "
                  f"each rank uses its LOCAL_RANK GPU (cuda:{local_rank})", file=sys.stderr)
        idx = local_rank
    else:
        idx = dev.index
    if idx >= n:
        raise ValueError(f"rank needs cuda:{idx} but only {n} GPU(s) are visible; launch at most {n} processes "
                         f"per node (--nproc_per_node) or set CUDA_VISIBLE_DEVICES")
    return torch.device("cuda", idx)


def _timeout_message(*, backend: str, timeout_s: float, rank: int, world: int) -> str:
    addr = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
    return (f"[rank {rank}] error: the process group (backend {backend}, world size {world}, master {addr}) "
            f"did not come up within {timeout_s:g} s. Check that all {world} processes were started and can "
            f"reach the master address and port. If it hangs on nodes without InfiniBand, set "
            f"NCCL_P2P_DISABLE=1 (export NCCL_P2P_DISABLE=1) and re-run; on slow clusters raise --init_timeout_s.")


class _Watchdog:
    """Ends the process with a clear message if the guarded block does not finish in time.

    Needed because a stuck NCCL communicator init or first collective blocks in C++ and never
    returns to Python; the timer thread is the only code that still runs."""

    def __init__(self, timeout_s: float, message: str):
        self.timeout_s, self.message = timeout_s, message
        self._timer = None

    def _fire(self):
        sys.stderr.write(self.message + "\n")
        sys.stderr.flush()
        os._exit(EXIT_INIT_TIMEOUT)

    def __enter__(self):
        self._timer = threading.Timer(self.timeout_s, self._fire)
        self._timer.daemon = True
        self._timer.start()
        return self

    def __exit__(self, *exc):
        self._timer.cancel()
        return False


class DistComm:
    """A world of several processes joined in one torch.distributed process group.

    Same interface as zo.comm.LocalComm. Every collective moves scalars: loss pairs and checksums."""

    def __init__(self, *, rank: int, world_size: int, local_rank: int, device: torch.device, backend: str):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.device, self.backend = device, backend
        self.is_main = rank == 0
        self.bytes_sent = 0
        self.bytes_received = 0
        self._closed = False

    @property
    def bytes_communicated(self) -> int:
        return self.bytes_sent + self.bytes_received

    def shard(self, n: int) -> tuple[int, int]:
        return shard_range(n, self.rank, self.world_size)

    def _count(self, contributed: int, received: int) -> None:
        self.bytes_sent += int(contributed)
        self.bytes_received += int(received)

    def all_gather_rows(self, local: torch.Tensor) -> torch.Tensor:
        """[m, k] rows of every rank, concatenated in rank order: [world * m, k] (m equal on all ranks)."""
        x = local.detach().to(self.device).contiguous()
        out = torch.empty((self.world_size * x.shape[0], *x.shape[1:]), dtype=x.dtype, device=self.device)
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        gather(out, x)
        self._count(x.nelement() * x.element_size(), (self.world_size - 1) * x.nelement() * x.element_size())
        return out

    def all_reduce_max_scalar(self, x: float) -> float:
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        self._count(8, 8)
        return float(t.item())

    def all_gather_scalar(self, x: float) -> list[float]:
        """One float64 from every rank, in rank order."""
        t = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
        return self.all_gather_rows(t.view(1, 1)).view(-1).tolist()

    def check_replicas(self, checksum: float, *, step: int) -> None:
        """Raise ReplicaMismatchError on every rank if the checksums are not bitwise equal."""
        sums = self.all_gather_scalar(checksum)
        if any(s != sums[0] for s in sums):
            raise ReplicaMismatchError(step, sums)

    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    def broadcast_tensors(self, tensors) -> None:
        """Copy rank 0's tensors into every rank's (in place). Used once, at start-up / after a load."""
        for t in tensors:
            buf = t if t.device == self.device and t.is_contiguous() else t.to(self.device).contiguous()
            dist.broadcast(buf, src=0)
            if buf is not t:
                t.copy_(buf)
            n = t.nelement() * t.element_size()
            self._count(n if self.rank == 0 else 0, 0 if self.rank == 0 else n)

    def close(self) -> None:
        if not self._closed and dist.is_initialized():
            dist.destroy_process_group()
        self._closed = True


def init_comm(*, device_arg: str | None = None, init_timeout_s: float = 300.0, local_rank_arg: int | None = None,
              collective_timeout_s: float = 1800.0):
    """Join the launcher's process group (or make a world of one) and return the communicator.

    local_rank_arg: the --local-rank / --local_rank value that `torch.distributed.launch` passes;
    the LOCAL_RANK environment variable wins over it. The first barrier runs under a watchdog: if
    the group does not come up within `init_timeout_s`, the process ends with EXIT_INIT_TIMEOUT and a
    message suggesting NCCL_P2P_DISABLE=1. Later collectives wait up to `collective_timeout_s` (rank 0
    may spend a while writing a large checkpoint while the others wait at the next all-gather)."""
    if not init_timeout_s > 0:
        raise ValueError(f"--init_timeout_s must be > 0, got {init_timeout_s}")
    env = launch_env()
    world, rank = env["world_size"], env["rank"]
    local_rank = env["local_rank"] if env["local_rank"] is not None else (local_rank_arg or 0)
    device = resolve_device(device_arg, local_rank, world)
    if world == 1:
        comm = LocalComm(device)
        comm.local_rank = local_rank
        return comm
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise ValueError(f"WORLD_SIZE={world} but {name} is not set; launch with torchrun "
                             f"(torchrun --nproc_per_node=N distributed_rge.py ...)")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    kw = {"backend": backend, "timeout": datetime.timedelta(seconds=max(init_timeout_s, collective_timeout_s))}
    if backend == "nccl" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kw["device_id"] = device  # eager communicator init, so a hang shows up under the watchdog
    msg = _timeout_message(backend=backend, timeout_s=init_timeout_s, rank=rank, world=world)
    with _Watchdog(init_timeout_s, msg):
        try:
            dist.init_process_group(**kw)
            comm = DistComm(rank=rank, world_size=world, local_rank=local_rank, device=device, backend=backend)
            # The first collective: with NCCL this is where a missing P2P path hangs.
            comm.all_reduce_max_scalar(0.0)
        except Exception as e:  # noqa: BLE001 - every start-up failure gets the same clear message
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            if dist.is_initialized():
                dist.destroy_process_group()
            raise DistInitError(f"{msg}\n  cause: {type(e).__name__}: {first}") from None
    comm.bytes_sent = comm.bytes_received = 0
    return comm
