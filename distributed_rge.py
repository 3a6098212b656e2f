r"""Distributed CD-RGE: every rank evaluates its share of the probes and only loss scalars cross the wire.

    python distributed_rge.py            # one process, tiny CPU smoke test: overfit one batch of the embedded corpus
    torchrun --nproc_per_node=2 distributed_rge.py --device cpu --mode test \
        --batch_size 4 --meta_perturbations 16 --learning_rate 0.1 --adam true   # loss < 0.1 in ~40 steps
    torchrun --nproc_per_node=2 distributed_rge.py --device cpu --mode train --task lm \
        --max_iters 200 --val_iters 100  # val_loss, val_perplexity, val_bits_per_char + greedy samples
    python distributed_rge.py --tokenizer hf --model_type LSTM   # the paper's smoke line: GPT-2 vocabulary
    python -m torch.distributed.launch --nproc_per_node=8 [--master_port=29501] distributed_rge.py \
        --batch_size 1024 --meta_perturbations 12 --model_scale 1 --hidden_size 240 --input_size 100 \
        --num_heads 12 --model_type LSTM --min_seq_len 10 --learning_rate 0.1 --verbose false
    # several nodes: the same line on every node (checkpoint dir on a shared filesystem)
    torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=$HEAD_NODE_IP:29500 \
        --rdzv_id=zo_run distributed_rge.py ...
    # if it hangs on nodes without InfiniBand: export NCCL_P2P_DISABLE=1

Backend: NCCL when the device is CUDA (each rank takes its LOCAL_RANK GPU), gloo on CPU. Per step the
ranks all-gather the [meta_perturbations x world, 2] loss table; theta is broadcast once. Exit status:
0 done, 2 usage/configuration error, 3 non-finite loss (no update applied; the last checkpoint is kept),
4 replicas diverged, 5 the process group did not come up within --init_timeout_s.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from train.cli_args import (add_bool, add_cuda_graphs, add_fast_activations, apply_fast_activations, nonneg_float, nonneg_int,
                            positive_float, positive_int, reject_unimplemented, str2bool)

_T_START = time.time()  # module import: the summary's process time counts from here

EXIT_USAGE, EXIT_NONFINITE, EXIT_REPLICA, EXIT_INIT = 2, 3, 4, 5
# models/lstm_backends.BACKENDS, spelled out so that --help needs no torch import (a test keeps them equal)
LSTM_BACKENDS = ("torch", "fused", "fused_bmm", "auto", "flashrnn_vanilla", "flashrnn_cuda", "flashrnn_cuda_fused",
                 "flashrnn_triton_fused")

DEFAULTS_NOTE = (
    "Defaults are a tiny CPU smoke test that needs no network: --task lm on the embedded corpus (CPython's pydoc "
    "topics and stdlib docstrings, assembled at first use and cached under $ZO_RNN_CACHE or ~/.cache/zo_rnn) with "
    "the char tokenizer (100 ids), windows of 4 tokens, LSTM hidden 32 / 4 heads / input 32 (11,812 parameters), "
    "batch 4, 16 probes per rank, plain CD-RGE (ZO-SGD, no Adam, as the paper's commands assume) at lr 0.3. "
    "The bare `python distributed_rge.py` (test mode) overfits its batch to loss < 0.1 in ~340 steps, about 30 s "
    "on 2 CPU cores. Faster: --adam true --learning_rate 0.1 (~60 steps); longer windows: --min_seq_len 8 "
    "(~690 steps, or ~125 with Adam). Train mode (--mode train) validates every --val_iters steps: val_loss, "
    "val_perplexity, val_bits_per_token, val_bits_per_char and greedy samples. The paper's runs pass their sizes "
    "explicitly (--batch_size 1024 --meta_perturbations 12 --hidden_size 240 --input_size 100 --num_heads 12 "
    "--min_seq_len 10 --learning_rate 0.1).")


def schedule_name(v) -> str:
    s = str(v).strip().lower()
    if s in ("cosine", "constant"):
        return s
    try:
        return "cosine" if str2bool(s) else "constant"
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected true/false (cosine/constant), got {v!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=DEFAULTS_NOTE)
    g = p.add_argument_group("run")
    g.add_argument("--mode", default="test", choices=["test", "train"],
                   help="test: overfit one batch until train loss < 0.1; train: fresh batches, validation")
    g.add_argument("--max_iters", type=positive_int, default=1000, help="total steps, counting those before a resume")
    g.add_argument("--device", default=None, help="cpu, cuda (each rank its LOCAL_RANK GPU) (default: cuda if available)")
    g.add_argument("--seed", type=nonneg_int, default=0, help="run seed: init, probe seeds and data")
    g.add_argument("--task", default="lm",
                   help="lm (default: next-token prediction on --dataset, by default the embedded corpus, no "
                        "network), penn_tree_bank (PTB from the hub, or a local copy via --dataset), copy, reverse, "
                        "sort, add, repeat_copy, lm_char")
    g.add_argument("--dataset", default=None, metavar="PATH_OR_NAME",
                   help="lm/penn_tree_bank: a local .txt/.jsonl/.parquet file or directory, or a hub dataset name "
                        "(e.g. haritzpuerto/the_pile_00_OpenWebText2); default: the embedded corpus (lm), PTB "
                        "(penn_tree_bank); lm_char: a local UTF-8 text file")
    g.add_argument("--tokenizer", default=None, choices=["char", "numeric", "hf"],
                   help="default: the task's (char for text, numeric for synthetic tasks); hf: GPT-2 + <bos>/<eos>/"
                        "<pad> (from the Hugging Face cache, or the hub when online)")
    g.add_argument("--tokenizer_path", default=None, metavar="DIR",
                   help="text tasks: a local tokenizer directory (written by save_pretrained); with --tokenizer hf, a "
                        "saved GPT-2")
    g.add_argument("--max_num", type=positive_int, default=15, help="numbers 0..max_num-1 in the synthetic tasks")
    g.add_argument("--val_iters", type=positive_int, default=100, help="validate (train mode) and checkpoint every N steps")
    g.add_argument("--sync_check_iters", type=positive_int, default=100, help="replica checksum every N steps")
    g.add_argument("--checkpoint_dir", default="rnn_checkpoints", help="rank 0 writes DIR/latest.pt")
    g.add_argument("--load_from_checkpoint", default=None, help="resume from a checkpoint file (or a dir with latest.pt)")
    g.add_argument("--metrics_out", default=None, help="JSON lines, one per step (rank 0)")
    g.add_argument("--summary_out", default=None, metavar="PATH",
                   help="every rank writes its end-of-run summary as JSON: final theta checksum (after the last "
                        "replica check), s/step, this rank's peak memory, start-up timings. '{rank}' in PATH "
                        "becomes the rank; without it, rank r writes PATH with '.rank<r>' before the extension")
    g.add_argument("--wandb_proj", default=None, help="log to wandb (offline without WANDB_API_KEY)")
    g.add_argument("--wandb_run", default=None, help="wandb run name")
    add_bool(g, "--verbose", True, "a line per step with phase timings and bytes (false: only at --val_iters)")
    g.add_argument("--threads", type=nonneg_int, default=0,
                   help="CPU intra-op threads per rank (0: 1 for models under 2M parameters, else torch's default)")
    g.add_argument("--init_timeout_s", type=positive_float, default=300.0,
                   help="give up if the process group is not up after this many seconds (default 300)")
    g.add_argument("--local-rank", "--local_rank", dest="local_rank", type=int, default=None,
                   help="set by torch.distributed.launch; the LOCAL_RANK environment variable wins")

    g = p.add_argument_group("model")
    g.add_argument("--model_type", default="LSTM", choices=["LSTM", "DNC"])
    g.add_argument("--model_scale", type=positive_int, default=1, help="multiplies hidden, memory and head sizes")
    g.add_argument("--hidden_size", type=positive_int, default=32)
    g.add_argument("--num_heads", type=positive_int, default=4, help="LSTM: recurrence heads; DNC: read heads")
    g.add_argument("--input_size", type=positive_int, default=32, help="embedding width")
    g.add_argument("--head_size", type=nonneg_int, default=0, help="LSTM: hidden/heads when 0; DNC: memory word size")
    g.add_argument("--memory_size", type=nonneg_int, default=0, help="DNC memory slots (0: hidden_size)")
    g.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="parameter dtype (default float32 on CPU, bfloat16 on CUDA; the ZO master is fp32)")
    g.add_argument("--lstm_backend", default="auto", choices=LSTM_BACKENDS,
                   help="LSTM recurrence backend (models/lstm_backends.py; auto: fused on CUDA once it passes its "
                        "check). torch skips the fused path's per-pass [vocab, 4*hidden] input table, which a large "
                        "vocabulary cannot afford: 53 GB at GPT-2's 50,260 ids and hidden 131,072")
    add_cuda_graphs(g)
    add_fast_activations(g)

    g = p.add_argument_group("data and curriculum")
    g.add_argument("--batch_size", type=positive_int, default=4, help="sequences per batch (the paper: 1024)")
    g.add_argument("--micro_batch_size", type=nonneg_int, default=0, help="rows per forward pass (0: whole batch)")
    g.add_argument("--val_batch_size", type=nonneg_int, default=0,
                   help="validation rows (0: max(batch_size, 64), at most 256)")
    g.add_argument("--time_chunk", type=nonneg_int, default=0, help="forward chunk in time steps (0: 64)")
    g.add_argument("--models_per_pass", type=nonneg_int, default=0,
                   help="perturbed models per forward pass (0: 1 on CPU, which keeps runs bitwise equal across world "
                        "sizes; sized from free memory on CUDA)")
    g.add_argument("--min_seq_len", type=positive_int, default=4, help="starting current_max_seq_len")
    g.add_argument("--max_seq_len", type=nonneg_int, default=0, help="curriculum ceiling (0: min_seq_len, no curriculum)")
    g.add_argument("--step_seq_len", type=nonneg_int, default=1, help="curriculum growth per promotion")
    g.add_argument("--step_seq_len_loss_thresh", type=nonneg_float, default=0.1,
                   help="promote when the train loss stays below this ...")
    g.add_argument("--patience_seq_len", type=positive_int, default=10, help="... for this many consecutive steps")
    add_bool(g, "--scatter_batch", False, "a batch per probe from (data seed, step, probe index), no broadcast")
    add_bool(g, "--use_different_batch_per_meta_perturbation", False, "same as --scatter_batch true")

    g = p.add_argument_group("optimiser")
    g.add_argument("--learning_rate", type=positive_float, default=0.3,
                   help="ZO-SGD step (Adam step with --adam true); epsilon = ratio * this")
    g.add_argument("--epsilon_tying_ratio", type=positive_float, default=1.0, help="epsilon = ratio * learning rate")
    g.add_argument("--meta_perturbations", type=positive_int, default=16,
                   help="probes per rank; n_total = meta_perturbations x world size")
    add_bool(g, "--central_difference", True, "CD-RGE (false: forward differences, FD-RGE)")
    add_bool(g, "--antithetic", False, "FD-RGE with +z/-z probe pairs (needs --central_difference false)")
    add_bool(g, "--normal_distribution", False, "Gaussian probes instead of Rademacher")
    add_bool(g, "--probe_normalization", False, "rescale every probe to norm sqrt(d)")
    add_bool(g, "--gradient_normalization", False, "divide the gradient estimate by its L2 norm (L1 with --l1_norm)")
    add_bool(g, "--l1_norm", False, "use the L1 norm in --gradient_normalization")
    g.add_argument("--probe_dropout_rate", type=nonneg_float, default=0.0, help="fraction of probe entries zeroed")
    g.add_argument("--weight_decay", type=nonneg_float, default=0.0, help="decoupled weight decay")
    add_bool(g, "--adam", False, "Adam on the estimated gradient (false: plain ZO-SGD)")
    g.add_argument("--beta1", type=nonneg_float, default=0.9)
    g.add_argument("--beta2", type=nonneg_float, default=0.999)
    add_bool(g, "--adaptive", False, "not implemented")
    g.add_argument("--learn_rate_schedule", type=schedule_name, default="constant", metavar="true|false",
                   help="true (cosine) or false (constant, default)")
    g.add_argument("--warmup_iters", type=nonneg_int, default=0, help="linear warmup steps")
    g.add_argument("--cosine_wavelength", type=nonneg_int, default=1000, help="steps of one cosine decay")

    p.add_argument("--debug_nan_at_step", type=int, default=-1, help=argparse.SUPPRESS)
    p.add_argument("--debug_nan_rank", type=int, default=0, help=argparse.SUPPRESS)
    return p


def config_from_args(args):
    import torch

    from train.distributed import DistConfig
    if args.l1_norm and not args.gradient_normalization:
        raise ValueError("--l1_norm true selects the norm of --gradient_normalization; add --gradient_normalization true")
    if args.antithetic and args.central_difference:
        raise ValueError("--antithetic true applies to FD-RGE: add --central_difference false "
                         "(central differences are already antithetic)")
    if not (args.beta1 < 1 and args.beta2 < 1):
        raise ValueError(f"--beta1 and --beta2 must be in [0, 1), got {args.beta1}, {args.beta2}")
    return DistConfig(
        mode=args.mode, task=args.task, dataset=args.dataset, tokenizer=args.tokenizer,
        tokenizer_path=args.tokenizer_path, max_num=args.max_num,
        model_type=args.model_type, model_scale=args.model_scale, input_size=args.input_size,
        hidden_size=args.hidden_size, num_heads=args.num_heads, head_size=args.head_size,
        memory_size=args.memory_size, dtype=args.dtype, device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"), seed=args.seed,
        batch_size=args.batch_size, micro_batch_size=args.micro_batch_size, val_batch_size=args.val_batch_size,
        time_chunk=args.time_chunk, models_per_pass=args.models_per_pass, min_seq_len=args.min_seq_len, max_seq_len=args.max_seq_len,
        step_seq_len=args.step_seq_len, step_seq_len_loss_thresh=args.step_seq_len_loss_thresh,
        patience_seq_len=args.patience_seq_len, max_iters=args.max_iters, learning_rate=args.learning_rate,
        learn_rate_schedule=args.learn_rate_schedule, warmup_iters=args.warmup_iters,
        cosine_wavelength=args.cosine_wavelength, epsilon_tying_ratio=args.epsilon_tying_ratio,
        meta_perturbations=args.meta_perturbations,
        per_probe_batch=args.scatter_batch or args.use_different_batch_per_meta_perturbation,
        central_difference=args.central_difference, antithetic=args.antithetic,
        distribution="normal" if args.normal_distribution else "rademacher",
        probe_normalization=args.probe_normalization,
        gradient_normalization=("l1" if args.l1_norm else "l2") if args.gradient_normalization else None,
        probe_dropout_rate=args.probe_dropout_rate, weight_decay=args.weight_decay, adam=args.adam,
        beta1=args.beta1, beta2=args.beta2, val_iters=args.val_iters, sync_check_iters=args.sync_check_iters,
        checkpoint_dir=args.checkpoint_dir, load_from_checkpoint=args.load_from_checkpoint,
        metrics_out=args.metrics_out, wandb_proj=args.wandb_proj, wandb_run=args.wandb_run, verbose=args.verbose,
        threads=args.threads,
        debug_nan_at_step=args.debug_nan_at_step, debug_nan_rank=args.debug_nan_rank, lstm_backend=args.lstm_backend,
        cuda_graphs=args.cuda_graphs)


def summary_path(template: str, rank: int) -> str:
    """Where rank `rank` writes its --summary_out file."""
    if "{rank}" in template:
        return template.replace("{rank}", str(rank))
    stem, ext = os.path.splitext(template)
    return f"{stem}.rank{rank}{ext or '.json'}"


def write_summary(template: str, summary: dict, *, comm, device, extra: dict) -> str:
    """One JSON object per rank (written atomically): the trainer's summary plus what a scaling
    report needs. `checksum_hex` is the exact float64 checksum; ranks agree iff these are equal."""
    import torch
    dev = torch.device(device)
    if dev.type == "cuda":
        peak, name = int(torch.cuda.max_memory_allocated(dev)), torch.cuda.get_device_name(dev)
    else:
        import resource
        peak, name = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu"
    rec = {**summary, "rank": comm.rank, "local_rank": getattr(comm, "local_rank", 0), "device": str(dev),
           "device_name": name, "checksum_hex": float(summary["checksum"]).hex(),
           # CUDA: allocator peak since the loop started (steps, final replica check, checkpoint); CPU: peak RSS
           "peak_mem_bytes": peak, **extra}
    path = summary_path(template, comm.rank)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(rec, f, indent=1)
    os.replace(tmp, path)
    return path


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_fast_activations(args)
    reject_unimplemented(parser, args, {
        "adaptive": (False, "adaptive step sizes are not part of this implementation; use --adam true "
                            "or a --learn_rate_schedule"),
    })
    from dataclasses import replace

    from train.distributed import DistributedTrainer
    from train.zo_step import NonFiniteLossError
    from zo.comm import ReplicaMismatchError
    from zo.dist import DistInitError, init_comm

    comm = None
    try:
        cfg = config_from_args(args)
        cfg.validate()                       # configuration errors before anyone waits on a rendezvous
        t_main = time.time()
        comm = init_comm(device_arg=args.device, init_timeout_s=args.init_timeout_s, local_rank_arg=args.local_rank)
        cfg = replace(cfg, device=str(comm.device))
        t_comm = time.time()
        trainer = DistributedTrainer(cfg, comm)   # task, model, engine, theta broadcast, first replica check
        t_built = time.time()
        summary = trainer.run()                   # steps, final replica check, final checkpoint
        t_end = time.time()
        if args.summary_out:
            write_summary(args.summary_out, summary, comm=comm, device=comm.device, extra={
                "models_per_pass": trainer.models_per_pass, "time_chunk": trainer.time_chunk,
                "theta_broadcast_bytes": trainer.init_bytes,
                "t_start_unix": _T_START, "t_end_unix": t_end, "process_s": t_end - _T_START,
                "imports_s": t_main - _T_START, "comm_init_s": t_comm - t_main, "trainer_init_s": t_built - t_comm,
                "run_s": t_end - t_built})
    except DistInitError as e:
        print(str(e), file=sys.stderr)
        return EXIT_INIT
    except NonFiniteLossError as e:
        if comm is None or comm.rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_NONFINITE
    except ReplicaMismatchError as e:
        if comm is None or comm.rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return EXIT_REPLICA
    except ValueError as e:
        rank = f"[rank {comm.rank}] " if comm is not None and comm.world_size > 1 else ""
        print(f"error: {rank}{e}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        if comm is not None:
            comm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
