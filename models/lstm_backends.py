"""Recurrence backends of the head-structured LSTM: one entry point, named backends.

    hs_TNBD, (h_NBD, c_NBD) = recurrence(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, backend="torch")

Legend: T time, N heads, B batch, D head size, 4 gates in the order i, f, z, o.
`xg` holds the input projection of every step, without the bias. Gates of one head see only that
head's hidden units: pre[g, n] = x[g, n] + h[n] @ R[g, n] + b[g, n].

Only the pure-torch reference lives here for now; it runs on CPU and GPU and is the reference the
other backends are tested against. A backend that is not available raises a clear error; there is
no silent fallback.
"""
from __future__ import annotations

import torch

BACKENDS = ("torch",)


def lstm_pointwise(pre_NB4D: torch.Tensor, c_NBD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One LSTM cell update from gate pre-activations (at least fp32 math; states kept in it)."""
    pre = pre_NB4D.to(state_dtype(pre_NB4D.dtype))
    i, f, z, o = pre.unbind(-2)
    c = torch.sigmoid(f) * c_NBD + torch.sigmoid(i) * torch.tanh(z)
    h = torch.sigmoid(o) * torch.tanh(c)
    return h, c


def state_dtype(dtype: torch.dtype) -> torch.dtype:
    """States and gate math run in fp32 (fp64 when the weights are fp64)."""
    return torch.promote_types(dtype, torch.float32)


def fuse_recurrent_weight(R_4NDD: torch.Tensor) -> torch.Tensor:
    """R [4, N, D, D] -> [N, D, 4D] so one batched matmul per step gives all four gates."""
    G, N, D, _ = R_4NDD.shape
    return R_4NDD.permute(1, 2, 0, 3).reshape(N, D, G * D)


def recurrence_torch(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD):
    T, N, B, G, D = xg_TNB4D.shape
    Rf = fuse_recurrent_weight(R_4NDD)                      # [N, D, 4D]
    sdt = state_dtype(R_4NDD.dtype)
    bias = b_4ND.permute(1, 0, 2).unsqueeze(1).to(sdt)      # [N, 1, 4, D]
    hs = torch.empty(T, N, B, D, dtype=sdt, device=xg_TNB4D.device)
    for t in range(T):
        rec = torch.bmm(h_NBD.to(Rf.dtype), Rf).view(N, B, G, D)
        h_NBD, c_NBD = lstm_pointwise(xg_TNB4D[t].to(sdt) + rec.to(sdt) + bias, c_NBD.to(sdt))
        hs[t] = h_NBD
    return hs, (h_NBD, c_NBD)


def recurrence(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, *, backend: str = "torch"):
    if backend == "torch":
        return recurrence_torch(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD)
    raise ValueError(f"unknown LSTM backend {backend!r}; available: {BACKENDS}")
