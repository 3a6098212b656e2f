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


def add_bool(p: argparse.ArgumentParser, name: str, default: bool, help: str = "", dest: str | None = None):
    kw = {"dest": dest} if dest else {}
    p.add_argument(name, type=str2bool, nargs="?", const=True, default=default, metavar="true|false",
                   help=f"{help} (default {str(default).lower()})", **kw)


def positive_int(v) -> int:
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
    if i < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {i}")
    return i


def nonneg_int(v) -> int:
    try:
        i = int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {v!r}") from None
    if i < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {i}")
    return i


def positive_float(v) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not f > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {f}")
    return f


def nonneg_float(v) -> float:
    try:
        f = float(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {v!r}") from None
    if not f >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {f}")
    return f


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
