"""Warm every cache an LM run needs, and print the corpus summary.

    python -m tasks.prepare_lm                                     # embedded corpus, char tokenizer
    python -m tasks.prepare_lm --task penn_tree_bank --tokenizer hf
    python -m tasks.prepare_lm --dataset haritzpuerto/the_pile_00_OpenWebText2 --tokenizer hf --streaming \\
        --max_tokens 100000000

Run it once on a machine with network access (with the HF_HOME and ZO_RNN_CACHE the
training machines will use): it downloads what the hub has to give (tokenizer, dataset)
and writes the token cache, so later runs, offline ones included, only read the disk.
For the embedded corpus it also prints its size and unigram entropy (bits per character).
"""

from __future__ import annotations

import argparse
import json
import sys


def main(argv=None) -> int:
    """Build (warm) every cache a run will need and print a JSON summary."""
    p = argparse.ArgumentParser(prog="python -m tasks.prepare_lm", description=main.__doc__)
    p.add_argument("--task", default="lm", choices=["lm", "penn_tree_bank"])
    p.add_argument("--dataset", default=None)
    p.add_argument("--tokenizer", default=None, choices=["char", "hf"])
    p.add_argument("--tokenizer_path", default=None)
    p.add_argument("--seq_length", type=int, default=128)
    p.add_argument("--cache_dir", default=None)
    p.add_argument("--streaming", action="store_true")
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--max_tokens", type=int, default=None)
    args = p.parse_args(argv)
    from tasks.text import build_lm_task

    try:
        task = build_lm_task(args.task, dataset=args.dataset, tokenizer=args.tokenizer,
                             tokenizer_path=args.tokenizer_path, seq_length=args.seq_length,
                             cache_dir=args.cache_dir, streaming=args.streaming, split_seed=args.split_seed,
                             max_tokens=args.max_tokens, log=lambda m: print(m, file=sys.stderr))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = task.describe()
    if args.dataset is None and args.task == "lm":
        from tasks.corpus import load_embedded_corpus

        info["embedded_corpus"] = load_embedded_corpus(args.cache_dir).stats
    print(json.dumps(info, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
