"""Distributed CD-RGE / FD-RGE trainer: many ranks share the probes, only scalars cross the wire.

    cfg = DistConfig(task="copy", meta_perturbations=12, ...)
    comm = zo.dist.init_comm(device_arg=cfg.device)          # or zo.comm.LocalComm() for one process
    summary = run_distributed(cfg, comm)

One step t, on every rank (DESIGN.md invariants 3-5):
  - the probe seeds come from (run seed, t) through `ZOEngine.seeds`; n_total = meta_perturbations x
    world size, and rank r evaluates seeds [r*m, (r+1)*m) with m = meta_perturbations;
  - the batch is rebuilt on every rank from the data seed: (run seed, t) for the shared batch, or
    (run seed, t, probe index) per probe under --scatter_batch / --use_different_batch_per_meta_perturbation;
  - `train.zo_step.zo_step` evaluates the rank's probes, all-gathers the [n_total, 2] loss table and
    applies the same update everywhere (a non-finite loss stops every rank before the update);
  - every --sync_check_iters steps, at each checkpoint and at the end, the ranks compare a float64
    checksum of theta and stop together on a mismatch.
Theta is broadcast once (start-up / after a checkpoint load); there is no theta-sized collective.

Sequence-length curriculum (the paper's flags): `current_max_seq_len` starts at --min_seq_len. After
--patience_seq_len consecutive steps with train loss below --step_seq_len_loss_thresh it grows by
--step_seq_len (capped at --max_seq_len) and the count restarts. Synthetic tasks draw lengths in
[2, current_max_seq_len]; lm_char windows are exactly current_max_seq_len long. The curriculum
state is in the checkpoint, so a resume continues it.

Language modelling (`--task lm`, the default: the embedded corpus, no network; `--task penn_tree_bank`;
`--dataset PATH_OR_NAME`; `--tokenizer char|hf`, `--tokenizer_path DIR`): the task comes from
`tasks.build_lm_task` before the model exists, so an offline/uncached hub asset, a bad path or a
tokenizer mismatch stops the run with the builder's message before anything is allocated. Training
windows are `task.train_batch(max_len=current_max_seq_len)` (the curriculum hook): `<bos>` + L tokens,
time dimension L + 1, the first target ignored; --min_seq_len/--max_seq_len count corpus tokens.
Every rank draws them from the same data-seed generator, so nothing is broadcast. Validation adds
val_perplexity, val_bits_per_token and val_bits_per_char, and logs greedy continuations of validation
prompts.

Modes: test overfits one fixed batch (the batch of key 0 at the current length) and stops at train
loss < 0.1; train draws a fresh batch every step, validates and checkpoints every --val_iters.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import os
import sys
import time
from dataclasses import dataclass

import torch

from models import (ModelConfig, apply_scale, auto_models_per_pass, auto_time_chunk, build_model, check_fits, param_count,
                    supports_stacked)
from tasks import LM_TASKS, build_lm_task, build_task, sample_predictions
from train.checkpoint import CheckpointError, check_architecture, load_checkpoint, save_checkpoint
from train.evaluate import batch_loss, evaluate_batch, stack_layouts_fn, stacked_batch_loss
from train.graphs import build_graphs, graphs_setting
from train.metrics import JsonlWriter, Stopwatch, WandbLogger
from train.series import SYNTHETIC_TASKS, peak_memory_bytes
from train.zo_step import NonFiniteLossError, zo_step
from zo import noise as zn
from zo.estimator import ZOConfig, ZOEngine
from zo.schedule import SCHEDULES, learning_rate

LM_TASK_NAMES = tuple(LM_TASKS)           # ("lm", "penn_tree_bank"): tasks.build_lm_task
TASK_NAMES = LM_TASK_NAMES + SYNTHETIC_TASKS + ("lm_char",)
TOKENIZERS = ("char", "numeric", "hf")
TEST_LOSS_TARGET = 0.1          # --mode test stops once the train loss is below this
CHECKPOINT_FORMAT = "zo-rnn-distributed/1"
SMALL_MODEL_PARAMS = 2_000_000  # CPU runs of smaller models use one intra-op thread unless --threads says otherwise
_DATA_SALT = 0xDA7A5EED         # data seeds live in their own stream, apart from the probe seeds
_VAL_SALT = 0x7A115EED


@dataclass
class DistConfig:
    """Every setting of a distributed run; saved into each checkpoint as `config`."""
    mode: str = "test"
    task: str = "lm"                    # next-token prediction on the embedded corpus: no network
    dataset: str | None = None          # lm/penn_tree_bank: local file/dir or hub name; lm_char: a text file
    tokenizer: str | None = None        # None: the task's (char for text, numeric for synthetic)
    tokenizer_path: str | None = None   # lm/penn_tree_bank: a local tokenizer directory (save_pretrained)
    max_num: int = 15
    model_type: str = "LSTM"
    model_scale: int = 1
    input_size: int = 32
    hidden_size: int = 32
    num_heads: int = 4
    head_size: int = 0
    memory_size: int = 0
    dtype: str | None = None            # None: float32 on CPU, bfloat16 on CUDA (fp32 master either way)
    lstm_backend: str = "auto"          # LSTM recurrence backend (models/lstm_backends.py)
    cuda_graphs: str = "auto"           # replay the stacked probe loss as a CUDA graph (train/graphs.py)
    device: str = "cpu"
    seed: int = 0
    batch_size: int = 4
    micro_batch_size: int = 0           # 0: the whole batch in one pass
    val_batch_size: int = 0             # 0: max(batch_size, 64), at most 256
    time_chunk: int = 0                 # forward chunk in time steps (0: 64)
    models_per_pass: int = 0            # perturbed models per forward; 0: 1 on CPU (bitwise across world
                                        # sizes), sized from free memory on CUDA (equal to ~1e-6, not bitwise)
    min_seq_len: int = 4
    max_seq_len: int = 0                # 0: equal to min_seq_len (no curriculum)
    step_seq_len: int = 1
    step_seq_len_loss_thresh: float = 0.1
    patience_seq_len: int = 10
    max_iters: int = 1000
    learning_rate: float = 0.3
    learn_rate_schedule: str = "constant"
    warmup_iters: int = 0
    cosine_wavelength: int = 1000
    epsilon_tying_ratio: float = 1.0
    meta_perturbations: int = 16
    per_probe_batch: bool = False       # --scatter_batch / --use_different_batch_per_meta_perturbation
    central_difference: bool = True
    antithetic: bool = False
    distribution: str = "rademacher"
    probe_normalization: bool = False
    gradient_normalization: str | None = None
    probe_dropout_rate: float = 0.0
    weight_decay: float = 0.0
    adam: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    val_iters: int = 100
    sync_check_iters: int = 100
    checkpoint_dir: str = "rnn_checkpoints"
    load_from_checkpoint: str | None = None
    metrics_out: str | None = None
    wandb_proj: str | None = None
    wandb_run: str | None = None
    verbose: bool = True
    threads: int = 0                    # CPU intra-op threads (0: 1 for models under 2M params, else torch's)
    debug_nan_at_step: int = -1         # hidden test hook: this rank's losses are NaN at that step
    debug_nan_rank: int = 0

    # ------------------------------------------------------------------ derived
    @property
    def final_seq_len(self) -> int:
        return max(self.min_seq_len, self.max_seq_len)

    @property
    def resolved_dtype(self) -> str:
        return self.dtype or ("bfloat16" if str(self.device).startswith("cuda") else "float32")

    def model_config(self, vocab_size: int) -> ModelConfig:
        base = ModelConfig(model_type=self.model_type, vocab_size=vocab_size, input_size=self.input_size,
                           hidden_size=self.hidden_size, num_heads=self.num_heads, head_size=self.head_size,
                           memory_size=self.memory_size, dtype=self.resolved_dtype, backend=self.lstm_backend)
        return apply_scale(base, self.model_scale)

    def zo_config(self, world_size: int) -> ZOConfig:
        return ZOConfig(num_perturbations=self.meta_perturbations * world_size,
                        epsilon_tying_ratio=self.epsilon_tying_ratio, central_difference=self.central_difference,
                        antithetic=self.antithetic, distribution=self.distribution,
                        probe_normalization=self.probe_normalization,
                        gradient_normalization=self.gradient_normalization, weight_decay=self.weight_decay,
                        adam=self.adam, beta1=self.beta1, beta2=self.beta2,
                        probe_dropout_rate=self.probe_dropout_rate,
                        master_dtype=torch.float32 if self.resolved_dtype != "float32" else None)

    def validate(self) -> None:
        self.cuda_graphs = graphs_setting(self.cuda_graphs)
        if self.cuda_graphs in ("true", "loss") and not str(self.device).startswith("cuda"):
            raise ValueError(f"--cuda_graphs {self.cuda_graphs} needs --device cuda (CUDA graphs do not exist on CPU)")
        if self.mode not in ("test", "train"):
            raise ValueError(f"--mode must be test or train, got {self.mode!r}")
        if self.task not in TASK_NAMES:
            raise ValueError(f"unknown --task {self.task!r}; choose one of {', '.join(TASK_NAMES)}")
        if self.tokenizer not in (None,) + TOKENIZERS:
            raise ValueError(f"unknown --tokenizer {self.tokenizer!r}; choose one of {', '.join(TOKENIZERS)}")
        if self.tokenizer_path is not None and self.task not in LM_TASK_NAMES:
            raise ValueError(f"--tokenizer_path applies to the text tasks ({', '.join(LM_TASK_NAMES)}), "
                             f"not to --task {self.task}")
        if self.task in LM_TASK_NAMES:
            if self.tokenizer == "numeric":
                raise ValueError(f"task {self.task!r} is text: use --tokenizer char (default), --tokenizer hf, "
                                 "or --tokenizer_path DIR")
            if self.tokenizer == "char" and self.tokenizer_path is not None:
                raise ValueError("--tokenizer char and --tokenizer_path both given; drop one (the char tokenizer "
                                 "has no files)")
        elif self.task in SYNTHETIC_TASKS:
            if self.tokenizer not in (None, "numeric"):
                raise ValueError(f"task {self.task!r} uses the numeric tokenizer; drop --tokenizer {self.tokenizer} "
                                 f"(or use --task lm for text)")
            if self.dataset:
                raise ValueError(f"--dataset applies to the text tasks (lm, penn_tree_bank, lm_char), not to the "
                                 f"synthetic task {self.task!r}")
        else:
            if self.tokenizer not in (None, "char"):
                raise ValueError(f"task lm_char uses the char tokenizer; drop --tokenizer {self.tokenizer}")
            if not self.dataset:
                raise ValueError("--task lm_char needs --dataset FILE (a local UTF-8 text file)")
            if not os.path.isfile(self.dataset):
                raise ValueError(f"--dataset {self.dataset!r} does not exist or is not a file")
        for f in ("batch_size", "max_iters", "meta_perturbations", "val_iters", "sync_check_iters", "min_seq_len",
                  "patience_seq_len", "model_scale", "max_num"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"--{f} must be a positive integer, got {v!r}")
        for f in ("threads", "micro_batch_size", "val_batch_size", "time_chunk", "models_per_pass", "max_seq_len",
                  "step_seq_len", "warmup_iters", "cosine_wavelength"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"--{f} must be an integer >= 0, got {v!r}")
        if self.min_seq_len < 2:
            raise ValueError(f"--min_seq_len must be >= 2, got {self.min_seq_len}")
        if self.max_seq_len and self.max_seq_len < self.min_seq_len:
            raise ValueError(f"--max_seq_len {self.max_seq_len} is below --min_seq_len {self.min_seq_len}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"--learning_rate must be a finite number > 0, got {self.learning_rate}")
        if self.learn_rate_schedule not in SCHEDULES:
            raise ValueError(f"--learn_rate_schedule must be one of {SCHEDULES} (or true/false), "
                             f"got {self.learn_rate_schedule!r}")
        if self.per_probe_batch and not self.central_difference:
            raise ValueError("a batch per probe (--scatter_batch / --use_different_batch_per_meta_perturbation) "
                             "needs central differences: FD-RGE compares every probe with one baseline L(theta) "
                             "on a shared batch; drop --central_difference false")
        if self.resolved_dtype not in ("float32", "bfloat16", "float16", "float64"):
            raise ValueError(f"unknown --dtype {self.dtype!r}")


# ---------------------------------------------------------------------------------------------- data
def data_seed(run_seed: int, step: int, probe: int | None = None) -> int:
    """Generator seed of the training batch of `step` (and of one probe): pure, the same on every rank."""
    root = zn.splitmix64((run_seed ^ _DATA_SALT) & zn.MASK64) >> 1
    return zn.probe_seed(root, step, 0 if probe is None else probe + 1)


def val_seed(run_seed: int) -> int:
    return zn.splitmix64((run_seed ^ _VAL_SALT) & zn.MASK64) >> 1


def make_batch(task, *, seed: int, batch_size: int, max_len: int, device):
    """The batch of one generator seed: lengths up to max_len (lm_char: exactly max_len; lm and
    penn_tree_bank: windows of max_len corpus tokens through the task's curriculum hook,
    train_batch(max_len=...)). A pure function of the seed: every rank builds the same batch."""
    g = torch.Generator(device=device).manual_seed(seed)
    if task.name in LM_TASK_NAMES:
        return task.train_batch(batch_size=batch_size, generator=g, max_len=max_len)
    lo, hi = task.train_length_range
    return task.batch(batch_size=batch_size, min_len=min(lo, max_len), max_len=min(max_len, hi), generator=g)


def is_lm_task(task) -> bool:
    """Whether the task reports LM metrics (perplexity, bits) and greedy samples."""
    return hasattr(task, "metrics") and hasattr(task, "greedy_samples")


def build_dist_task(cfg: DistConfig, *, log=None):
    """The task of a run. lm / penn_tree_bank go through tasks.build_lm_task (tokenizer, source,
    token cache), which raises every user error (offline and not cached, bad path) as a ValueError."""
    if cfg.task in SYNTHETIC_TASKS:
        return build_task(cfg.task, seq_length=cfg.final_seq_len, max_num=cfg.max_num)
    if cfg.task in LM_TASK_NAMES:
        return build_lm_task(cfg.task, dataset=cfg.dataset, tokenizer=cfg.tokenizer,
                             tokenizer_path=cfg.tokenizer_path, seq_length=cfg.final_seq_len, log=log)
    return build_task("lm_char", path=cfg.dataset, seq_length=cfg.final_seq_len)


@dataclass
class SeqLenCurriculum:
    """The paper's sequence-length curriculum; see the module docstring."""
    current: int
    max_len: int
    step_len: int
    thresh: float
    patience: int
    below: int = 0

    @classmethod
    def from_config(cls, cfg: DistConfig) -> "SeqLenCurriculum":
        return cls(current=cfg.min_seq_len, max_len=cfg.final_seq_len, step_len=cfg.step_seq_len,
                   thresh=cfg.step_seq_len_loss_thresh, patience=cfg.patience_seq_len)

    def update(self, train_loss: float) -> bool:
        """Feed one step's train loss; True when the max length grew."""
        if self.step_len <= 0 or self.current >= self.max_len:
            return False
        self.below = self.below + 1 if train_loss < self.thresh else 0
        if self.below < self.patience:
            return False
        self.current = min(self.current + self.step_len, self.max_len)
        self.below = 0
        return True

    def state_dict(self) -> dict:
        return {"current_max_seq_len": self.current, "below_thresh_steps": self.below}

    def load_state_dict(self, sd: dict) -> None:
        self.current = min(max(int(sd["current_max_seq_len"]), 2), self.max_len)
        self.below = int(sd["below_thresh_steps"])


# ---------------------------------------------------------------------------------------------- trainer
class _ProgressBar:
    """A one-line bar, drawn only when the stream is a terminal."""

    def __init__(self, total: int, stream, *, enabled: bool = True):
        self.total, self.stream = total, stream
        self.on = enabled and bool(getattr(stream, "isatty", lambda: False)())

    def draw(self, step: int, loss: float) -> None:
        if not self.on:
            return
        frac = min(1.0, step / max(self.total, 1))
        n = int(30 * frac)
        self.stream.write(f"\r[{'#' * n}{'.' * (30 - n)}] {step}/{self.total} loss {loss:.4f}")
        self.stream.flush()

    def clear(self) -> None:
        if self.on:
            self.stream.write("\r\033[K")
            self.stream.flush()


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class DistributedTrainer:
    """Builds task, model and engine, resumes if asked, then `run()` trains. All ranks run it."""

    def __init__(self, cfg: DistConfig, comm, *, out=None):
        cfg.validate()
        self.cfg, self.comm, self.out = cfg, comm, sys.stdout if out is None else out
        self.device = torch.device(cfg.device)
        self.master = comm.rank == 0
        # the task first: an offline/uncached tokenizer or dataset stops here, before any model exists
        self.task = build_dist_task(cfg, log=self._log_stderr)
        self.mcfg = cfg.model_config(self.task.vocab_size)
        if self.device.type == "cpu":
            if cfg.threads:
                torch.set_num_threads(cfg.threads)
            elif param_count(self.mcfg) < SMALL_MODEL_PARAMS:
                torch.set_num_threads(1)  # tiny models: extra intra-op threads only add spin contention
        self.time_chunk = cfg.time_chunk or 64
        self.n_total = cfg.meta_perturbations * comm.world_size
        zcfg = cfg.zo_config(comm.world_size)           # raises on inconsistent estimator flags
        ckpt = None
        if cfg.load_from_checkpoint:
            ckpt = load_checkpoint(cfg.load_from_checkpoint, map_location="cpu")
            check_architecture(ckpt, self.mcfg.to_dict(), path=cfg.load_from_checkpoint)
        mb = cfg.micro_batch_size or cfg.batch_size
        check_fits(self.mcfg, device=self.device, batch_size=min(mb, cfg.batch_size), time_chunk=self.time_chunk,
                   zo=True, master_bytes=4)
        self.run_seed = cfg.seed
        if ckpt is not None:
            self.run_seed = int(ckpt.get("run_seed", ckpt["config"].get("seed", cfg.seed)))
            if self.run_seed != cfg.seed:
                self._warn(f"--seed {cfg.seed} ignored: resuming the run seed {self.run_seed} of the checkpoint")
        self.model = build_model(self.mcfg, generator=torch.Generator().manual_seed(self.run_seed), device=self.device)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.n_params = param_count(self.mcfg)
        self.curriculum = SeqLenCurriculum.from_config(cfg)
        self.step = 0
        if ckpt is not None:
            self._load_model_state(ckpt)
        self.engine = ZOEngine(self.model.named_parameters(), config=zcfg, run_seed=self.run_seed)
        self.models_per_pass = self._pick_models_per_pass(min(mb, cfg.batch_size))
        model, mb_ = self.model, cfg.micro_batch_size
        self._graphed, self._step_graph = build_graphs(
            cfg.cuda_graphs, lambda P, b: stacked_batch_loss(model, P, b, time_chunk=self.time_chunk,
                                                             micro_batch_size=mb_),
            device=self.device, n_params=self.n_params, models_per_pass=self.models_per_pass)
        if not cfg.time_chunk and self.device.type == "cuda":
            # the forward's working set per chunk, sized for the models evaluated per pass (flat in T)
            self.time_chunk = auto_time_chunk(self.mcfg, device=self.device, batch_size=min(mb, cfg.batch_size),
                                              models=self.models_per_pass, T=64)
        if ckpt is not None:
            self._load_run_state(ckpt)
        # theta is broadcast once; afterwards the replicas only exchange loss tables.
        comm.broadcast_tensors(self._state_tensors())
        self.engine.restore()
        self.init_bytes = comm.bytes_communicated
        comm.check_replicas(self.engine.master_checksum(), step=self.step)
        self.last_checkpoint = (cfg.load_from_checkpoint, self.step) if ckpt is not None else (None, None)
        self._fixed = {}
        self.val_loss = None

    def _pick_models_per_pass(self, batch_rows: int) -> int:
        """Perturbed models per forward pass on this rank (1: the one-at-a-time path)."""
        cfg = self.cfg
        if cfg.per_probe_batch or not supports_stacked(self.model):
            if cfg.models_per_pass > 1:
                why = "every probe has its own batch" if cfg.per_probe_batch else "the model has no stacked forward"
                self._warn(f"--models_per_pass {cfg.models_per_pass} ignored: {why}; probes run one at a time")
            return 1
        if cfg.models_per_pass:
            return cfg.models_per_pass
        if self.device.type != "cuda":
            return 1
        per_seed = 2 if (cfg.central_difference or cfg.antithetic) else 1
        return auto_models_per_pass(self.mcfg, device=self.device, batch_size=batch_rows, time_chunk=self.time_chunk,
                                    wanted=per_seed * self.engine.cfg.num_seeds // self.comm.world_size)

    # ------------------------------------------------------------------ checkpoint state
    def _load_model_state(self, ckpt: dict) -> None:
        try:
            self.model.load_state_dict(ckpt["model_state_dict"])
        except (RuntimeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{self.cfg.load_from_checkpoint}: model_state_dict does not fit the model "
                                  f"({str(e).splitlines()[0][:200]})") from None

    def _load_run_state(self, ckpt: dict) -> None:
        path = self.cfg.load_from_checkpoint
        try:
            opt = ckpt.get("optimizer_state")
            if isinstance(opt, dict) and "master" in opt:
                if opt.get("adam_m") and not self.cfg.adam:
                    self._warn("the checkpoint holds Adam moments but --adam is false; they are dropped")
                if not self.cfg.adam:
                    opt = {**opt, "adam_step": 0, "adam_m": {}, "adam_v": {}}
                self.engine.load_state_dict(opt)
            self.step = int(ckpt["step"])
            if "curriculum" in ckpt:
                self.curriculum.load_state_dict(ckpt["curriculum"])
        except (KeyError, TypeError, RuntimeError) as e:
            raise CheckpointError(f"{path}: unusable run state ({type(e).__name__}: {str(e)[:200]})") from None

    def _state_tensors(self) -> list[torch.Tensor]:
        ts = [p.master for p in self.engine.params]
        st = self.engine.state
        for d in (st.adam_m, st.adam_v):
            ts += [d[k] for k in sorted(d)]
        return ts

    def checkpoint_payload(self) -> dict:
        cfg = self.cfg
        return {"format": CHECKPOINT_FORMAT,
                "model_state_dict": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "model_args": self.mcfg.to_dict(),
                "step": self.step,
                "config": dataclasses.asdict(cfg),
                "run_seed": self.run_seed,
                "world_size": self.comm.world_size,
                "n_total": self.n_total,
                "schedule": {"name": cfg.learn_rate_schedule, "base_lr": cfg.learning_rate,
                             "warmup_iters": cfg.warmup_iters, "cosine_wavelength": cfg.cosine_wavelength,
                             "next_lr": self.lr_at(self.step)},
                "curriculum": self.curriculum.state_dict(),
                "optimizer_state": self.engine.state_dict()}

    def save(self) -> str | None:
        """Rank 0 writes DIR/latest.pt atomically; returns the path."""
        path = os.path.join(self.cfg.checkpoint_dir, "latest.pt")
        if self.master:
            save_checkpoint(path, self.checkpoint_payload())
        self.last_checkpoint = (path, self.step)
        return path

    # ------------------------------------------------------------------ pieces of a step
    def lr_at(self, step: int) -> float:
        c = self.cfg
        return learning_rate(step, base_lr=c.learning_rate, schedule=c.learn_rate_schedule,
                             warmup_iters=c.warmup_iters, cosine_wavelength=c.cosine_wavelength)

    def batch_for(self, step: int, probe: int | None = None):
        """Training batch of a step (of one probe with per-probe batches); test mode: key 0 always."""
        key = 0 if self.cfg.mode == "test" else step
        cache_key = (key, probe, self.curriculum.current)
        if self.cfg.mode == "test" and cache_key in self._fixed:
            return self._fixed[cache_key]
        b = make_batch(self.task, seed=data_seed(self.run_seed, key, probe), batch_size=self.cfg.batch_size,
                       max_len=self.curriculum.current, device=self.device)
        if self.cfg.mode == "test":
            self._fixed = {k: v for k, v in self._fixed.items() if k[2] == self.curriculum.current}
            self._fixed[cache_key] = b
        return b

    def loss_fn(self, batch):
        model, tc, mb = self.model, self.time_chunk, self.cfg.micro_batch_size

        def fn():
            with torch.inference_mode():
                return batch_loss(model, batch, time_chunk=tc, micro_batch_size=mb)
        return fn

    def stacked_fn(self, batch):
        model, tc, mb = self.model, self.time_chunk, self.cfg.micro_batch_size

        graphed = self._graphed

        def fn(P):
            with torch.inference_mode():
                if graphed is not None:
                    return graphed(P, batch)
                return stacked_batch_loss(model, P, batch, time_chunk=tc, micro_batch_size=mb)
        return fn

    def probe_closures(self, step: int):
        """zo_step's loss closures: loss_for_probe(i), the baseline (shared batch only) and the
        stacked closure (None unless several perturbed models run per forward), and the batch the
        whole-step graph replays with (None where it must not: per-probe batches, a poisoned step)."""
        cfg = self.cfg
        batch = None if cfg.per_probe_batch else self.batch_for(step)
        shared = None if batch is None else self.loss_fn(batch)
        stacked = self.stacked_fn(batch) if batch is not None and self.models_per_pass > 1 else None
        poisoned = step == cfg.debug_nan_at_step and self.comm.rank == cfg.debug_nan_rank

        def loss_for_probe(i):
            fn = shared if shared is not None else self.loss_fn(self.batch_for(step, i))
            return (lambda: fn() * float("nan")) if poisoned else fn
        if stacked is not None and poisoned:
            clean = stacked
            stacked = lambda P: clean(P) * float("nan")  # noqa: E731
        return loss_for_probe, shared, stacked, (None if poisoned or stacked is None else batch)

    def validate_now(self) -> dict:
        n = self.cfg.val_batch_size or min(max(self.cfg.batch_size, 64), 256)
        vb = self.task.val_batch(batch_size=n, generator=torch.Generator(device=self.device)
                                 .manual_seed(val_seed(self.run_seed)))
        vl, vtok, vseq, logits = evaluate_batch(self.model, vb, time_chunk=self.time_chunk)
        out = {"val_loss": float(vl), "val_accuracy": float(vtok), "val_seq_accuracy": float(vseq)}
        if is_lm_task(self.task):
            m = self.task.metrics(float(vl))
            out.update(val_perplexity=m["perplexity"], val_bits_per_token=m["bits_per_token"],
                       val_bits_per_char=m["bits_per_char"])
            g = torch.Generator(device=self.device).manual_seed(val_seed(self.run_seed))
            prompt_len = min(8, max(1, self.cfg.final_seq_len // 2))   # prompts no longer than the training windows
            out["samples"] = self.task.greedy_samples(self.model, generator=g, n=2, prompt_len=prompt_len)
        else:
            out["samples"] = sample_predictions(self.task, vb, logits, n=2)
        return out

    # ------------------------------------------------------------------ output
    def _print(self, *a, **kw):
        if self.master:
            print(*a, file=self.out, flush=True, **kw)

    def _graphs_desc(self) -> str:
        if self._graphed is None:
            return ""
        if self._step_graph is None or self._step_graph.why_not(self.engine, models_per_pass=self.models_per_pass):
            return "; CUDA graphs (probe loss)"
        return "; CUDA graphs (whole step)"

    def _log_stderr(self, msg: str):
        if self.master:
            print(msg, file=sys.stderr, flush=True)

    def _warn(self, msg: str):
        if self.comm.rank == 0:
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    def _data_desc(self) -> str:
        src = getattr(self.task, "source_description", None)
        if src is None:
            return ""
        tok = self.task.tokenizer
        return (f" on {src}, {getattr(tok, 'name', type(tok).__name__)} tokenizer, windows of "
                f"{self.curriculum.current}..{self.cfg.final_seq_len} tokens")

    def describe(self) -> str:
        c = self.cfg
        kind = "CD-RGE" if c.central_difference else ("FD-RGE antithetic" if c.antithetic else "FD-RGE")
        extra = "+Adam" if c.adam else ""
        return f"{kind}{extra}, {c.meta_perturbations} x {self.comm.world_size} = {self.n_total} probes/step"

    # ------------------------------------------------------------------ the loop
    def run(self) -> dict:
        cfg, comm = self.cfg, self.comm
        start = self.step
        self._print(f"[Init] world size {comm.world_size} (backend {comm.backend}, device {self.device}); "
                    f"{self.describe()}; task {cfg.task}{self._data_desc()} (vocab {self.task.vocab_size}); "
                    f"mode {cfg.mode}; "
                    f"run seed {self.run_seed}" + (f"; resuming at step {start}" if start else ""))
        self._print(f"[Init] {self.mcfg.model_type} hidden {self.mcfg.hidden_size}, heads {self.mcfg.num_heads}, "
                    f"dtype {self.mcfg.dtype}: {self.n_params:,} parameters; {self.models_per_pass} perturbed "
                    f"model(s) per forward{self._graphs_desc()}; theta broadcast once "
                    f"({self.init_bytes:,} bytes), then only [n_total, 2] loss tables")
        if start >= cfg.max_iters:
            self._print(f"[Init] the checkpoint is at step {start} >= --max_iters {cfg.max_iters}: nothing to train "
                        f"(raise --max_iters; it counts the steps done before the resume)")
            return {"params": self.n_params, "start_step": start, "step": start, "steps_run": 0, "first_loss": None,
                    "last_loss": None, "best_loss": None, "s_per_step": 0.0, "finished": False,
                    "checksum": self.engine.master_checksum(), "checkpoint": self.last_checkpoint[0],
                    "world_size": comm.world_size, "n_total": self.n_total}
        metrics = JsonlWriter(cfg.metrics_out if self.master else None, append=start > 0)
        wandb = WandbLogger(project=cfg.wandb_proj if self.master else None, run_name=cfg.wandb_run,
                            config=dataclasses.asdict(cfg))
        bar = _ProgressBar(cfg.max_iters, self.out, enabled=self.master)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        clock = Stopwatch()
        losses, step_times = [], []
        finished = False
        last_synced = last_saved = None
        try:
            for step in range(start, cfg.max_iters):
                lr = self.lr_at(step)
                cur_len = self.curriculum.current
                bytes0 = comm.bytes_communicated
                sent0 = getattr(comm, "bytes_sent", 0)
                _sync(self.device)
                t0 = time.perf_counter()
                loss_for_probe, shared, stacked, graph_batch = self.probe_closures(step)
                t_batch = time.perf_counter() - t0
                try:
                    layouts = None if stacked is None else stack_layouts_fn(self.model, cfg.batch_size,
                                                                            cfg.micro_batch_size)
                    res = zo_step(self.engine, step=step, lr=lr, loss_for_probe=loss_for_probe, comm=comm,
                                  baseline_fn=shared, stacked_loss=stacked, models_per_pass=self.models_per_pass,
                                  stack_layouts=layouts, step_graph=self._step_graph if graph_batch is not None
                                  else None, batch=graph_batch)
                except NonFiniteLossError as e:
                    path, at = self.last_checkpoint
                    kept = (f" The last checkpoint ({path}, step {at}) is kept." if path
                            else " No checkpoint was written yet.")
                    e.args = (str(e) + kept,)
                    raise
                self.step = step + 1
                train_loss = res.train_loss
                grew = self.curriculum.update(train_loss)
                ckpt_due = self.step % cfg.val_iters == 0 and self.step < cfg.max_iters
                done = cfg.mode == "test" and train_loss < TEST_LOSS_TARGET
                t1 = time.perf_counter()
                _sync(self.device)               # the update kernel, queued asynchronously, finishes here
                t_tail = time.perf_counter() - t1
                if self.step % cfg.sync_check_iters == 0 or ckpt_due:
                    comm.check_replicas(self.engine.master_checksum(), step=self.step)
                    last_synced = self.step
                t_sync = time.perf_counter() - t1 - t_tail
                dt = time.perf_counter() - t0
                step_times.append(dt)
                losses.append(train_loss)
                phases = {"batch_s": t_batch, **res.timings, "update_device_s": t_tail, "sync_check_s": t_sync}
                rec = {"step": step, "train_loss": train_loss, "lr": lr, "current_max_seq_len": cur_len,
                       "step_time_s": dt, "bytes_communicated": comm.bytes_communicated - bytes0,
                       "bytes_sent": getattr(comm, "bytes_sent", 0) - sent0}
                if cfg.mode == "train" and self.master and (ckpt_due or self.step == cfg.max_iters):
                    tv = time.perf_counter()
                    val = self.validate_now()
                    phases["val_s"] = time.perf_counter() - tv
                    self.val_loss = val["val_loss"]
                    rec.update({k: v for k, v in val.items() if k != "samples"})
                else:
                    val = None
                if ckpt_due:
                    tc = time.perf_counter()
                    self.save()
                    last_saved = self.step
                    phases["checkpoint_s"] = time.perf_counter() - tc
                rec.update(elapsed_s=clock.elapsed(), peak_mem_bytes=peak_memory_bytes(self.device),
                           world_size=comm.world_size, n_total=self.n_total,
                           **{k: v for k, v in phases.items() if k.endswith("_s")})
                if self.master:
                    if (cfg.verbose or ckpt_due or val is not None or done or grew or step == start
                            or self.step == cfg.max_iters):
                        bar.clear()
                        self._log_line(step, rec, phases, val, grew)
                    metrics.write(rec)
                    wandb.log(rec, step)
                    bar.draw(self.step, train_loss)
                if done:
                    finished = True
                    break
            if self.step != last_synced:
                comm.check_replicas(self.engine.master_checksum(), step=self.step)
            if self.step != last_saved:
                self.save()
        finally:
            bar.clear()
            metrics.close()
            wandb.close()
        steady = step_times[1:] or step_times or [0.0]
        s_per_step = sorted(steady)[len(steady) // 2]
        summary = {"params": self.n_params, "start_step": start, "step": self.step, "steps_run": len(losses),
                   "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None,
                   "best_loss": min(losses) if losses else None, "s_per_step": s_per_step, "finished": finished,
                   "checksum": self.engine.master_checksum(), "checkpoint": self.last_checkpoint[0],
                   "world_size": comm.world_size, "n_total": self.n_total}
        if self.master:
            self._finished_lines(summary)
        return summary

    def _log_line(self, step, rec, phases, val, grew):
        vl = f"{self.val_loss}" if self.val_loss is not None else "n/a"
        lm = ""
        if val is not None and "val_bits_per_char" in val:
            lm = (f"val_perplexity = {val['val_perplexity']:.4g}, "
                  f"val_bits_per_token = {val['val_bits_per_token']:.4f}, "
                  f"val_bits_per_char = {val['val_bits_per_char']:.4f}, ")
        self._print(f"[Train] Iteration {step}, train_loss = {rec['train_loss']}, lr = {rec['lr']:g}, "
                    f"val_loss = {vl}, {lm}current_max_seq_len = {rec['current_max_seq_len']}, "
                    f"time per step = {rec['step_time_s']:.4f} s")
        if val is not None:
            self._print(f"    val_accuracy = {val['val_accuracy']:.4f}, val_seq_accuracy = {val['val_seq_accuracy']:.4f}")
            for s in val["samples"]:
                self._print(f"    {s}")
        if self.cfg.verbose:
            ph = ", ".join(f"{k[:-2]} {v * 1e3:.2f} ms" for k, v in phases.items())
            self._print(f"    phases: {ph}; bytes this step: {rec['bytes_communicated']} "
                        f"(sent {rec['bytes_sent']}; the [{self.n_total}, 2] loss table), "
                        f"peak mem {rec['peak_mem_bytes'] / 2**20:.1f} MiB")
        if grew:
            self._print(f"    curriculum: current_max_seq_len -> {self.curriculum.current}")

    def _finished_lines(self, s: dict) -> None:
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        iters = s["step"] - 1 if s["steps_run"] else s["step"]  # updates before the reported loss's theta
        note = ("" if s["finished"] or self.cfg.mode != "test"
                else f" (stopped at --max_iters before reaching {TEST_LOSS_TARGET})")
        self._print("=" * 50)
        self._print(f"[Rank 0] {stamp} - FINISHED TRAINING: in {iters} iterations achieved {s['last_loss']} loss "
                    f"in {s['s_per_step']:.6f} seconds per iter.{note}")
        self._print(f"[Init] Model has {s['params']} parameters across 1 layers.")
        self._print("=" * 50)


def run_distributed(cfg: DistConfig, comm, *, out=None) -> dict:
    """Train on every rank of `comm` (zo.comm.LocalComm for one process, zo.dist.DistComm for many)."""
    return DistributedTrainer(cfg, comm, out=out).run()
