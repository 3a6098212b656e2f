"""Single-device harness: BPTT vs CD-RGE / FD-RGE on the paper's tasks, and its timing/VRAM table.

    python rge_series_experiments.py                       # small offline CPU default, learns in ~1 min
    python rge_series_experiments.py --task copy --model_type LSTM --num_perturbations 96 \
        --learning_rate_and_epsilon 0.05 --overfit_to_one_batch_flag true
    python rge_series_experiments.py --use_bptt true --use_adam true ...
    python rge_series_experiments.py --unittest            # s/step and measured peak memory table
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

from train.cli_args import (add_bool, add_cuda_graphs, add_fast_activations, apply_fast_activations, distribution, nonneg_float,
                            nonneg_int, positive_float, positive_int, reject_unimplemented)

DEFAULTS_NOTE = ("With no arguments: copy task (lengths 2..3), LSTM hidden 32 / 2 heads (input 16), CD-RGE with "
                 "64 probes and lr = eps = 0.3, overfitting one batch of 8 for 300 steps (about a minute on a laptop CPU).")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=DEFAULTS_NOTE)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    p.add_argument("--device", default=dev, help=f"cpu, cuda or cuda:N (default {dev})")
    p.add_argument("--task", default="copy",
                   help="copy, repeat_copy, reverse, sort, add; lm (text: --dataset, default the embedded corpus), "
                        "penn_tree_bank, lm_char (--text_path)")
    p.add_argument("--dataset", default=None,
                   help="lm / penn_tree_bank: a local .txt/.jsonl/.parquet file or folder, or a hub dataset name")
    p.add_argument("--tokenizer_path", default=None, help="a local tokenizer folder (from_pretrained)")
    p.add_argument("--model_type", default="LSTM", choices=["LSTM", "DNC"])
    p.add_argument("--seq_length", type=positive_int, default=3,
                   help="train lengths are [2, seq_length]; validation [seq_length+1, seq_length+50]")
    p.add_argument("--micro_batch_size", type=positive_int, default=8)
    p.add_argument("--macro_batch_size", type=positive_int, default=None, help="default: micro_batch_size")
    p.add_argument("--max_iterations", type=positive_int, default=300)
    p.add_argument("--max_num", type=positive_int, default=15, help="numbers 0..max_num-1 in the synthetic tasks")
    p.add_argument("--input_size", type=positive_int, default=16)
    p.add_argument("--hidden_size", type=positive_int, default=32)
    p.add_argument("--num_heads", type=positive_int, default=2,
                   help="LSTM: recurrence heads; DNC: read heads")
    p.add_argument("--memory_size", type=nonneg_int, default=0, help="DNC memory slots (0: hidden_size)")
    p.add_argument("--head_size", type=nonneg_int, default=0,
                   help="LSTM: hidden/heads when 0; DNC: memory word size (0: hidden_size)")
    p.add_argument("--model_scale", type=positive_int, default=1,
                   help="multiplies hidden_size, memory_size and head_size")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                   help="parameter dtype (default float32 on CPU, bfloat16 on CUDA; ZO keeps an fp32 master)")
    from models.lstm_backends import BACKENDS
    p.add_argument("--lstm_backend", default="auto", choices=list(BACKENDS),
                   help="LSTM recurrence: torch reference, fused (cuBLAS + Triton, padded heads), flashrnn_* "
                        "(needs requirements-gpu.txt), or auto (fused on CUDA when its one-time check passes)")
    p.add_argument("--distribution", type=distribution, default="rademacher", help="rad | normal | uniform")
    p.add_argument("--learning_rate_and_epsilon", type=positive_float, default=0.3,
                   help="learning rate; epsilon = epsilon_tying_ratio * this")
    p.add_argument("--epsilon_tying_ratio", type=positive_float, default=1.0)
    p.add_argument("--num_perturbations", type=positive_int, default=64)
    add_bool(p, "--fd_rge", False, "forward differences L(theta+eps z) - L(theta) instead of central")
    add_bool(p, "--antithetic_sampling", False, "FD-RGE with +z/-z probe pairs (needs --fd_rge true)")
    add_bool(p, "--use_adaptive_step", False, "not implemented")
    add_bool(p, "--probe_normalization", False, "rescale each probe to norm sqrt(d)")
    p.add_argument("--gradient_normalization", default="none", choices=["none", "l2", "l1"])
    p.add_argument("--weight_decay", type=nonneg_float, default=0.0)
    p.add_argument("--probe_dropout_rate", type=nonneg_float, default=0.0)
    p.add_argument("--grad_clip", type=nonneg_float, default=0.0, help="clip the gradient (estimate) L2 norm; 0: off")
    add_bool(p, "--use_bptt", False, "train with backpropagation through time instead of CD-RGE")
    add_bool(p, "--use_adam", False, "BPTT: AdamW instead of SGD; ZO: Adam on the estimated gradient")
    add_bool(p, "--overfit_to_one_batch_flag", True, "train on one fixed batch")
    add_bool(p, "--curriculum", False, "grow the max train length by one every --curriculum_steps")
    p.add_argument("--curriculum_steps", type=positive_int, default=100)
    p.add_argument("--log_interval", type=positive_int, default=25)
    p.add_argument("--val_interval", type=nonneg_int, default=0, help="steps between validations (0: log_interval)")
    p.add_argument("--time_chunk", type=nonneg_int, default=0, help="ZO forward chunk in time steps (0: 64)")
    p.add_argument("--models_per_pass", type=nonneg_int, default=0,
                   help="ZO: perturbed models evaluated per forward (0: auto from free memory; 1: one at a time)")
    add_cuda_graphs(p)
    add_fast_activations(p)
    add_bool(p, "--save_model", False, "write a checkpoint to --checkpoint_dir at the end")
    p.add_argument("--checkpoint_dir", default="rnn_checkpoints")
    add_bool(p, "--wandb", False, "log to wandb (offline without WANDB_API_KEY)")
    p.add_argument("--wandb_proj", default="zo-rnn")
    p.add_argument("--wandb_run_name", default=None)
    p.add_argument("--seed", type=nonneg_int, default=0)
    add_bool(p, "--verbose", True, "print a log line every --log_interval steps")
    p.add_argument("--tokenizer", default=None, choices=["char", "numeric", "hf"],
                   help="char (text tasks' default), hf (GPT-2 + <bos>/<eos>/<pad>), numeric (synthetic tasks)")
    p.add_argument("--text_path", default=None, help="local text file for --task lm_char")
    p.add_argument("--metrics_out", default=None, help="JSON lines, one per logged step")
    p.add_argument("--stop_loss", type=nonneg_float, default=0.0, help="stop once train loss < this (0: never)")
    p.add_argument("--summary_out", default=None, help="write the run summary as JSON here")
    p.add_argument("--threads", type=nonneg_int, default=0,
                   help="CPU threads (0: one thread for models under 2M parameters, else torch's default)")
    add_bool(p, "--unit_test", False, "timing/VRAM table over size presets and optimisers", dest="unit_test")
    p.add_argument("--unittest", dest="unit_test", action="store_const", const=True, help="alias of --unit_test")
    p.add_argument("--unittest_sizes", default=None, help="comma list of presets (default: all that fit)")
    p.add_argument("--unittest_optimizers", default="bptt,cd96,cd512",
                   help="comma list among bptt, cdN (CD-RGE with N probes), fdN")
    p.add_argument("--unittest_iters", type=positive_int, default=5)
    p.add_argument("--unittest_batch_size", type=positive_int, default=None,
                   help="default 1024 on CUDA (the paper's), 64 on CPU")
    p.add_argument("--unittest_out", default="results/unittest")
    return p


ZO_ONLY_FLAGS = ("num_perturbations", "fd_rge", "antithetic_sampling", "probe_normalization", "gradient_normalization",
                 "probe_dropout_rate", "distribution", "epsilon_tying_ratio", "models_per_pass", "time_chunk")


def warn_ignored(parser: argparse.ArgumentParser, args) -> None:
    """Say once which given flags a run ignores (the zeroth-order ones under --use_bptt true)."""
    if not args.use_bptt:
        return
    ignored = [f"--{f}" for f in ZO_ONLY_FLAGS if getattr(args, f) != parser.get_default(f)]
    if ignored:
        print(f"note: {', '.join(ignored)} only apply to CD/FD-RGE and are ignored with --use_bptt true",
              file=sys.stderr)


def config_from_args(args):
    from models import ModelConfig, apply_scale
    from train.series import SeriesConfig
    dtype = args.dtype or ("bfloat16" if str(args.device).startswith("cuda") else "float32")
    if args.antithetic_sampling and not args.fd_rge:
        raise ValueError("--antithetic_sampling true applies to FD-RGE: add --fd_rge true "
                         "(central differences are already antithetic)")
    base = ModelConfig(model_type=args.model_type, hidden_size=args.hidden_size, num_heads=args.num_heads,
                       memory_size=args.memory_size, head_size=args.head_size, input_size=args.input_size)
    scaled = apply_scale(base, args.model_scale)
    return SeriesConfig(
        device=args.device, task=args.task, model_type=args.model_type, seq_length=args.seq_length,
        micro_batch_size=args.micro_batch_size, macro_batch_size=args.macro_batch_size or args.micro_batch_size,
        max_iterations=args.max_iterations, max_num=args.max_num, input_size=args.input_size,
        hidden_size=scaled.hidden_size, num_heads=args.num_heads, memory_size=scaled.memory_size,
        head_size=scaled.head_size, dtype=dtype, lstm_backend=args.lstm_backend, distribution=args.distribution,
        learning_rate=args.learning_rate_and_epsilon, epsilon_tying_ratio=args.epsilon_tying_ratio,
        num_perturbations=args.num_perturbations, fd_rge=args.fd_rge, antithetic=args.antithetic_sampling,
        probe_normalization=args.probe_normalization,
        gradient_normalization=None if args.gradient_normalization == "none" else args.gradient_normalization,
        weight_decay=args.weight_decay, probe_dropout_rate=args.probe_dropout_rate, grad_clip=args.grad_clip,
        use_bptt=args.use_bptt, use_adam=args.use_adam, overfit_to_one_batch=args.overfit_to_one_batch_flag,
        curriculum=args.curriculum, curriculum_steps=args.curriculum_steps, log_interval=args.log_interval,
        val_interval=args.val_interval, time_chunk=args.time_chunk, models_per_pass=args.models_per_pass,
        cuda_graphs=args.cuda_graphs, save_model=args.save_model,
        checkpoint_dir=args.checkpoint_dir, wandb=args.wandb, wandb_proj=args.wandb_proj,
        wandb_run_name=args.wandb_run_name, seed=args.seed, verbose=args.verbose, tokenizer=args.tokenizer,
        text_path=args.text_path, dataset=args.dataset, tokenizer_path=args.tokenizer_path, metrics_out=args.metrics_out, stop_loss=args.stop_loss, threads=args.threads)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    apply_fast_activations(args)
    reject_unimplemented(parser, args, {
        "use_adaptive_step": (False, "adaptive step sizes are not part of this implementation; "
                                     "use --learning_rate_and_epsilon with a schedule in distributed_rge.py"),
    })
    try:
        if args.unit_test:
            from train.unit_table import run_unit_table
            return run_unit_table(args, argv if argv is not None else sys.argv[1:])
        warn_ignored(parser, args)
        cfg = config_from_args(args)
        from train.series import run_series
        summary = run_series(cfg)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.summary_out:
        import json
        os.makedirs(os.path.dirname(os.path.abspath(args.summary_out)), exist_ok=True)
        with open(args.summary_out, "w") as f:
            json.dump(summary, f, indent=1)
    print(f"DONE: {summary['optimizer']} {summary['steps']} steps, loss {summary['first_loss']:.4f} -> "
          f"{summary['last_loss']:.4f} (best {summary['best_loss']:.4f}), {summary['s_per_step']:.4f} s/step, "
          f"peak memory {summary['peak_mem_bytes'] / 2**30:.3f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
