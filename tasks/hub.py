"""Hugging Face hub reachability and the wording of "offline and not cached" errors.

Nothing here imports ``transformers`` or ``datasets``; ``huggingface_hub`` is imported
only to name the cache directory in messages. The probe is one TCP connect with a
short timeout, so a machine without network fails in seconds instead of sitting
through the hub client's retry back-off.
"""

from __future__ import annotations

import functools
import os
import socket
from contextlib import contextmanager
from urllib.parse import urlparse

__all__ = [
    "OFFLINE_VARS",
    "offline_reason",
    "hf_cache_desc",
    "forced_offline",
    "short_cause",
]

OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")
PROBE_TIMEOUT_S = 3.0


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=8)
def _probe(endpoint: str) -> str | None:
    url = urlparse(endpoint)
    host = url.hostname or endpoint
    port = url.port or (443 if url.scheme != "http" else 80)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{endpoint} cannot be reached ({type(e).__name__}: {e})"
    return None


def offline_reason() -> str | None:
    """Why the hub is unusable right now, or None when it may be reachable.

    An offline variable set to a true value wins; otherwise, unless a proxy is
    configured (then a direct probe proves nothing), one TCP connect to the endpoint
    decides. The probe result is cached per process.
    """
    for var in OFFLINE_VARS:
        if os.environ.get(var, "").strip().upper() in _TRUE:
            return f"{var}={os.environ[var]} is set"
    if any(os.environ.get(v) for v in _PROXY_VARS):
        return None
    return _probe(_endpoint())


def hf_cache_desc() -> str:
    """Where the Hugging Face caches live, as a short phrase for messages."""
    home = os.environ.get("HF_HOME")
    try:
        from huggingface_hub import constants

        hub_cache = constants.HF_HUB_CACHE
    except Exception:  # pragma: no cover - huggingface_hub is a dependency of transformers/datasets
        hub_cache = None
    parts = [f"HF_HOME={home}" if home else "HF_HOME unset (default ~/.cache/huggingface)"]
    if hub_cache:
        parts.append(f"hub cache {hub_cache}")
    return ", ".join(parts)


@contextmanager
def forced_offline():
    """Make ``huggingface_hub``/``datasets`` behave as with HF_HUB_OFFLINE=1 for the block.

    Used only after :func:`offline_reason` found the endpoint unreachable, so that a cached
    dataset still loads without the client's network retries.
    """
    patched = []
    try:
        import huggingface_hub.constants as hc

        patched.append((hc, "HF_HUB_OFFLINE", hc.HF_HUB_OFFLINE))
        hc.HF_HUB_OFFLINE = True
    except Exception:  # pragma: no cover
        pass
    try:
        import datasets.config as dc

        for attr in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
            if hasattr(dc, attr):
                patched.append((dc, attr, getattr(dc, attr)))
                setattr(dc, attr, True)
    except Exception:  # pragma: no cover
        pass
    try:
        yield
    finally:
        for mod, attr, old in reversed(patched):
            setattr(mod, attr, old)


def short_cause(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message``, trimmed, for the tail of a ValueError."""
    msg = str(exc).strip().splitlines()
    first = msg[0] if msg else ""
    if len(first) > limit:
        first = first[: limit - 3] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
