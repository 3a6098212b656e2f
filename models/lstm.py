"""Head-structured LSTM language model with the paper's parameterisation.

Legend: B batch, T time, V vocab, I input size, H hidden, N heads, D head size (H = N * D).

    emb [V, I] -> W_in [I, 4H] -> recurrence R [4, N, D, D], b [4, N, D] -> W_out [H, V], b_out [V]
    h0, c0 [H]: learned initial states

The forward is time-chunked: `forward_chunk` consumes [B, Tc] tokens and carries (h, c), so a
caller can stream a sequence of any length with a working set of one chunk.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from models.config import ModelConfig
from models.lstm_backends import recurrence, resolve_backend, state_dtype


def _uniform(shape, bound, generator, dtype, device):
    t = torch.empty(shape, dtype=torch.float32)
    t.uniform_(-bound, bound, generator=generator)
    return nn.Parameter(t.to(device=device, dtype=dtype))


class LSTMModel(nn.Module):
    def __init__(self, cfg: ModelConfig, *, generator: torch.Generator, device="cpu", extra_input: int = 0,
                 extra_output: int = 0):
        super().__init__()
        self.cfg = cfg
        dt = getattr(torch, cfg.dtype)
        V, I, H = cfg.vocab_size, cfg.input_size, cfg.hidden_size
        N, D = cfg.lstm_heads, cfg.lstm_head_size
        self.N, self.D, self.H = N, D, H
        self._layouts_cache: dict = {}      # stack_layouts by (batch rows, models)
        self.embedding = _uniform((V, I), 1.0, generator, dt, device)
        self.W_in = _uniform((I + extra_input, 4 * H), 1.0 / math.sqrt(I + extra_input), generator, dt, device)
        self.R = _uniform((4, N, D, D), 1.0 / math.sqrt(D), generator, dt, device)
        self.b = _uniform((4, N, D), 1.0 / math.sqrt(D), generator, dt, device)
        self.W_out = _uniform((H + extra_output, V), 1.0 / math.sqrt(H + extra_output), generator, dt, device)
        self.b_out = _uniform((V,), 1.0 / math.sqrt(H + extra_output), generator, dt, device)
        self.h0 = _uniform((H,), 0.1, generator, dt, device)
        self.c0 = _uniform((H,), 0.1, generator, dt, device)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int):
        N, D, sdt = self.N, self.D, state_dtype(self.h0.dtype)
        h = self.h0.to(sdt).view(N, 1, D).expand(N, batch_size, D)
        c = self.c0.to(sdt).view(N, 1, D).expand(N, batch_size, D)
        if self._fused() == "fused":      # the fused forward reads a broadcast state without copying it
            return h, c
        return h.contiguous(), c.contiguous()

    # ------------------------------------------------------------------ pieces (shared with the DNC)
    def input_gates(self, x_BTI: torch.Tensor) -> torch.Tensor:
        """[B, T, I'] inputs -> [T, N, B, 4, D] input projections (no bias)."""
        B, T, _ = x_BTI.shape
        xg = x_BTI.to(self.W_in.dtype) @ self.W_in                     # [B, T, 4H] as (4, N, D)
        return xg.view(B, T, 4, self.N, self.D).permute(1, 3, 0, 2, 4)

    def step(self, xg_NB4D: torch.Tensor, state):
        """One time step of the recurrence from precomputed input gates."""
        h, c = state
        hs, state = recurrence(xg_NB4D.unsqueeze(0), self.R, self.b, h, c, backend=self.cfg.backend)
        return hs[0], state

    def hidden_BH(self, h_NBD: torch.Tensor) -> torch.Tensor:
        N, B, D = h_NBD.shape
        return h_NBD.permute(1, 0, 2).reshape(B, N * D)

    # ------------------------------------------------------------------ forward
    def _fused(self) -> str | None:
        """The fused chunk implementation to use ('fused' or 'fused_bmm'), or None."""
        bk = resolve_backend(self.cfg.backend, self.W_in.device, self.W_in.dtype)
        return bk if bk in ("fused", "fused_bmm") else None

    def forward_chunk(self, tokens_BT: torch.Tensor, state):
        """Logits [B, Tc, V] for one chunk of tokens, and the state after it."""
        if self._fused():
            P = {n: p.unsqueeze(0) for n, p in self.named_parameters()}
            logits, state = self.forward_chunk_stacked(P, tokens_BT, state)
            return logits[0], state
        B, T = tokens_BT.shape
        x = self.embedding[tokens_BT]                                   # [B, T, I]
        xg = self.input_gates(x)                                        # [T, N, B, 4, D]
        h, c = state
        hs_TNBD, state = recurrence(xg, self.R, self.b, h, c, backend=self.cfg.backend)
        hs_BTH = hs_TNBD.permute(2, 0, 1, 3).reshape(B, T, self.H)
        logits = hs_BTH.to(self.W_out.dtype) @ self.W_out + self.b_out
        return logits, state

    # ------------------------------------------------------------------ K models in one pass
    def init_state_stacked(self, P: dict, batch_size: int):
        """Initial (h, c) of K stacked models, heads folded as [K*N, B, D]."""
        K = P["h0"].shape[0]
        N, D, sdt = self.N, self.D, state_dtype(P["h0"].dtype)
        h = P["h0"].to(sdt).view(K * N, 1, D).expand(K * N, batch_size, D)
        c = P["c0"].to(sdt).view(K * N, 1, D).expand(K * N, batch_size, D)
        if self._fused() == "fused":      # the fused forward reads a broadcast state without copying it
            return h, c
        return h.contiguous(), c.contiguous()

    def batch_row_order(self, tokens_BT: torch.Tensor) -> torch.Tensor | None:
        """A permutation of a batch's rows for `train.evaluate.stacked_batch_loss`, or None (keep the
        order): the rows sorted by their first token (stable) where the fused backend runs steps 0 and 1
        through tables over the vocabulary (`lstm_fused.step1_tables_run`). Step 1's cell
        (`lstm_fused.first_steps_cell_`) gathers, per row, the tables of that row's step-0 token; sorted,
        a program's rows share a few table rows (large on the H200: 1.08 against 1.36 ms a pass,
        bench/results/logs/first_steps_sorted_2026-11-29.log). The loss is a sum over rows: only its
        rounding depends on the order."""
        if self._fused() != "fused" or tokens_BT.dim() != 2 or tokens_BT.shape[1] < 2:
            return None
        from models import lstm_fused
        if not lstm_fused.step1_tables_run(D=self.D, B=tokens_BT.shape[0], V=self.cfg.vocab_size,
                                           device=tokens_BT.device):
            return None
        return torch.argsort(tokens_BT[:, 0], stable=True)

    def stack_layouts(self, batch_rows: int, models: int) -> dict:
        """{parameter name: layout} the ZO engine should write a pass's perturbed copies in, for forwards
        of `models` stacked models over `batch_rows` rows (`zo.layouts`): the fused backend on CUDA reads
        the recurrent weight in gate tiles, so the engine writes R straight into them and the pass skips
        the [M, 4, N, D, D] copy and its re-tiling. Empty elsewhere (the other backends read R as it is)."""
        if self._fused() != "fused" or self.R.device.type != "cuda":
            return {}
        key = (batch_rows, models)
        hit = self._layouts_cache.get(key)
        if hit is None:
            from models import lstm_fused
            from zo.layouts import GateTiles
            Dk = lstm_fused.step_tiles(self.D)[0]
            bd = lstm_fused.stack_gate_tiles_BD(B=batch_rows, K=models, N=self.N, D=self.D, device=self.R.device)
            hit = {"R": GateTiles(N=self.N, D=self.D, Dk=Dk, BD=bd)}
            self._layouts_cache[key] = hit
        return hit

    def prepare_stacked(self, P: dict) -> dict | None:
        """P with the per-pass weight layouts of the fused forward built once (reuse it for every
        chunk of a pass while P's values are unchanged), or None when the backend needs none."""
        if self._fused() != "fused":
            return None
        from models.lstm_fused import prepare_fused
        return prepare_fused(P, num_heads=self.N)

    def forward_chunk_stacked(self, P: dict, tokens_BT: torch.Tensor, state):
        """Logits [K, B, Tc, V] of K models whose parameters are stacked on a leading axis of each
        tensor of P (same names as the module's parameters), all on the same tokens.

        The K recurrences run as one: the probe axis is folded into the head axis, so a step is a
        single batched matmul over K*N heads. Projections are batched matmuls over K."""
        impl = self._fused()
        if impl is not None:
            from models import lstm_fused
            fwd = lstm_fused.forward_chunk_stacked_fused if impl == "fused" else lstm_fused.forward_chunk_stacked_bmm
            return fwd(P, tokens_BT, state, num_heads=self.N)
        K = P["W_in"].shape[0]
        B, T = tokens_BT.shape
        N, D, H = self.N, self.D, self.H
        x = P["embedding"][:, tokens_BT.reshape(-1)]                        # [K, B*T, I]
        xg = torch.bmm(x.to(P["W_in"].dtype), P["W_in"])                   # [K, B*T, 4H]
        xg = xg.view(K, B, T, 4, N, D).permute(2, 0, 4, 1, 3, 5).reshape(T, K * N, B, 4, D)
        R = P["R"].permute(1, 0, 2, 3, 4).reshape(4, K * N, D, D)
        b = P["b"].permute(1, 0, 2, 3).reshape(4, K * N, D)
        h, c = state
        hs, state = recurrence(xg, R, b, h, c, backend=self.cfg.backend)   # [T, K*N, B, D]
        hs = hs.view(T, K, N, B, D).permute(1, 3, 0, 2, 4).reshape(K, B * T, H)
        logits = torch.baddbmm(P["b_out"].unsqueeze(1), hs.to(P["W_out"].dtype), P["W_out"])
        return logits.view(K, B, T, -1), state

    def loss_chunk_stacked(self, P: dict, tokens_BT: torch.Tensor, targets_BT: torch.Tensor, state, *,
                           ignore_index: int, skip_steps: int = 0):
        """(cross-entropy sums over this chunk's scored targets, fp32 [K, n] per row tile: their row
        sums are the chunk's sums, state) of K stacked models, scored by one kernel where the output
        GEMM left the logits; None where this backend has no such loss (then the caller scores
        forward_chunk_stacked's logits: same sums up to summation order). skip_steps: the chunk's first
        steps score no target (the caller's promise), so they get no logits."""
        if self._fused() != "fused":
            return None
        from models import logits_ce, lstm_fused
        if not logits_ce.fits(P["W_out"].device):
            return None
        return lstm_fused.loss_chunk_stacked_fused(P, tokens_BT, targets_BT, state, num_heads=self.N,
                                                   ignore_index=ignore_index, skip_steps=skip_steps)

    def advance_chunk_stacked(self, P: dict, tokens_BT: torch.Tensor, state):
        """The state of K stacked models after this chunk, without its logits (a chunk with no scored
        target); the fused backend skips the output projection and step 0's copy of h."""
        if self._fused() != "fused":
            return self.forward_chunk_stacked(P, tokens_BT, state)[1]
        from models import lstm_fused
        return lstm_fused.advance_chunk_stacked_fused(P, tokens_BT, state, num_heads=self.N)

    def forward(self, tokens_BT: torch.Tensor, state=None, *, time_chunk: int = 0):
        """Logits for the whole sequence (chunked internally when time_chunk > 0)."""
        if state is None:
            state = self.init_state(tokens_BT.shape[0])
        T = tokens_BT.shape[1]
        step = time_chunk if time_chunk > 0 else T
        outs = []
        for t0 in range(0, T, step):
            lg, state = self.forward_chunk(tokens_BT[:, t0:t0 + step], state)
            outs.append(lg)
        return torch.cat(outs, dim=1), state
