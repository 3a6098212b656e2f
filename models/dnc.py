"""Content-addressed Differentiable Neural Computer (DNC) language model.

Legend: B batch, T time, V vocab, I input size, H controller hidden, R read heads, W memory word
size, N memory slots. Config mapping: H = cfg.hidden_size, R = cfg.num_heads, W = cfg.mem_word
(cfg.head_size), N = cfg.mem_slots (cfg.memory_size); the controller LSTM has cfg.controller_heads
recurrence heads.

What is built (one time step t, all heads and the batch vectorised):

    controller  LSTMModel(extra_input=R*W, extra_output=R*W), submodule `controller`
                input  x_t = [embedding(token_t), reads_{t-1} (R*W)]  -> W_in [I + R*W, 4H]
                (the embedding part of W_in is applied to the whole chunk with one matmul, the
                read part once per step) -> head-structured LSTM step -> h_t [B, H]
    interface   xi_t = h_t @ W_iface + b_iface,  W_iface [H, iface], b_iface [iface],
                iface = R*W + R + W + 1 + 2W, split in this order into
                read keys k_r [B, R, W], raw read strengths [B, R], write key k_w [B, W],
                raw write strength [B], erase (raw) [B, W], add (raw) [B, W]
    addressing  content weights C(M, k, beta) = softmax_n(beta * cos(M[n], k)),
                cos(u, v) = u.v / (sqrt(|u|^2 + eps) sqrt(|v|^2 + eps)), eps = 1e-6,
                beta = 1 + softplus(raw strength)  (>= 1)
    write       w_w = C(M_{t-1}, k_w, beta_w)  [B, N];  e = sigmoid(erase), a = tanh(add)
                M_t = M_{t-1} * (1 - w_w e^T) + w_w a^T
    read        w_r = C(M_t, k_r, beta_r)  [B, R, N] (on the updated memory);  reads_t = w_r M_t  [B, R, W]
    output      logits_t = [h_t, reads_t] @ W_out [H + R*W, V] + b_out   (the controller's W_out/b_out)

Not built: the temporal link matrix, usage-based allocation and the free/allocation/write gates of
the full DNC; addressing is content-only, so the interface width is the one `param_count` counts.

Initial state: the controller's learned h0, c0; reads_0 = 0; M_0 = a fixed, parameter-free matrix
`mem_init` [N, W] (uniform in +-1/sqrt(N + W), drawn once from a private generator seeded with a
constant, so it depends only on N and W, not on the model seed). It is a non-persistent buffer: it
is not a parameter (the zeroth-order engine never perturbs it) and not in the state_dict.
Why not zeros / a constant: with content-only addressing, identical rows get identical cosine
similarities, hence identical weights and identical updates forever; distinct initial rows break
that symmetry (the NTM-style fixed memory initialisation).

Precision: parameters are in cfg.dtype (float32 or bfloat16); matmuls with parameters run in that
dtype (as in LSTMModel), while the memory, the reads, the LSTM states and all addressing math are
fp32 (fp64 for fp64 weights, see `state_dtype`). Logits come out in the parameter dtype.

State (h [Nh, B, Dh], c [Nh, B, Dh], M [B, N, W], reads [B, R, W]) has a fixed size: the working
set of a step does not grow with T. `forward_chunk` carries it, so chunked == unchunked.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.config import ModelConfig
from models.lstm import LSTMModel, _uniform
from models.lstm_backends import recurrence, state_dtype

COS_EPS = 1e-6
MEM_INIT_SEED = 0x0D1C


def interface_size(R: int, W: int) -> int:
    """Width of the interface vector: read keys, read strengths, write key, write strength, erase, add."""
    return R * W + R + W + 1 + 2 * W


def memory_init(N: int, W: int) -> torch.Tensor:
    """The fixed initial memory [N, W] (fp32, CPU): uniform in +-1/sqrt(N + W), private fixed seed."""
    g = torch.Generator(device="cpu")
    g.manual_seed(MEM_INIT_SEED)
    bound = 1.0 / math.sqrt(N + W)
    return torch.empty(N, W, dtype=torch.float32).uniform_(-bound, bound, generator=g)


def strength(raw: torch.Tensor) -> torch.Tensor:
    """Key strength beta = 1 + softplus(raw), in [1, inf)."""
    return 1.0 + F.softplus(raw)


def content_weights(mem_BNW: torch.Tensor, keys_BKW: torch.Tensor, beta_BK: torch.Tensor,
                    eps: float = COS_EPS) -> torch.Tensor:
    """Content weights [B, K, N]: softmax over slots of beta * cosine(memory row, key)."""
    m = mem_BNW * torch.rsqrt(mem_BNW.square().sum(-1, keepdim=True) + eps)
    k = keys_BKW * torch.rsqrt(keys_BKW.square().sum(-1, keepdim=True) + eps)
    sim = k @ m.transpose(1, 2)                                       # [B, K, N]
    return torch.softmax(beta_BK.unsqueeze(-1) * sim, dim=-1)


def write_memory(mem_BNW: torch.Tensor, w_BN: torch.Tensor, erase_BW: torch.Tensor,
                 add_BW: torch.Tensor) -> torch.Tensor:
    """M <- M * (1 - w e^T) + w a^T (erase and add already squashed)."""
    w = w_BN.unsqueeze(-1)                                            # [B, N, 1]
    return mem_BNW * (1.0 - w * erase_BW.unsqueeze(1)) + w * add_BW.unsqueeze(1)


def read_memory(mem_BNW: torch.Tensor, w_BRN: torch.Tensor) -> torch.Tensor:
    """Read vectors [B, R, W] = w_r M."""
    return w_BRN @ mem_BNW


class DNCModel(nn.Module):
    def __init__(self, cfg: ModelConfig, *, generator: torch.Generator, device="cpu"):
        super().__init__()
        if cfg.model_type != "DNC":
            raise ValueError(f"DNCModel needs a config with model_type='DNC', got {cfg.model_type!r}; "
                             f"use LSTMModel for LSTM configs")
        self.cfg = cfg
        dt = getattr(torch, cfg.dtype)
        H, R, W, N = cfg.hidden_size, cfg.num_heads, cfg.mem_word, cfg.mem_slots
        self.H, self.R, self.W, self.N = H, R, W, N
        self.I = cfg.input_size
        self.iface = interface_size(R, W)
        self.controller = LSTMModel(cfg, generator=generator, device=device, extra_input=R * W,
                                    extra_output=R * W)
        bound = 1.0 / math.sqrt(H)
        self.W_iface = _uniform((H, self.iface), bound, generator, dt, device)
        self.b_iface = _uniform((self.iface,), bound, generator, dt, device)
        self.register_buffer("mem_init", memory_init(N, W).to(device), persistent=False)

    # ------------------------------------------------------------------ state
    def init_state(self, batch_size: int):
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        h, c = self.controller.init_state(batch_size)
        h, c = h.contiguous(), c.contiguous()          # the controller's own recurrence owns these
        sdt = state_dtype(self.W_iface.dtype)
        mem = self.mem_init.to(sdt).unsqueeze(0).expand(batch_size, self.N, self.W).contiguous()
        reads = torch.zeros(batch_size, self.R, self.W, dtype=sdt, device=mem.device)
        return h, c, mem, reads

    # ------------------------------------------------------------------ one step of the memory
    def memory_step(self, h_BH: torch.Tensor, mem_BNW: torch.Tensor):
        """Interface from h_t, write to the memory, read from the updated memory -> (reads, mem)."""
        xi = (h_BH.to(self.W_iface.dtype) @ self.W_iface + self.b_iface).to(mem_BNW.dtype)
        return self.memory_step_from_interface(xi, mem_BNW)

    def memory_step_from_interface(self, xi: torch.Tensor, mem_BNW: torch.Tensor):
        """Write then read given the interface vectors xi [B, iface] (state dtype) -> (reads, mem).
        Parameter-free, so the stacked path runs it with K models folded into the batch."""
        R, W = self.R, self.W
        k_r, beta_r, k_w, beta_w, erase, add = xi.split([R * W, R, W, 1, W, W], dim=-1)
        B = xi.shape[0]
        w_w = content_weights(mem_BNW, k_w.unsqueeze(1), strength(beta_w))[:, 0]     # [B, N]
        mem_BNW = write_memory(mem_BNW, w_w, torch.sigmoid(erase), torch.tanh(add))
        w_r = content_weights(mem_BNW, k_r.view(B, R, W), strength(beta_r))          # [B, R, N]
        return read_memory(mem_BNW, w_r), mem_BNW

    # ------------------------------------------------------------------ forward
    def forward_chunk(self, tokens_BT: torch.Tensor, state):
        """Logits [B, Tc, V] for one chunk of tokens, and the state after it."""
        if tokens_BT.dim() != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tuple(tokens_BT.shape)}")
        ctl = self.controller
        B, T = tokens_BT.shape
        h, c, mem, reads = state
        if mem.shape != (B, self.N, self.W) or reads.shape != (B, self.R, self.W):
            raise ValueError(f"state does not match the tokens: memory {tuple(mem.shape)}, reads "
                             f"{tuple(reads.shape)} for batch {B}; build it with init_state({B})")
        Nh, Dh, I = ctl.N, ctl.D, self.I
        sdt = mem.dtype
        W_emb, W_read = ctl.W_in[:I], ctl.W_in[I:]
        x_emb = (ctl.embedding[tokens_BT] @ W_emb).to(sdt)               # [B, T, 4H], one matmul
        outs = []
        for t in range(T):
            xg = x_emb[:, t] + (reads.reshape(B, -1).to(W_read.dtype) @ W_read).to(sdt)   # [B, 4H]
            xg = xg.view(B, 4, Nh, Dh).permute(2, 0, 1, 3)              # [Nh, B, 4, Dh]
            h_NBD, (h, c) = ctl.step(xg, (h, c))
            h_BH = ctl.hidden_BH(h_NBD)
            reads, mem = self.memory_step(h_BH, mem)
            outs.append(torch.cat([h_BH.to(sdt), reads.reshape(B, -1)], dim=-1))
        out = torch.stack(outs, dim=1)                                 # [B, T, H + R*W]
        logits = out.to(ctl.W_out.dtype) @ ctl.W_out + ctl.b_out
        return logits, (h, c, mem, reads)

    # ------------------------------------------------------------------ K models in one pass
    @staticmethod
    def _controller_params(P: dict) -> dict:
        pre = "controller."
        return {n[len(pre):]: v for n, v in P.items() if n.startswith(pre)}

    def init_state_stacked(self, P: dict, batch_size: int):
        """Initial state of K stacked models (K = leading axis of every tensor of P): controller
        heads folded as h, c [K*Nh, B, Dh]; K folded into the batch as M [K*B, N, W], reads [K*B, R, W]
        (row k*B + b is model k, sequence b)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        K = P["W_iface"].shape[0]
        h, c = self.controller.init_state_stacked(self._controller_params(P), batch_size)
        h, c = h.contiguous(), c.contiguous()
        sdt = state_dtype(P["W_iface"].dtype)
        mem = self.mem_init.to(sdt).unsqueeze(0).expand(K * batch_size, self.N, self.W).contiguous()
        reads = torch.zeros(K * batch_size, self.R, self.W, dtype=sdt, device=mem.device)
        return h, c, mem, reads

    def forward_chunk_stacked(self, P: dict, tokens_BT: torch.Tensor, state):
        """Logits [K, B, Tc, V] of K DNCs whose parameters are stacked on a leading axis of each
        tensor of P (names as in `named_parameters()`), all on the same tokens, and the state after.

        Exactly what K separate `forward_chunk` calls compute, vectorised over K: every
        parameter-dependent projection is a batched matmul over K, the controller recurrence runs
        K*Nh heads at once, and the (parameter-free) memory ops see K folded into the batch."""
        if tokens_BT.dim() != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tuple(tokens_BT.shape)}")
        ctl = self.controller
        Pc = self._controller_params(P)
        K = P["W_iface"].shape[0]
        B, T = tokens_BT.shape
        h, c, mem, reads = state
        Nh, Dh, H, I, R, W = ctl.N, ctl.D, self.H, self.I, self.R, self.W
        if (mem.shape != (K * B, self.N, W) or reads.shape != (K * B, R, W)
                or h.shape[:2] != (K * Nh, B)):
            raise ValueError(f"stacked state does not match K={K} models and batch {B}: memory "
                             f"{tuple(mem.shape)}, reads {tuple(reads.shape)}, h {tuple(h.shape)}; "
                             f"build it with init_state_stacked(P, {B})")
        sdt = mem.dtype
        W_in = Pc["W_in"]                                                   # [K, I + R*W, 4H]
        W_emb, W_read = W_in[:, :I], W_in[:, I:]
        x = Pc["embedding"][:, tokens_BT.reshape(-1)]                       # [K, B*T, I]
        x_emb = torch.bmm(x.to(W_emb.dtype), W_emb).to(sdt).view(K, B, T, 4 * H)
        R_rec = Pc["R"].permute(1, 0, 2, 3, 4).reshape(4, K * Nh, Dh, Dh)
        b_rec = Pc["b"].permute(1, 0, 2, 3).reshape(4, K * Nh, Dh)
        W_if, b_if = P["W_iface"], P["b_iface"].unsqueeze(1)                # [K, H, iface], [K, 1, iface]
        outs = []
        for t in range(T):
            rg = torch.bmm(reads.view(K, B, R * W).to(W_read.dtype), W_read).to(sdt)   # [K, B, 4H]
            xg = (x_emb[:, :, t] + rg).view(K, B, 4, Nh, Dh).permute(0, 3, 1, 2, 4)
            xg = xg.reshape(K * Nh, B, 4, Dh)
            hs, (h, c) = recurrence(xg.unsqueeze(0), R_rec, b_rec, h, c, backend=self.cfg.backend)
            h_KBH = hs[0].view(K, Nh, B, Dh).permute(0, 2, 1, 3).reshape(K, B, H)
            xi = torch.baddbmm(b_if, h_KBH.to(W_if.dtype), W_if).to(sdt)              # [K, B, iface]
            reads, mem = self.memory_step_from_interface(xi.view(K * B, -1), mem)
            outs.append(torch.cat([h_KBH.to(sdt), reads.view(K, B, R * W)], dim=-1))
        W_out, b_out = Pc["W_out"], Pc["b_out"]
        if not outs:
            return x_emb.new_zeros((K, B, 0, W_out.shape[-1]), dtype=W_out.dtype), (h, c, mem, reads)
        out = torch.stack(outs, dim=2).reshape(K, B * T, H + R * W)
        logits = torch.baddbmm(b_out.unsqueeze(1), out.to(W_out.dtype), W_out)
        return logits.view(K, B, T, -1), (h, c, mem, reads)

    def forward(self, tokens_BT: torch.Tensor, state=None, *, time_chunk: int = 0):
        """Logits for the whole sequence (chunked internally when time_chunk > 0)."""
        if not isinstance(time_chunk, int) or time_chunk < 0:
            raise ValueError(f"time_chunk must be an integer >= 0 (0 = whole sequence), got {time_chunk!r}")
        if tokens_BT.dim() != 2:
            raise ValueError(f"tokens must be [batch, time], got shape {tuple(tokens_BT.shape)}")
        if state is None:
            state = self.init_state(tokens_BT.shape[0])
        T = tokens_BT.shape[1]
        step = time_chunk if time_chunk > 0 else max(T, 1)
        outs = []
        for t0 in range(0, T, step):
            lg, state = self.forward_chunk(tokens_BT[:, t0:t0 + step], state)
            outs.append(lg)
        if not outs:
            V = self.cfg.vocab_size
            return tokens_BT.new_zeros((tokens_BT.shape[0], 0, V), dtype=self.controller.W_out.dtype), state
        return torch.cat(outs, dim=1), state
