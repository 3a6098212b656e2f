"""Single-device trainer: BPTT (autograd) or CD-RGE / FD-RGE (inference only) on one task.

    cfg = SeriesConfig(task="copy", model_type="LSTM", ...)
    summary = run_series(cfg)

The ZO path goes through train.zo_step.zo_step with a LocalComm, the same step function the
distributed trainer runs with a world of many ranks.
"""
from __future__ import annotations

import dataclasses
import math
import os
import resource
import sys
import time
from dataclasses import dataclass

import torch

from models import ModelConfig, auto_models_per_pass, auto_time_chunk, build_model, check_fits, param_count, supports_stacked
from tasks import build_lm_task, build_task, sample_predictions
from train.checkpoint import save_checkpoint
from train.evaluate import batch_loss, chunked_accumulator, evaluate_batch, stack_layouts_fn, stacked_batch_loss
from train.graphs import build_graphs, graphs_setting
from train.metrics import JsonlWriter, Stopwatch, WandbLogger
from train.zo_step import NonFiniteLossError, zo_step
from zo.comm import LocalComm
from zo.estimator import ZOConfig, ZOEngine

SYNTHETIC_TASKS = ("copy", "repeat_copy", "reverse", "sort", "add")
LM_TASK_NAMES = ("lm", "penn_tree_bank")


@dataclass
class SeriesConfig:
    device: str = "cpu"
    task: str = "copy"
    model_type: str = "LSTM"
    seq_length: int = 10
    micro_batch_size: int = 32
    macro_batch_size: int = 32
    max_iterations: int = 200
    max_num: int = 15
    input_size: int = 32
    hidden_size: int = 64
    num_heads: int = 4
    memory_size: int = 0
    head_size: int = 0
    dtype: str = "float32"
    lstm_backend: str = "auto"
    distribution: str = "rademacher"
    learning_rate: float = 0.01
    epsilon_tying_ratio: float = 1.0
    num_perturbations: int = 16
    fd_rge: bool = False
    antithetic: bool = False
    probe_normalization: bool = False
    gradient_normalization: str | None = None
    weight_decay: float = 0.0
    probe_dropout_rate: float = 0.0
    grad_clip: float = 0.0
    use_bptt: bool = False
    use_adam: bool = False
    overfit_to_one_batch: bool = False
    curriculum: bool = False
    curriculum_steps: int = 100
    log_interval: int = 10
    val_interval: int = 0            # 0: validate at every log line
    val_batch_size: int = 64
    time_chunk: int = 0              # ZO forward chunk (0: auto: up to 64 steps within a memory budget)
    models_per_pass: int = 0         # ZO: perturbed models per forward (0: auto from memory; 1: one at a time)
    cuda_graphs: str = "auto"        # ZO, CUDA: replay the stacked probe loss as a CUDA graph (train/graphs.py)
    save_model: bool = False
    checkpoint_dir: str = "rnn_checkpoints"
    wandb: bool = False
    wandb_proj: str | None = None
    wandb_run_name: str | None = None
    seed: int = 0
    verbose: bool = True
    tokenizer: str | None = None
    text_path: str | None = None
    dataset: str | None = None       # lm / penn_tree_bank: local path or hub name (None: embedded corpus / PTB)
    tokenizer_path: str | None = None
    metrics_out: str | None = None
    stop_loss: float = 0.0           # stop early once the train loss is below this (0: never)
    threads: int = 0                 # CPU intra-op threads (0: 1 for models under 2M params, else torch's default)

    def model_config(self, vocab_size: int) -> ModelConfig:
        return ModelConfig(model_type=self.model_type, vocab_size=vocab_size, input_size=self.input_size,
                           hidden_size=self.hidden_size, num_heads=self.num_heads, head_size=self.head_size,
                           memory_size=self.memory_size, dtype=self.dtype, backend=self.lstm_backend)

    def zo_config(self) -> ZOConfig:
        return ZOConfig(num_perturbations=self.num_perturbations, epsilon_tying_ratio=self.epsilon_tying_ratio,
                        central_difference=not self.fd_rge, antithetic=self.antithetic,
                        distribution=self.distribution, probe_normalization=self.probe_normalization,
                        gradient_normalization=self.gradient_normalization, weight_decay=self.weight_decay,
                        grad_clip=self.grad_clip, adam=self.use_adam, probe_dropout_rate=self.probe_dropout_rate,
                        master_dtype=torch.float32 if self.dtype != "float32" else None)

    def validate(self) -> None:
        for f in ("seq_length", "micro_batch_size", "macro_batch_size", "max_iterations", "log_interval",
                  "num_perturbations", "val_batch_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"--{f} must be a positive integer, got {v!r}")
        if not (self.learning_rate > 0 and math.isfinite(self.learning_rate)):
            raise ValueError(f"--learning_rate_and_epsilon must be > 0, got {self.learning_rate}")
        if self.macro_batch_size % self.micro_batch_size:
            raise ValueError(f"--macro_batch_size {self.macro_batch_size} is not a multiple of "
                             f"--micro_batch_size {self.micro_batch_size}")
        if self.device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError(f"--device {self.device} was requested but CUDA is not available; use --device cpu")
        self.cuda_graphs = graphs_setting(self.cuda_graphs)
        if self.cuda_graphs in ("true", "loss") and not str(self.device).startswith("cuda"):
            raise ValueError(f"--cuda_graphs {self.cuda_graphs} needs --device cuda (CUDA graphs do not exist on CPU)")
        if self.task == "lm_char" and not self.text_path:
            raise ValueError("--task lm_char needs --text_path FILE (a local text file)")
        if self.text_path and not os.path.exists(self.text_path):
            raise ValueError(f"--text_path {self.text_path!r} does not exist")


def build_series_task(cfg: SeriesConfig):
    if cfg.task in SYNTHETIC_TASKS:
        if cfg.tokenizer not in (None, "numeric"):
            raise ValueError(f"task {cfg.task!r} uses the numeric tokenizer; drop --tokenizer {cfg.tokenizer}")
        return build_task(cfg.task, seq_length=cfg.seq_length, max_num=cfg.max_num)
    if cfg.task in LM_TASK_NAMES:
        if cfg.tokenizer == "numeric":
            raise ValueError(f"task {cfg.task!r} is text: use --tokenizer char (default), hf, or --tokenizer_path DIR")
        return build_lm_task(cfg.task, dataset=cfg.dataset, tokenizer=cfg.tokenizer, tokenizer_path=cfg.tokenizer_path,
                             seq_length=cfg.seq_length, log=lambda m: print(m, file=sys.stderr))
    if cfg.task == "lm_char":
        if cfg.tokenizer not in (None, "char"):
            raise ValueError(f"task lm_char uses the char tokenizer; drop --tokenizer {cfg.tokenizer}")
        return build_task("lm_char", path=cfg.text_path, seq_length=cfg.seq_length)
    return build_task(cfg.task, seq_length=cfg.seq_length)  # raises the registry's clear error


def peak_memory_bytes(device: torch.device) -> int:
    """Measured peak: torch's allocator on CUDA, the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_series(cfg: SeriesConfig, *, out=sys.stdout) -> dict:
    """Train and return a summary: first/last/best loss, steps, seconds per step, peak memory."""
    cfg.validate()
    device = torch.device(cfg.device)
    task = build_series_task(cfg)
    mcfg = cfg.model_config(task.vocab_size)
    if device.type == "cpu" and cfg.threads == 0 and param_count(mcfg) < 2_000_000:
        torch.set_num_threads(1)   # small CPU models: intra-op threads only add spin contention
    elif cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    T_max = cfg.seq_length * 2 + 4
    time_chunk = cfg.time_chunk or (0 if cfg.use_bptt else 64)
    check_fits(mcfg, device=device, batch_size=cfg.micro_batch_size, time_chunk=time_chunk or T_max,
               zo=not cfg.use_bptt, master_bytes=4)
    gen_model = torch.Generator().manual_seed(cfg.seed)
    model = build_model(mcfg, generator=gen_model, device=device)
    n_params = param_count(mcfg)
    print(f"Model has {n_params} parameters ({cfg.model_type}, hidden {cfg.hidden_size}, heads {cfg.num_heads}) "
          f"on {device}; optimiser: {describe_optimizer(cfg)}", file=out)
    data_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    val_gen_seed = cfg.seed + 2
    metrics = JsonlWriter(cfg.metrics_out)
    wandb = WandbLogger(project=cfg.wandb_proj if cfg.wandb else None, run_name=cfg.wandb_run_name,
                        config=dataclasses.asdict(cfg))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    engine = opt = None
    if cfg.use_bptt:
        params = list(model.parameters())
        opt = (torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay) if cfg.use_adam
               else torch.optim.SGD(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay))
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        engine = ZOEngine(model.named_parameters(), config=cfg.zo_config(), run_seed=cfg.seed)
        per_seed = 2 if (not cfg.fd_rge or cfg.antithetic) else 1
        wanted = per_seed * engine.cfg.num_seeds
        mpp = cfg.models_per_pass or auto_models_per_pass(mcfg, device=device, batch_size=cfg.micro_batch_size,
                                                          time_chunk=time_chunk or T_max, wanted=wanted)
        mpp = mpp if supports_stacked(model) else 1
        if not cfg.time_chunk:
            time_chunk = auto_time_chunk(mcfg, device=device, batch_size=cfg.micro_batch_size, models=mpp)
        if cfg.verbose:
            print(f"ZO: {cfg.num_perturbations} probes, {mpp} perturbed model(s) per forward pass", file=out)
    comm = LocalComm()
    graphed = step_graph = None
    if engine is not None:
        graphed, step_graph = build_graphs(
            cfg.cuda_graphs, lambda P, b: stacked_batch_loss(model, P, b, time_chunk=time_chunk,
                                                             micro_batch_size=cfg.micro_batch_size),
            device=device, models_per_pass=mpp, n_params=sum(p.numel() for p in model.parameters()))
        if cfg.verbose and graphed is not None:
            what = "the whole step" if step_graph is not None else "the stacked probe loss"
            print(f"ZO: {what} replayed as a CUDA graph (--cuda_graphs {cfg.cuda_graphs})", file=out)

    fixed = None
    if cfg.overfit_to_one_batch:
        fixed = task.train_batch(batch_size=cfg.macro_batch_size, generator=data_gen)
    clock = Stopwatch()
    losses, step_times = [], []
    first_loss = None
    max_len = 2 if cfg.curriculum else None
    val_every = cfg.val_interval or cfg.log_interval
    summary = {}
    step = 0
    try:
        for step in range(cfg.max_iterations):
            if cfg.curriculum and step and step % cfg.curriculum_steps == 0:
                max_len = min(max_len + 1, cfg.seq_length)
            batch = fixed if fixed is not None else task.train_batch(batch_size=cfg.macro_batch_size,
                                                                     generator=data_gen, max_len=max_len)
            lr = cfg.learning_rate
            _sync(device)
            t0 = time.perf_counter()
            if cfg.use_bptt:
                train_loss = bptt_step(model, opt, batch, micro_batch_size=cfg.micro_batch_size,
                                       grad_clip=cfg.grad_clip)
                if not math.isfinite(train_loss):
                    raise NonFiniteLossError(step, lr)
            else:
                def loss_fn(b=batch):
                    with torch.inference_mode():
                        return batch_loss(model, b, time_chunk=time_chunk, micro_batch_size=cfg.micro_batch_size)
                def stacked(P, b=batch):
                    with torch.inference_mode():
                        if graphed is not None:
                            return graphed(P, b)
                        return stacked_batch_loss(model, P, b, time_chunk=time_chunk,
                                                  micro_batch_size=cfg.micro_batch_size)
                res = zo_step(engine, step=step, lr=lr, loss_for_probe=lambda i: loss_fn, comm=comm,
                              baseline_fn=loss_fn, stacked_loss=stacked, models_per_pass=mpp,
                              stack_layouts=stack_layouts_fn(model, batch.inputs.shape[0], cfg.micro_batch_size),
                              step_graph=step_graph, batch=batch)
                train_loss = res.train_loss
            _sync(device)
            dt = time.perf_counter() - t0
            step_times.append(dt)
            losses.append(train_loss)
            first_loss = train_loss if first_loss is None else first_loss
            rec = {"step": step, "train_loss": train_loss, "lr": lr, "eps": cfg.learning_rate * cfg.epsilon_tying_ratio,
                   "step_time_s": dt, "elapsed_s": clock.elapsed(), "peak_mem_bytes": peak_memory_bytes(device),
                   "context_len": batch.inputs.shape[1], "optimizer": describe_optimizer(cfg), "task": cfg.task,
                   "model_type": cfg.model_type, "params": n_params}
            last = step == cfg.max_iterations - 1
            done = cfg.stop_loss > 0 and train_loss < cfg.stop_loss
            if step % cfg.log_interval == 0 or last or done:
                if fixed is None and (step % val_every == 0 or last or done):
                    vb = task.val_batch(batch_size=cfg.val_batch_size,
                                        generator=torch.Generator(device=device).manual_seed(val_gen_seed))
                    vl, vtok, vseq, vlogits = evaluate_batch(model, vb, time_chunk=time_chunk)
                    rec.update(val_loss=float(vl), val_accuracy=float(vtok), val_seq_accuracy=float(vseq))
                    if hasattr(task, "metrics"):
                        m = task.metrics(float(vl))
                        rec.update(val_perplexity=m["perplexity"], val_bits_per_token=m["bits_per_token"],
                                   val_bits_per_char=m["bits_per_char"])
                        samples = task.greedy_samples(model, generator=torch.Generator(device=device).manual_seed(val_gen_seed),
                                                      n=2) if (cfg.verbose or last or done) else []
                    else:
                        samples = sample_predictions(task, vb, vlogits, n=2)
                else:
                    samples = []
                if cfg.verbose or last or done:
                    val_s = f"{rec['val_loss']:.3f}" if "val_loss" in rec else "n/a"
                    acc_s = f", val_acc={rec['val_accuracy']:.3f}" if "val_accuracy" in rec else ""
                    if "val_bits_per_char" in rec:
                        acc_s += f", val_bpc={rec['val_bits_per_char']:.3f}"
                    print(f"Iter={step}, train_loss={train_loss:.3f}, val_loss={val_s}{acc_s}, LR={lr:.6f}, "
                          f"eps={rec['eps']:.6f}, peak_mem={rec['peak_mem_bytes'] / 2**30:.3f} GB "
                          f"iter_time={dt:.3f}s, total_time={clock.elapsed() / 60:.2f}m, "
                          f"context_len={rec['context_len']}", file=out, flush=True)
                    for s in samples:
                        print(f"    {s}", file=out)
                metrics.write(rec)
                wandb.log(rec, step)
            if done:
                break
    finally:
        metrics.close()
        wandb.close()
    steady = step_times[1:] or step_times
    summary = {"params": n_params, "steps": len(losses), "first_loss": first_loss, "last_loss": losses[-1],
               "best_loss": min(losses), "s_per_step": sorted(steady)[len(steady) // 2],
               "peak_mem_bytes": peak_memory_bytes(device), "optimizer": describe_optimizer(cfg)}
    if cfg.save_model:
        path = os.path.join(cfg.checkpoint_dir, "latest.pt")
        save_checkpoint(path, {"model_state_dict": model.state_dict(), "model_args": mcfg.to_dict(),
                               "step": len(losses), "config": dataclasses.asdict(cfg),
                               "optimizer_state": (opt.state_dict() if opt else engine.state_dict())})
        print(f"saved checkpoint to {path}", file=out)
    return summary


def describe_optimizer(cfg: SeriesConfig) -> str:
    if cfg.use_bptt:
        return "BPTT-Adam" if cfg.use_adam else "BPTT-SGD"
    kind = "FD-RGE" if cfg.fd_rge else "CD-RGE"
    return f"{kind}@{cfg.num_perturbations}" + ("+Adam" if cfg.use_adam else "")


def bptt_step(model, opt, batch, *, micro_batch_size: int, grad_clip: float) -> float:
    """One autograd step with gradient accumulation over micro-batches (token-weighted mean)."""
    opt.zero_grad(set_to_none=True)
    total = (batch.targets != -100).sum().clamp(min=1)
    B = batch.inputs.shape[0]
    loss_sum = 0.0
    for r0 in range(0, B, micro_batch_size):
        acc = chunked_accumulator(model, batch.inputs[r0:r0 + micro_batch_size], batch.targets[r0:r0 + micro_batch_size])
        part = acc.loss_sum / total
        part.backward()
        loss_sum += float(part.detach())
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss_sum
