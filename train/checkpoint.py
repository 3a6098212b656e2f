"""Self-describing checkpoints, written atomically (temp file, fsync, rename)."""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile

import torch


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: corrupt, missing keys or another architecture."""


def save_checkpoint(path: str, payload: dict) -> None:
    """Write `payload` to `path` atomically: readers see the old file or the new one, never half."""
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp_ckpt_", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


REQUIRED_KEYS = ("model_state_dict", "model_args", "step", "config")


def load_checkpoint(path: str, *, map_location="cpu") -> dict:
    """Load and validate a checkpoint; a clear CheckpointError for every way it can be unusable."""
    if os.path.isdir(path):
        path = os.path.join(path, "latest.pt")
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist; pass a file or a directory holding latest.pt")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path!r} is corrupt or truncated and cannot be read "
                              f"({type(e).__name__}: {str(e)[:200]}). Resume from an earlier file or start fresh.") from None
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in REQUIRED_KEYS):
        missing = [k for k in REQUIRED_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
        raise CheckpointError(f"checkpoint {path!r} is not one of ours: missing keys {missing}")
    return ckpt


def check_architecture(ckpt: dict, model_args: dict, *, path: str = "checkpoint") -> None:
    """Refuse a checkpoint whose architecture differs from the model about to be trained."""
    keys = ("model_type", "vocab_size", "input_size", "hidden_size", "num_heads", "head_size", "memory_size",
            "controller_heads")
    diff = {k: (ckpt["model_args"].get(k), model_args.get(k)) for k in keys
            if ckpt["model_args"].get(k) != model_args.get(k)}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(f"{path} holds another architecture ({detail}); pass matching model flags "
                              f"or start without --load_from_checkpoint")
