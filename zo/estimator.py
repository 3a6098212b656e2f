"""Random gradient estimation (CD-RGE / FD-RGE) over a set of named parameters.

The engine knows tensors and a loss closure, nothing else: no models, no tasks, no
torch.distributed. One step is

    seeds  = engine.seeds(step)                        # ask: n probe seeds (ints)
    losses = engine.evaluate(seeds[a:b], loss_fn)      # any subset; loss_fn() reads the live params
    coefs  = engine.coefficients(all_losses, baseline) # [n] scalars, one per probe
    engine.update(seeds, coefs, lr=...)                # tell: theta <- theta - lr * g_hat

so a distributed trainer can evaluate its share of the seeds, all-gather the losses, and call
`coefficients` and `update` with the full set on every rank.

Exactness (DESIGN.md invariant 2): probes never move the master weights. A probe writes
`live = cast(master + s * eps * z)` into the model's tensors and `restore()` writes
`live = cast(master)`; nothing is ever added and subtracted in place, so the master is bitwise
unchanged by any number of probes.

The estimate: for probe directions z_i (n of them) with eps = epsilon_tying_ratio * lr,
    CD:  g_hat = 1/n * sum_i (L(theta + eps z_i) - L(theta - eps z_i)) / (2 eps) * z_i
    FD:  g_hat = 1/n * sum_i (L(theta + eps z_i) - L(theta)) / eps * z_i
    FD antithetic: n/2 seeds, each evaluated at +z and -z against L(theta); equals CD on n/2 seeds
so with ratio 1 the SGD step is theta <- theta - sum_i (L+ - L-) / (2n) * z_i.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field

import torch

from zo import kernels as zk
from zo import noise as zn
from zo.layouts import GateTiles

GRAD_NORMS = (None, "l2", "l1")


_WARNED_NO_KERNELS = False
_WARNED_LAYOUT: set = set()


def _warn_once_layout(msg: str) -> None:
    if msg not in _WARNED_LAYOUT:
        _WARNED_LAYOUT.add(msg)
        print(msg, file=sys.stderr, flush=True)


def _warn_no_kernels(params) -> None:
    """Say once, loudly, that a CUDA run falls back to the (much slower) torch noise path, and why."""
    global _WARNED_NO_KERNELS
    if _WARNED_NO_KERNELS:
        return
    _WARNED_NO_KERNELS = True
    if not zk.available():
        why = "triton is not importable or CUDA is unavailable to it"
    else:
        bad = [p.name for p in params if not (p.master.is_cuda and p.master.is_contiguous() and p.live.is_contiguous()
                                              and p.master.dtype in (torch.float32, torch.bfloat16, torch.float16))]
        why = f"parameters not contiguous CUDA fp32/bf16/fp16: {bad[:4]}"
    print(f"[zo] WARNING: Triton noise kernels NOT used ({why}); probes and updates take the torch path, "
          f"bitwise identical but far slower on large models.", file=sys.stderr, flush=True)


def _as_loss_vec(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32)).reshape(-1)


def _as_loss(x: torch.Tensor) -> torch.Tensor:
    """A scalar loss in at least fp32 (fp64 losses stay fp64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32)).reshape(())


@dataclass(frozen=True)
class ZOConfig:
    """Hyper-parameters of the estimator and its update rule (the paper's flags)."""
    num_perturbations: int = 8
    epsilon_tying_ratio: float = 1.0
    central_difference: bool = True
    antithetic: bool = False            # FD only: probes come in +z / -z pairs
    distribution: str = "rademacher"    # rademacher | normal | uniform
    probe_normalization: bool = False   # rescale each z to norm sqrt(d)
    gradient_normalization: str | None = None  # None | "l2" | "l1": g_hat <- g_hat / ||g_hat||
    weight_decay: float = 0.0           # decoupled: theta <- theta * (1 - lr * wd)
    grad_clip: float = 0.0              # clip ||g_hat||_2 to this value (0 = off)
    adam: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    adam_eps: float = 1e-8
    probe_dropout_rate: float = 0.0     # fraction of probe elements set to 0 (unbiased rescale)
    master_dtype: torch.dtype | None = None  # None: same dtype as the model's tensors

    def __post_init__(self):
        if self.num_perturbations < 1:
            raise ValueError(f"num_perturbations must be >= 1, got {self.num_perturbations}")
        if self.epsilon_tying_ratio <= 0:
            raise ValueError(f"epsilon_tying_ratio must be > 0, got {self.epsilon_tying_ratio}")
        if self.distribution not in zn.DISTRIBUTIONS:
            raise ValueError(f"unknown distribution {self.distribution!r}; choose one of {zn.DISTRIBUTIONS}")
        if self.gradient_normalization not in GRAD_NORMS:
            raise ValueError(f"gradient_normalization must be one of {GRAD_NORMS}, got {self.gradient_normalization!r}")
        if self.antithetic and self.central_difference:
            raise ValueError("antithetic sampling applies to FD-RGE; pass central_difference=False with it "
                             "(CD-RGE is already antithetic)")
        if self.antithetic and self.num_perturbations % 2:
            raise ValueError(f"antithetic FD-RGE needs an even num_perturbations (pairs of +z/-z), got {self.num_perturbations}")
        if not 0.0 <= self.probe_dropout_rate < 1.0:
            raise ValueError(f"probe_dropout_rate must be in [0, 1), got {self.probe_dropout_rate}")
        if self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("weight_decay and grad_clip must be >= 0")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise ValueError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}")

    @property
    def num_seeds(self) -> int:
        """Distinct probe directions per step (antithetic pairs share one)."""
        return self.num_perturbations // 2 if self.antithetic else self.num_perturbations

    @property
    def needs_baseline(self) -> bool:
        return not self.central_difference

    @property
    def needs_full_gradient(self) -> bool:
        """Whether the update must materialise g_hat (else it streams sum_i c_i z_i into theta)."""
        return self.adam or self.gradient_normalization is not None or self.grad_clip > 0

    def epsilon(self, lr: float) -> float:
        return self.epsilon_tying_ratio * lr


@dataclass(eq=False)
class _Param:
    name: str
    live: torch.Tensor      # the model's tensor: what the loss closure reads
    master: torch.Tensor    # theta; equals live when no separate master is kept
    pid: int                # noise stream id
    mask: torch.Tensor | None = None  # optional bool mask of elements that are trained (False: frozen at 0)


@dataclass
class EngineState:
    """Optimiser state that a checkpoint must carry."""
    adam_step: int = 0
    adam_m: dict[str, torch.Tensor] = field(default_factory=dict)
    adam_v: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(eq=False)
class StepArgs:
    """The values a step's device work reads that change from step to step, as device tensors at fixed
    addresses, so that a CUDA graph captured over them replays with each step's values (`ZOEngine.
    step_args`, filled by `fill_step_args`):

        pass_keys[i]   int32 [P, M_i, w]  noise keys of the models of probe pass i
        pass_alphas[i] fp32 [M_i]         their probe coefficients (sign * eps * probe scale)
        update_keys    int32 [P, n, w]    the update's keys (all n seeds of the step)
        update_scales  fp64 [n]           the seeds' probe scales
        coef_scale     fp64 [1]           the coefficients' factor (`ZOEngine.coefficient_scale`)
        lr             fp32 [1]           the update's learning rate

    Every tensor is a view of one device byte buffer (`dev`), written from one pinned host buffer
    (`host`) by one copy per step."""
    shape: tuple                      # (n seeds, [M_i per pass], P, w): what the views were laid out for
    host: torch.Tensor
    dev: torch.Tensor
    pass_keys: list
    pass_alphas: list
    update_keys: torch.Tensor
    update_scales: torch.Tensor
    coef_scale: torch.Tensor
    lr: torch.Tensor
    host_views: dict                  # name -> numpy view of `host` with the device view's layout
    copied: object = None             # CUDA event recorded after each host -> device copy (None: none yet)


class ZOEngine:
    """CD-RGE / FD-RGE over named tensors. See the module docstring for the protocol."""

    def __init__(self, named_params, *, config: ZOConfig, run_seed: int = 0,
                 param_masks: dict[str, torch.Tensor] | None = None, cache_budget_bytes: int = 256 << 20):
        self.cfg = config
        self.run_seed = int(run_seed)
        self.params: list[_Param] = []
        masks = param_masks or {}
        seen_ids = {}
        for name, t in named_params:
            if not t.is_floating_point():
                continue
            live = t.detach()
            mdt = config.master_dtype or live.dtype
            # A separate master is needed whenever probes write into the live tensor.
            master = live.to(mdt, copy=True)
            pid = zn.param_id_from_name(name)
            if pid in seen_ids:
                raise ValueError(f"parameter names {seen_ids[pid]!r} and {name!r} hash to the same noise id")
            seen_ids[pid] = name
            self.params.append(_Param(name, live, master, pid, masks.get(name)))
        if not self.params:
            raise ValueError("ZOEngine got no floating-point parameters to train")
        self.dim = sum(p.master.numel() if p.mask is None else int(p.mask.sum()) for p in self.params)
        self.state = EngineState()
        self._scale_cache: dict[int, float] = {}
        # Probe directions generated during `evaluate` are kept for `update` within the step,
        # up to this many bytes; beyond it they are regenerated (same values either way).
        self.cache_budget_bytes = cache_budget_bytes
        self._z_cache: dict[int, list[torch.Tensor]] = {}
        self._z_cache_bytes = 0
        self._bytes_per_direction = 4 * sum(p.master.numel() for p in self.params)
        self._stack_bufs: dict = {}
        # Fused Triton kernels (zo/kernels.py) when every tensor is a contiguous CUDA fp32/bf16/fp16
        # tensor; they produce bit-identical results to the torch path (tests/test_kernels.py).
        self.use_kernels = zk.available() and all(
            p.master.is_cuda and p.master.dtype in (torch.float32, torch.bfloat16, torch.float16)
            and p.master.is_contiguous() and p.live.is_contiguous() for p in self.params)
        if any(p.master.is_cuda for p in self.params) and not self.use_kernels:
            _warn_no_kernels(self.params)
        # Small tensors share one launch per kind of work (zo.kernels.multi_*: bitwise the same as a
        # launch per tensor); tensors above zk.MULTI_MAX_NUMEL keep their own launch.
        self._grouping: tuple | None = None   # (groups, singles), made on the first kernel launch
        self._plans: dict = {}
        self._grad_bufs: dict[str, torch.Tensor] = {}
        # noise keys on the device by seed tuple (a pure function of it), so that `prefetch_keys` can
        # hash and upload a step's keys while the GPU runs the forwards instead of after the sync
        self._keys_cache: dict[tuple, torch.Tensor] = {}
        self._host_keys_cache: dict[tuple, object] = {}   # the same keys as host numpy arrays (step_args)
        self._early_update = True           # see `update_before_sync`

    @property
    def update_before_sync(self) -> bool:
        """Whether `enqueue_update` can queue the update before the step's host sync (its coefficients
        stay on the device): where the update needs no host-side value, i.e. the kernel path, no full
        gradient (clip / normalisation / Adam read its norm) and no weight decay (its factor is a host
        scalar). Set it False to make zo_step update after the sync instead (same weights, bit for
        bit); setting it True cannot enable it where those conditions fail."""
        return (self._early_update and self.use_kernels and not self.cfg.needs_full_gradient
                and self.cfg.weight_decay == 0)

    @update_before_sync.setter
    def update_before_sync(self, on: bool) -> None:
        self._early_update = bool(on)

    @property
    def _groups(self) -> list[list[int]]:
        if self._grouping is None:
            self._grouping = self._launch_groups()
        return self._grouping[0]

    @property
    def _singles(self) -> list[int]:
        if self._grouping is None:
            self._grouping = self._launch_groups()
        return self._grouping[1]

    def _launch_groups(self) -> tuple[list[list[int]], list[int]]:
        by_kind: dict = {}
        singles = []
        for k, p in enumerate(self.params):
            if p.master.numel() > zk.MULTI_MAX_NUMEL:
                singles.append(k)
                continue
            kind = (p.master.dtype, p.live.dtype, p.mask is None, p.live.data_ptr() == p.master.data_ptr())
            by_kind.setdefault(kind, []).append(k)
        groups = []
        for ks in by_kind.values():
            (groups.append(ks) if len(ks) > 1 else singles.extend(ks))
        return groups, sorted(singles)

    def _plan(self, key, build):
        """A cached multi-tensor plan; the key names the buffers it addresses (by data pointer)."""
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = build()
        return plan

    def _kernel_probes(self, keys, c, outs: dict, tag, skip=()) -> None:
        """Probe writes of every parameter into outs[name] ([M, *shape]): one launch per group of
        small tensors and one per large tensor, except the large tensors named in `skip`."""
        cfg = self.cfg
        for gi, grp in enumerate(self._groups):
            ps = [self.params[k] for k in grp]
            key = (tag, gi, tuple(outs[p.name].data_ptr() for p in ps), outs[ps[0].name].shape[0])
            plan = self._plan(key, lambda: zk.multi_apply_plan(
                [p.master for p in ps], [outs[p.name] for p in ps],
                masks=None if ps[0].mask is None else [p.mask for p in ps], key_rows=grp))
            zk.triton_apply_probes_multi(plan, keys, c, cfg.distribution, dropout_rate=cfg.probe_dropout_rate)
        for k in self._singles:
            p = self.params[k]
            if p.name in skip:
                continue
            zk.triton_apply_probes(p.master, outs[p.name], keys[k], p.pid, c, cfg.distribution,
                                   dropout_rate=cfg.probe_dropout_rate, mask=p.mask)

    # ------------------------------------------------------------------ ask
    def seeds(self, step: int) -> list[int]:
        """The probe seeds of optimiser step `step`: a pure function of (run_seed, step)."""
        return [zn.probe_seed(self.run_seed, step, i) for i in range(self.cfg.num_seeds)]

    # ------------------------------------------------------------------ probes
    def _direction(self, p: _Param, seed: int) -> torch.Tensor:
        """fp32 probe direction z(seed) restricted to parameter p (dropout and mask applied)."""
        z = zn.noise_flat(seed, p.pid, p.master.numel(), distribution=self.cfg.distribution,
                          device=p.master.device)
        if self.cfg.probe_dropout_rate > 0:
            z.mul_(zn.dropout_keep(seed, p.pid, z.numel(), self.cfg.probe_dropout_rate, device=z.device))
        if p.mask is not None:
            z.mul_(p.mask.reshape(-1))
        return z.view(p.master.shape)

    def probe_scale(self, seed: int) -> float:
        """Multiplier of z(seed): sqrt(d)/||z|| under probe normalisation, else 1. Pure in seed."""
        if not self.cfg.probe_normalization or (self.cfg.distribution == "rademacher"
                                                and self.cfg.probe_dropout_rate == 0):
            return 1.0
        if seed not in self._scale_cache:
            sq = sum(float(self._direction(p, seed).double().square().sum()) for p in self.params)
            self._scale_cache[seed] = math.sqrt(self.dim / sq) if sq > 0 else 0.0
        return self._scale_cache[seed]

    def directions(self, seed: int) -> list[torch.Tensor]:
        """z(seed) for every parameter, served from the per-step cache when it holds them."""
        zs = self._z_cache.get(seed)
        if zs is None:
            zs = [self._direction(p, seed) for p in self.params]
            if self._z_cache_bytes + self._bytes_per_direction <= self.cache_budget_bytes:
                self._z_cache[seed] = zs
                self._z_cache_bytes += self._bytes_per_direction
        return zs

    def clear_step_cache(self) -> None:
        self._z_cache.clear()
        self._z_cache_bytes = 0
        self._scale_cache.clear()

    @torch.no_grad()
    def apply_probe(self, seed: int, sign_eps: float, zs: list[torch.Tensor] | None = None) -> None:
        """live <- cast(master + sign_eps * scale * z(seed)), for every parameter.

        The sum is formed in a fresh tensor (never in place on the master)."""
        a = sign_eps * self.probe_scale(seed)
        if self.use_kernels:
            keys, c = self._kernel_args([seed], [a])
            self._kernel_probes(keys, c, {p.name: p.live.unsqueeze(0) for p in self.params}, "live")
            return
        zs = zs if zs is not None else self.directions(seed)
        for p, z in zip(self.params, zs):
            p.live.copy_(torch.add(p.master, z, alpha=a))

    def _kernel_args(self, seeds, coefs) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise keys of `seeds` for every parameter ([P, n, w] int32) and the coefficients ([n] fp32),
        each uploaded to the device in one transfer without a host sync."""
        dev = self.params[0].master.device
        return self._keys(seeds), zk._coefs_arg([float(x) for x in coefs], len(seeds), dev)

    KEYS_CACHED = 16   # seed tuples whose device keys are kept (a step uses one per pass, plus the update's)

    def _keys(self, seeds) -> torch.Tensor:
        """`zk.noise_keys_multi` of `seeds` for every parameter, cached by the seed tuple."""
        t = tuple(int(s) for s in seeds)
        keys = self._keys_cache.get(t)
        if keys is None:
            keys = zk.noise_keys_multi(list(t), [p.pid for p in self.params], device=self.params[0].master.device,
                                       dropout=self.cfg.probe_dropout_rate > 0)
            while len(self._keys_cache) >= self.KEYS_CACHED:
                self._keys_cache.pop(next(iter(self._keys_cache)))    # the oldest
            self._keys_cache[t] = keys
        return keys

    def host_keys(self, seeds):
        """`_keys(seeds)` as a host numpy int32 array (no upload), cached by the seed tuple alike."""
        t = tuple(int(s) for s in seeds)
        keys = self._host_keys_cache.get(t)
        if keys is None:
            keys = zk.noise_keys_host(list(t), [p.pid for p in self.params], dropout=self.cfg.probe_dropout_rate > 0)
            while len(self._host_keys_cache) >= self.KEYS_CACHED:
                self._host_keys_cache.pop(next(iter(self._host_keys_cache)))
            self._host_keys_cache[t] = keys
        return keys

    def step_args(self, n_local: int, *, models_per_pass: int) -> StepArgs:
        """Device buffers for `fill_step_args` of a step whose rank evaluates `n_local` seeds on the
        stacked path with `models_per_pass` models per pass (kernel path only)."""
        if not self.use_kernels:
            raise RuntimeError("step_args needs the Triton kernel path (CUDA, or the interpreter)")
        import numpy as np
        n, P = self.cfg.num_seeds, len(self.params)
        w = 4 if self.cfg.probe_dropout_rate > 0 else 2
        Ms = [len(ms) for _, ms in self._probe_groups(list(range(n_local)), models_per_pass)]
        parts = [("update_scales", np.float64, (n,)), ("coef_scale", np.float64, (1,)), ("lr", np.float32, (1,))]
        parts += [(f"alphas{i}", np.float32, (M,)) for i, M in enumerate(Ms)]
        parts += [("update_keys", np.int32, (P, n, w))] + [(f"keys{i}", np.int32, (P, M, w)) for i, M in enumerate(Ms)]
        offs, at = {}, 0
        for name, dt, shp in parts:
            offs[name] = at
            at += -(-int(np.prod(shp)) * np.dtype(dt).itemsize // 16) * 16     # 16-byte aligned views
        dev = self.params[0].master.device
        host = torch.empty(max(at, 16), dtype=torch.uint8, pin_memory=dev.type == "cuda")
        dbuf = torch.empty(max(at, 16), dtype=torch.uint8, device=dev)
        tdt = {np.float64: torch.float64, np.float32: torch.float32, np.int32: torch.int32}
        hv, dv = {}, {}
        hnp = host.numpy()
        for name, dt, shp in parts:
            nb = int(np.prod(shp)) * np.dtype(dt).itemsize
            hv[name] = hnp[offs[name]:offs[name] + nb].view(dt).reshape(shp)
            dv[name] = dbuf[offs[name]:offs[name] + nb].view(tdt[dt]).view(shp)
        return StepArgs(shape=(n_local, tuple(Ms), P, w), host=host, dev=dbuf,
                        pass_keys=[dv[f"keys{i}"] for i in range(len(Ms))],
                        pass_alphas=[dv[f"alphas{i}"] for i in range(len(Ms))],
                        update_keys=dv["update_keys"], update_scales=dv["update_scales"],
                        coef_scale=dv["coef_scale"], lr=dv["lr"], host_views=hv)

    def fill_step_args(self, args: StepArgs, seeds, local_seeds, *, lr: float, models_per_pass: int) -> None:
        """Write step values into `args` (one pinned host -> device copy, no host sync): the probe keys
        and alphas of `local_seeds` (this rank's share of `seeds`), grouped into passes as
        `evaluate_stacked` groups them, and the update's keys and scales of all `seeds`. The host
        buffer is rewritten only once the previous copy from it has run."""
        import numpy as np
        groups = self._probe_groups(list(local_seeds), models_per_pass)
        if (len(local_seeds), tuple(len(ms) for _, ms in groups)) != args.shape[:2] or len(seeds) != self.cfg.num_seeds:
            raise ValueError(f"step args laid out for {args.shape[:2]} (seeds, models per pass), got "
                             f"{len(local_seeds)} local seeds of {len(seeds)} in passes of "
                             f"{[len(ms) for _, ms in groups]}")
        if args.copied is not None:
            args.copied.synchronize()
        hv = args.host_views
        eps = self.cfg.epsilon(lr)
        signs = (1.0, -1.0) if (self.cfg.central_difference or self.cfg.antithetic) else (1.0,)
        for i, (chunk, model_seeds) in enumerate(groups):
            hv[f"keys{i}"][...] = self.host_keys(model_seeds)
            hv[f"alphas{i}"][...] = np.array([sg * (eps * self.probe_scale(s)) for s in chunk for sg in signs],
                                             dtype=np.float64)      # rounded to fp32 as _coefs_arg rounds them
        hv["update_keys"][...] = self.host_keys(seeds)
        hv["update_scales"][...] = [self.probe_scale(s) for s in seeds]
        hv["coef_scale"][...] = self.coefficient_scale(lr)
        hv["lr"][...] = lr
        args.dev.copy_(args.host, non_blocking=True)
        if args.dev.is_cuda:
            args.copied = args.copied or torch.cuda.Event()     # one event per StepArgs, recorded each step
            args.copied.record()

    def _probe_groups(self, seeds, models_per_pass: int) -> list[tuple[list[int], list[int]]]:
        """The passes of `evaluate_stacked`: (seeds of the pass, the seed of each of its models)."""
        per_seed = 2 if (self.cfg.central_difference or self.cfg.antithetic) else 1
        group = max(1, models_per_pass // per_seed)
        return [(list(seeds[g0:g0 + group]), [s for s in seeds[g0:g0 + group] for _ in range(per_seed)])
                for g0 in range(0, len(seeds), group)]

    def prefetch_keys(self, update_seeds, next_seeds, *, models_per_pass: int = 1) -> None:
        """Hash and upload, ahead of time, the noise keys of this step's update (`update_seeds`) and
        of the next step's first probe pass (`next_seeds`, grouped as `evaluate_stacked` groups them
        with `models_per_pass` models per pass, or one seed per pass when it is 1). Called while the
        GPU still runs this step's forwards, it takes that host work off the path between the step's
        one sync and the next kernels (later passes' keys are hashed while earlier passes run).
        Values are unchanged: keys are a pure function of the seeds."""
        if not self.use_kernels:
            return
        self._keys(update_seeds)
        if not next_seeds:
            return
        if models_per_pass > 1:
            self._keys(self._probe_groups(next_seeds, models_per_pass)[0][1])
        else:
            self._keys([next_seeds[0]])

    def prefetch_host_keys(self, seeds, local_seeds, *, models_per_pass: int) -> None:
        """`fill_step_args`'s key hashing for a coming step, ahead of time (host only, no upload)."""
        if not self.use_kernels:
            return
        for _, model_seeds in self._probe_groups(list(local_seeds), models_per_pass):
            self.host_keys(model_seeds)
        self.host_keys(seeds)

    @torch.no_grad()
    def restore(self) -> None:
        """live <- cast(master): exact, whatever probes were applied before."""
        for p in self.params:
            if p.live.data_ptr() != p.master.data_ptr():
                p.live.copy_(p.master)

    def evaluate(self, seeds, loss_fn, *, lr: float) -> torch.Tensor:
        """Losses of the probes of `seeds`, as a [len(seeds), 2] fp32 tensor on the loss's device.

        CD: columns (L(theta + eps z), L(theta - eps z)). FD: (L(theta + eps z), nan).
        FD antithetic: (L(theta + eps z), L(theta - eps z)), both later compared with the baseline.
        No host synchronisation happens here; the live tensors are restored on return."""
        eps = self.cfg.epsilon(lr)
        two_sided = self.cfg.central_difference or self.cfg.antithetic
        rows = []
        try:
            for s in seeds:
                zs = None if self.use_kernels else self.directions(s)
                self.apply_probe(s, +eps, zs)
                lp = _as_loss(loss_fn())
                if two_sided:
                    self.apply_probe(s, -eps, zs)
                    lm = _as_loss(loss_fn())
                else:
                    lm = torch.full_like(lp, float("nan"))
                rows.append(torch.stack([lp, lm]))
        finally:
            self.restore()
        if not rows:
            return torch.empty(0, 2)
        return torch.stack(rows)

    @torch.no_grad()
    def evaluate_stacked(self, seeds, stacked_loss_fn, *, lr: float, models_per_pass: int,
                         layouts=None, args: StepArgs | None = None) -> torch.Tensor:
        """Like `evaluate`, but several perturbed models per forward pass.

        stacked_loss_fn(P) gets a dict name -> tensor [M, *shape] of M perturbed copies of every
        parameter (model dtype) and returns their M losses. Rows are (theta + eps z_i,
        theta - eps z_i) per seed, exactly the values `evaluate` would produce for the same seed.
        layouts: None, or a callable M -> {name: layout} (`zo.layouts`, declared by the model for a pass
        of M models): those parameters then arrive in that layout ([M, ...] of the layout's shape), the
        same values without the [M, *shape] copy, where the kernels can write it (see `_layouts_of`).
        args: `fill_step_args` output for these seeds; the probe writes then read their keys and alphas
        from it (no host value enters the device work, so the call can be captured in a CUDA graph)."""
        if args is not None and not self.use_kernels:
            raise RuntimeError("step args need the Triton kernel path")
        eps = self.cfg.epsilon(lr)
        signs = (1.0, -1.0) if (self.cfg.central_difference or self.cfg.antithetic) else (1.0,)
        per_seed = len(signs)
        out = []
        for i, (chunk, model_seeds) in enumerate(self._probe_groups(seeds, models_per_pass)):
            M = len(model_seeds)
            laid = self._layouts_of(layouts, M)
            P = {p.name: (self._layout_buffer(p, laid[p.name], M) if p.name in laid else self._stack_buffer(p, M))
                 for p in self.params}
            if args is not None:
                keys, c = args.pass_keys[i], args.pass_alphas[i]
                if keys.shape[1] != M:
                    raise ValueError(f"step args hold {keys.shape[1]} models for pass {i}, the pass has {M}")
            elif self.use_kernels:
                alphas = [sg * (eps * self.probe_scale(s)) for s in chunk for sg in signs]
                keys, c = self._kernel_args(model_seeds, alphas)
            if self.use_kernels:
                self._kernel_probes(keys, c, P, "stack", skip=laid)
                for k, p in enumerate(self.params):
                    if p.name in laid:
                        zk.triton_apply_probes_gate_tiles(p.master, P[p.name], keys[k], p.pid, c)
            else:
                for j, s in enumerate(chunk):
                    zs = self.directions(s)
                    a = eps * self.probe_scale(s)
                    for k, p in enumerate(self.params):
                        for t, sg in enumerate(signs):
                            P[p.name][j * per_seed + t].copy_(torch.add(p.master, zs[k], alpha=sg * a))
            losses = _as_loss_vec(stacked_loss_fn(P)).view(len(chunk), per_seed)
            if per_seed == 1:
                losses = torch.cat([losses, torch.full_like(losses, float("nan"))], dim=1)
            out.append(losses)
        return torch.cat(out) if out else torch.empty(0, 2)

    def _layouts_of(self, layouts, M: int) -> dict:
        """{name: layout} of the parameters this pass writes in a declared layout: a GateTiles layout
        that fits the parameter's shape, on the kernel path (rademacher probes, no probe dropout, no
        mask), for a tensor with its own probe launch (small tensors share one and stay dense, silently:
        their re-layout costs next to nothing). Anything else declared is written dense, as without the
        layout, and said once."""
        asked = layouts(M) if callable(layouts) else (layouts or {})
        if not asked:
            return {}
        by_name = {p.name: (k, p) for k, p in enumerate(self.params)}
        ok = {}
        for name, lay in asked.items():
            k, p = by_name.get(name, (None, None))
            why = None
            if p is None:
                why = "no such parameter"
            elif not isinstance(lay, GateTiles) or not lay.fits(p.master.shape):
                why = f"layout {lay!r} does not fit the parameter's shape {tuple(p.master.shape)}"
            elif not self.use_kernels:
                why = "the Triton kernels do not run here"
            elif self.cfg.distribution != "rademacher" or self.cfg.probe_dropout_rate > 0 or p.mask is not None:
                why = "only rademacher probes without dropout or mask are written in layouts"
            elif k not in self._singles:
                continue        # a small tensor shares one probe launch with others: dense, and not worth a note
            if why is None:
                ok[name] = lay
            else:
                _warn_once_layout(f"[zo] note: {name!r} is written as a plain [M, *shape] stack, not in the "
                                  f"declared layout ({why}); the model re-lays it out itself (same values, slower)")
        return ok

    def _layout_buffer(self, p: _Param, layout, M: int) -> torch.Tensor:
        """A buffer of the layout's shape for M models, kept between passes (like `_stack_buffer`)."""
        key = ("layout", p.name)
        shape = layout.shape(M)
        buf = self._stack_bufs.get(key)
        if buf is None or buf.shape != shape:
            self._stack_bufs.pop(key, None)
            buf = torch.empty(shape, dtype=p.live.dtype, device=p.live.device)
            self._stack_bufs[key] = buf
        return buf

    def stack_buffers(self) -> list[torch.Tensor]:
        """The buffers `evaluate_stacked` writes its passes' probes into (a CUDA graph that captured a
        pass addresses them: it must be captured again once they are reallocated)."""
        return [self._stack_bufs[k] for k in sorted(self._stack_bufs, key=str)]

    def _stack_buffer(self, p: _Param, M: int) -> torch.Tensor:
        """[M, *shape] view of a per-parameter buffer that grows to the largest M seen (a smaller
        last group of seeds reuses it, so nothing is reallocated from step to step)."""
        buf = self._stack_bufs.get(p.name)
        if buf is None or buf.shape[0] < M:
            self._stack_bufs.pop(p.name, None)
            # multi-tensor plans address the old buffers (and keep them alive): drop them
            self._plans = {k: v for k, v in self._plans.items() if k[0] != "stack"}
            buf = torch.empty((M, *p.live.shape), dtype=p.live.dtype, device=p.live.device)
            self._stack_bufs[p.name] = buf
        return buf[:M]

    def baseline(self, loss_fn) -> torch.Tensor:
        """L(theta) at the unperturbed weights (FD-RGE's reference point)."""
        self.restore()
        return _as_loss(loss_fn())

    # ------------------------------------------------------------------ coefficients
    def coefficient_scale(self, lr: float) -> float:
        """The factor of the loss differences in `coefficients`: 1 / (2 eps n) for CD-RGE, 1 / (eps n)
        for FD-RGE (float64 on the host; multiplying by it is what torch does on CUDA for a division
        by a Python scalar, and it lets a device copy of the factor give the same bits)."""
        eps = self.cfg.epsilon(lr)
        n = self.cfg.num_perturbations
        return 1.0 / ((2.0 if self.cfg.central_difference else 1.0) * eps * n)

    def coefficients(self, losses: torch.Tensor, *, lr: float | None = None, baseline: torch.Tensor | None = None,
                     scale: torch.Tensor | None = None) -> torch.Tensor:
        """Per-seed coefficients c_i with g_hat = sum_i c_i * z_i. losses: [num_seeds, 2].
        scale: `coefficient_scale(lr)` as a float64 device tensor (StepArgs.coef_scale) instead of lr."""
        n_seeds = self.cfg.num_seeds
        if losses.shape != (n_seeds, 2):
            raise ValueError(f"expected losses of shape {(n_seeds, 2)}, got {tuple(losses.shape)}")
        if (lr is None) == (scale is None):
            raise ValueError("coefficients needs exactly one of lr and scale")
        f = self.coefficient_scale(lr) if scale is None else scale
        lp, lm = losses[:, 0].double(), losses[:, 1].double()
        if self.cfg.central_difference:
            c = (lp - lm) * f
        elif self.cfg.antithetic:
            if baseline is None:
                raise ValueError("FD-RGE needs the baseline loss L(theta)")
            # (L+ - L0)/eps * z + (L- - L0)/eps * (-z), averaged over n probes
            c = ((lp - baseline.double()) - (lm - baseline.double())) * f
        else:
            if baseline is None:
                raise ValueError("FD-RGE needs the baseline loss L(theta)")
            c = (lp - baseline.double()) * f
        if self.cfg.probe_dropout_rate > 0 and not self.cfg.probe_normalization:
            # E[(m*z)(m*z)^T] = (1 - rate) I; probe normalisation already rescales a dropped-out
            # probe to norm sqrt(d), so only the unnormalised case needs this correction.
            c = c / (1.0 - self.cfg.probe_dropout_rate)
        return c.float()

    # ------------------------------------------------------------------ tell
    @torch.no_grad()
    def update(self, seeds, coefs, *, lr: float) -> dict:
        """theta <- theta - lr * g_hat with g_hat = sum_i c_i z_i (then clip / normalise / Adam / wd).

        The sum runs over all seeds in their given order on every caller, so replicas that call
        this with the same (seeds, coefs) end bitwise equal. Returns scalar diagnostics."""
        seeds = list(seeds)
        coefs = [float(c) for c in (coefs.tolist() if torch.is_tensor(coefs) else coefs)]  # one sync per step
        if len(seeds) != len(coefs):
            raise ValueError(f"{len(seeds)} seeds but {len(coefs)} coefficients")
        scaled = [c * self.probe_scale(s) for s, c in zip(seeds, coefs)]
        cfg = self.cfg
        info = {}
        if self.use_kernels:
            keys, c = self._kernel_args(seeds, scaled)
        if not cfg.needs_full_gradient:
            if self.use_kernels:
                self._kernel_update(keys, c, lr)
            else:
                for k, p in enumerate(self.params):
                    self._apply(p, self._accumulate(k, seeds, scaled), lr)
            self.clear_step_cache()
            return info
        if self.use_kernels:
            grads = self._kernel_grads(keys, c)
        else:
            grads = [self._accumulate(k, seeds, scaled) for k in range(len(self.params))]
        gnorm = math.sqrt(sum(float(g.double().square().sum()) for g in grads))
        info["grad_norm"] = gnorm
        factor = 1.0
        if cfg.gradient_normalization == "l2":
            factor = 1.0 / gnorm if gnorm > 0 else 0.0
        elif cfg.gradient_normalization == "l1":
            l1 = sum(float(g.double().abs().sum()) for g in grads)
            factor = 1.0 / l1 if l1 > 0 else 0.0
        if cfg.grad_clip > 0 and gnorm * factor > cfg.grad_clip:
            factor *= cfg.grad_clip / (gnorm * factor)
        if cfg.adam:
            self.state.adam_step += 1
        for p, g in zip(self.params, grads):
            if factor != 1.0:
                g.mul_(factor)
            if cfg.adam:
                g = self._adam_direction(p, g)
            self._apply(p, g, lr)
        self.clear_step_cache()
        return info

    @torch.no_grad()
    def enqueue_update(self, seeds, coefs: torch.Tensor, ok: torch.Tensor, *, lr: float | None = None,
                       args: StepArgs | None = None) -> None:
        """`update(seeds, coefs, lr=lr)` queued without reading anything on the host.

        coefs: the device tensor from `coefficients`; ok: a device bool scalar. Where ok is False
        every coefficient is replaced by 0, which leaves the weights bitwise unchanged (live is
        rewritten with cast(master), the value it already holds). The caller checks ok after its
        one sync. Only where `update_before_sync` is True: the scaled coefficients are then formed in
        float64 and rounded once to fp32, as `update` forms them on the host, so both end bit-equal.
        args: `fill_step_args` output for these seeds, read instead of lr and the seeds' keys and scales
        (nothing from the host enters the device work; it can be captured in a CUDA graph)."""
        if (lr is None) == (args is None):
            raise ValueError("enqueue_update needs exactly one of lr and args")
        if not self.update_before_sync:
            raise RuntimeError("enqueue_update needs the kernel path with no full gradient and no weight "
                               "decay (engine.update_before_sync is False); call update after the sync")
        seeds = list(seeds)
        dev = self.params[0].master.device
        c = coefs.to(device=dev).reshape(-1)
        if c.numel() != len(seeds):
            raise ValueError(f"{len(seeds)} seeds but {c.numel()} coefficients")
        c = c.double()
        if args is not None:
            c = c * args.update_scales           # exact where a scale is 1, as the host path skips it
        else:
            scales = [self.probe_scale(s) for s in seeds]
            if any(x != 1.0 for x in scales):
                c = c * zk._upload(scales, torch.float64, dev)
        c = torch.where(ok.to(device=dev), c, torch.zeros_like(c)).float()
        if args is not None:
            self._kernel_update(args.update_keys, c, args.lr)
        else:
            self._kernel_update(self._keys(seeds), c, lr)
        self.clear_step_cache()

    def _kernel_update(self, keys, c, lr) -> None:
        """theta <- theta*keep - lr * sum_i c_i z_i and live <- cast(theta), one launch per group of
        small tensors and one per large tensor. lr: a float, or a one-element fp32 device tensor."""
        cfg = self.cfg
        for gi, grp in enumerate(self._groups):
            ps = [self.params[k] for k in grp]
            separate = ps[0].live.data_ptr() != ps[0].master.data_ptr()
            plan = self._plan(("update", gi), lambda: zk.multi_update_plan(
                [p.master for p in ps], lives=[p.live for p in ps] if separate else None,
                masks=None if ps[0].mask is None else [p.mask for p in ps], key_rows=grp))
            zk.triton_update_multi(plan, keys, c, lr, cfg.weight_decay, cfg.distribution,
                                   dropout_rate=cfg.probe_dropout_rate)
        for k in self._singles:
            p = self.params[k]
            zk.triton_update(p.master, keys[k], p.pid, c, lr, cfg.weight_decay, cfg.distribution,
                             live=None if p.live.data_ptr() == p.master.data_ptr() else p.live,
                             dropout_rate=cfg.probe_dropout_rate, mask=p.mask)

    def _kernel_grads(self, keys, c) -> list[torch.Tensor]:
        """g = sum_i c_i z_i per parameter (fp32). Small tensors write into buffers the engine keeps
        (so one cached plan serves every step); large ones get a fresh tensor."""
        cfg = self.cfg
        grads: list = [None] * len(self.params)
        for gi, grp in enumerate(self._groups):
            ps = [self.params[k] for k in grp]
            for p in ps:
                if p.name not in self._grad_bufs:
                    self._grad_bufs[p.name] = torch.empty(p.master.shape, dtype=torch.float32, device=p.master.device)
            bufs = [self._grad_bufs[p.name] for p in ps]
            plan = self._plan(("grad", gi), lambda: zk.multi_update_plan(
                [p.master for p in ps], grads=bufs, masks=None if ps[0].mask is None else [p.mask for p in ps],
                key_rows=grp))
            zk.triton_update_multi(plan, keys, c, distribution=cfg.distribution,
                                   dropout_rate=cfg.probe_dropout_rate, update=False)
            for k, b in zip(grp, bufs):
                grads[k] = b
        for k in self._singles:
            p = self.params[k]
            grads[k] = zk.triton_grad(p.master, keys[k], p.pid, c, cfg.distribution,
                                      dropout_rate=cfg.probe_dropout_rate, mask=p.mask)
        return grads

    def _accumulate(self, k: int, seeds, coefs) -> torch.Tensor:
        """sum_i c_i z_i restricted to parameter k, in fp32, in the given seed order."""
        p = self.params[k]
        g = torch.zeros(p.master.shape, dtype=torch.float32, device=p.master.device)
        for s, c in zip(seeds, coefs):
            if c != 0.0:
                cached = self._z_cache.get(s)
                g.add_(cached[k] if cached is not None else self._direction(p, s), alpha=c)
        return g

    def _adam_direction(self, p: _Param, g: torch.Tensor) -> torch.Tensor:
        cfg, st = self.cfg, self.state
        m = st.adam_m.setdefault(p.name, torch.zeros_like(g))
        v = st.adam_v.setdefault(p.name, torch.zeros_like(g))
        m.mul_(cfg.beta1).add_(g, alpha=1 - cfg.beta1)
        v.mul_(cfg.beta2).addcmul_(g, g, value=1 - cfg.beta2)
        mhat = m / (1 - cfg.beta1 ** st.adam_step)
        vhat = v / (1 - cfg.beta2 ** st.adam_step)
        return mhat.div_(vhat.sqrt_().add_(cfg.adam_eps))

    def _apply(self, p: _Param, g: torch.Tensor, lr: float) -> None:
        upd = p.master.to(torch.promote_types(p.master.dtype, torch.float32), copy=True)
        if self.cfg.weight_decay > 0:
            keep = 1.0 - lr * self.cfg.weight_decay
            if p.mask is not None:
                upd = torch.where(p.mask, upd * keep, upd)
            else:
                upd = upd * keep
        upd.add_(g, alpha=-lr)
        p.master.copy_(upd)
        if p.live.data_ptr() != p.master.data_ptr():
            p.live.copy_(p.master)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """A snapshot (copies, never views of the live state)."""
        return {"adam_step": self.state.adam_step,
                "adam_m": {k: v.to("cpu", copy=True) for k, v in self.state.adam_m.items()},
                "adam_v": {k: v.to("cpu", copy=True) for k, v in self.state.adam_v.items()},
                "master": {p.name: p.master.to("cpu", copy=True) for p in self.params}}

    @torch.no_grad()
    def load_state_dict(self, sd: dict) -> None:
        self.state.adam_step = int(sd["adam_step"])
        dev = {p.name: p.master.device for p in self.params}
        self.state.adam_m = {k: v.to(dev[k], copy=True) for k, v in sd["adam_m"].items()}
        self.state.adam_v = {k: v.to(dev[k], copy=True) for k, v in sd["adam_v"].items()}
        for p in self.params:
            if p.name not in sd["master"]:
                raise ValueError(f"engine state has no master tensor for parameter {p.name!r}")
            p.master.copy_(sd["master"][p.name])
        self.restore()

    def master_checksum(self, chunk_elems: int = 1 << 26) -> float:
        """Order-fixed float64 checksum of theta (for replica checks): sum(theta) + 1e-3 * sum|theta|.

        Summed in chunks of `chunk_elems` elements, so the float64 temporaries stay at 0.5 GiB
        whatever the size of the largest tensor (a 7B model's output weight would need ~100 GB)."""
        total = 0.0
        for p in self.params:
            flat = p.master.reshape(-1)
            for i in range(0, flat.numel(), chunk_elems):
                c = flat[i:i + chunk_elems].double()
                total += float(c.sum()) + 1e-3 * float(c.abs().sum())
        return total
