"""Argument helpers shared by the CLIs: the paper's "true"/"false" flags and clear errors."""
from __future__ import annotations

import argparse

TRUE = ("true", "t", "1", "yes", "y")
FALSE = ("false", "f", "0", "no", "n")


def str2bool(v) -> bool:
    """Parse the paper's string booleans ("true"/"false"); a bare flag means true."""
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in TRUE:
        return True
    if s in FALSE:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def add_cuda_graphs(p) -> None:
    """--cuda_graphs auto|true|false|loss (a bare flag means true); see train.graphs.build_graphs."""
    from train.graphs import GRAPHS_AUTO_MAX_PARAMS, graphs_setting

    def parse(v):
        try:
            return graphs_setting(v)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    p.add_argument("--cuda_graphs", type=parse, nargs="?", const="true", default="auto",
                   metavar="auto|true|false|loss",
                   help="ZO on CUDA: replay the whole step (probe writes, stacked forwards, update) as a CUDA graph "
                        "where the optimiser allows it (CD-RGE without Adam, clipping, normalisation or weight "
                        "decay), else the stacked probe loss alone; 'loss': the probe loss alone. "
                        f"auto (default): on for models of at most {GRAPHS_AUTO_MAX_PARAMS:,} parameters evaluated "
                        "several per pass, where launches dominate; it costs memory on large ones")


def add_bool(p: argparse.ArgumentParser, name: str, default: bool, help: str = "", dest: str | None = None):
    kw = {"dest": dest} if dest else {}
    p.add_argument(name, type=str2bool, nargs="?", const=True, default=default, metavar="true|false",
                   help=f"{help} (default {str(default).lower()})", **kw)


def _bounded(cast, kind: str, *, strict: bool):
    """An argparse type: `cast` the value and require > 0 (strict) or >= 0; NaN is refused."""
    def parse(v):
        try:
            x = cast(v)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {v!r}") from None
        if not (x > 0 if strict else x >= 0):
            raise argparse.ArgumentTypeError(f"must be {'> 0' if strict else '>= 0'}, got {x}")
        return x
    return parse


positive_int = _bounded(int, "an integer", strict=True)
nonneg_int = _bounded(int, "an integer", strict=False)
positive_float = _bounded(float, "a number", strict=True)
nonneg_float = _bounded(float, "a number", strict=False)


DISTRIBUTION_ALIASES = {"rad": "rademacher", "rademacher": "rademacher", "normal": "normal", "gaussian": "normal",
                        "uniform": "uniform"}


def distribution(v) -> str:
    s = str(v).lower()
    if s not in DISTRIBUTION_ALIASES:
        raise argparse.ArgumentTypeError(f"unknown distribution {v!r}; choose one of {sorted(DISTRIBUTION_ALIASES)}")
    return DISTRIBUTION_ALIASES[s]


def reject_unimplemented(parser: argparse.ArgumentParser, args, flags: dict) -> None:
    """flags: {dest: (default, reason)}. A non-default value of an unimplemented flag is an error."""
    for dest, (default, reason) in flags.items():
        if getattr(args, dest) != default:
            parser.error(f"--{dest} {getattr(args, dest)!r} is not implemented: {reason}")


def add_fast_activations(p) -> None:
    """--fast_activations (both CLIs): the fused LSTM kernels' activation form."""
    p.add_argument("--fast_activations", default="auto", choices=("auto", "true", "false"),
                   help="fused LSTM kernels: the cell's sigmoid/tanh from the hardware tanh (one special-function "
                        "op each, relative error ~2^-11). auto: for bf16/fp16 states, exact for fp32 (default auto; "
                        "the environment variable ZO_FAST_ACT=0/1 does the same)")


def apply_fast_activations(args) -> None:
    """Apply --fast_activations before any kernel compiles; 'auto' leaves a ZO_FAST_ACT already set."""
    import os
    if args.fast_activations != "auto" or "ZO_FAST_ACT" not in os.environ:
        from models.lstm_fused import set_fast_activations
        set_fast_activations(args.fast_activations)
