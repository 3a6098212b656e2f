"""The fused LSTM backends: Triton kernels for the recurrence, heads zero-padded for tensor cores.

Backend `fused` (the chunk forward of the LSTM model, `forward_chunk_stacked_fused`): per time step
ONE kernel (models/_lstm_step_triton.py) for all heads of all K stacked probe models:

    pre = h_prev @ W_rec + G[token]      recurrent GEMM on tensor cores, fp32 accumulation; the input
                                         projection and bias come from a per-token table G = emb @ W_in + b
    c, h = lstm_cell(pre, c)             the cell as the GEMM's epilogue: pre never leaves registers

Per pass (`prepare_fused`, once for all chunks): the table G [K, V, N, 4*Dk], the padded recurrent
weight [K*N, Dk, 4*Dk] and the padded output weight. After each chunk: one batched GEMM for the
output projection into aligned (padded) logits, which `loss_chunk_stacked_fused` scores in place
with one kernel (models/logits_ce.py). Launch configs come from models/step_tuning.json (measured
per GPU and shape by bench/step_kernel_sweep.py; ZO_STEP_TUNING points elsewhere), else a heuristic.
The cell's activations use the hardware tanh where the state is bf16/fp16 (ZO_FAST_ACT, see
models/_lstm_cell_triton.py).

Backend `fused_bmm` (kept for comparison) and the bare recurrence (`recurrence_fused`, used with
precomputed input gates, e.g. by the DNC controller): one cuBLAS batched GEMM plus one Triton cell
kernel per step.

Padded heads: head size D is padded to Dk (fused: a multiple of the kernel's tiles; bmm: of 8). The
padding is zero in the recurrent weight, the input gates, the bias and the initial state, so every
padded unit sees pre-activation 0 on every gate and keeps c = 0.5*c + 0.5*tanh(0) = 0 and
h = 0.5*tanh(0) = 0 exactly: the model is still the paper's model and the padding never appears among
the parameters (nothing to perturb or update).

Triton is imported lazily; `available()` says whether these backends can run here (a CUDA device
with Triton, or the Triton interpreter with TRITON_INTERPRET=1 on CPU tensors for tests; the
interpreter computes bf16 wrongly, so CPU tests use fp32).
"""
from __future__ import annotations

import json
import os
import sys

import torch

_KERNEL = None


def interpreted() -> bool:
    """Whether Triton runs in interpreter mode (TRITON_INTERPRET=1: kernels on CPU tensors, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "yes", "on")


def available() -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False, "triton is not installed (pip install triton)"
    if not (torch.cuda.is_available() or interpreted()):
        return False, "no CUDA device (the fused backend needs a GPU, or TRITON_INTERPRET=1 for tests)"
    return True, ""


FAST_ACTIVATIONS = ("auto", "true", "false")


def set_fast_activations(mode: str) -> None:
    """The CLIs' --fast_activations: 'auto' (the hardware tanh where the LSTM state is bf16/fp16, the
    exact form for fp32), 'true' (always) or 'false' (never, the exact exp form). Sets ZO_FAST_ACT,
    which the kernels read when they are first imported; raises if they were imported under another
    setting (call it before the first fused forward)."""
    if mode not in FAST_ACTIVATIONS:
        raise ValueError(f"fast activations {mode!r}: choose one of {FAST_ACTIVATIONS}")
    os.environ["ZO_FAST_ACT"] = {"auto": "auto", "true": "1", "false": "0"}[mode]
    import sys
    cell = sys.modules.get("models._lstm_cell_triton")
    if cell is not None and cell._fast_act_mode() != cell.FAST_ACT.value:
        raise RuntimeError(f"--fast_activations {mode}: the LSTM kernels were already compiled with another "
                           "setting in this process; choose it before the first fused forward")


def _kernel():
    global _KERNEL
    if _KERNEL is None:
        from models._lstm_cell_triton import lstm_cell_kernel
        _KERNEL = lstm_cell_kernel
    return _KERNEL


def lstm_cell_(pre_NB4D: torch.Tensor, c_NBD: torch.Tensor, h_out_NBD: torch.Tensor, *, block: int = 1024) -> None:
    """In place: c <- f*c + i*z, h_out <- o*tanh(c), gates read from pre [N, B, 4*Dp] (i, f, z, o blocks)."""
    import triton
    total = c_NBD.numel()
    Dp = c_NBD.shape[-1]
    assert pre_NB4D.is_contiguous() and c_NBD.is_contiguous() and h_out_NBD.is_contiguous()
    assert c_NBD.dtype == torch.float32 and pre_NB4D.numel() == 4 * total
    grid = (triton.cdiv(total, block),)
    _kernel()[grid](pre_NB4D, c_NBD, h_out_NBD, total, Dp, BLOCK=block, num_warps=4)


def padded_size(D: int, pad_to: int) -> int:
    return -(-D // pad_to) * pad_to


def recurrence_fused(xg_TNB4D, R_4NDD, b_4ND, h_NBD, c_NBD, *, pad_to: int = 8):
    """Same contract as lstm_backends.recurrence_torch; hs comes back in the weight dtype."""
    T, N, B, G, D = xg_TNB4D.shape
    Dp = padded_size(D, pad_to)
    dt = R_4NDD.dtype
    dev = R_4NDD.device
    Rp = torch.zeros(N, Dp, G, Dp, dtype=dt, device=dev)
    Rp[:, :D, :, :D] = R_4NDD.permute(1, 2, 0, 3)
    Rp = Rp.view(N, Dp, G * Dp)
    # Input gates plus bias in the GEMM's C layout [T, N, B, 4*Dp]: one copy and one in-place add in
    # the weight dtype (no fp32 temporaries of the chunk's size).
    bias = b_4ND.permute(1, 0, 2).unsqueeze(1).unsqueeze(0).to(dt)   # [1, N, 1, 4, D]
    if Dp == D:
        xgb = torch.empty(T, N, B, G, D, dtype=dt, device=dev)
        xgb.copy_(xg_TNB4D)
        xgb.add_(bias)
    else:
        xgb = torch.zeros(T, N, B, G, Dp, dtype=dt, device=dev)
        xgb[..., :D].copy_(xg_TNB4D)
        xgb[..., :D].add_(bias)
    xgb = xgb.view(T, N, B, G * Dp)
    c = torch.zeros(N, B, Dp, dtype=torch.float32, device=dev)
    c[..., :D] = c_NBD
    hs = torch.empty(T, N, B, Dp, dtype=dt, device=dev)
    h = torch.zeros(N, B, Dp, dtype=dt, device=dev)
    h[..., :D] = h_NBD
    for t in range(T):
        pre = torch.baddbmm(xgb[t], h, Rp)
        lstm_cell_(pre, c, hs[t])
        h = hs[t]
    hs_out = hs[..., :D] if Dp != D else hs
    return hs_out, (h[..., :D].float(), c[..., :D].contiguous())


def _cell_out(pre, bias, c, h_view, hs_t, *, B: int, N: int, hs_k_stride: int, block: int = 1024) -> None:
    import triton
    from models._lstm_cell_triton import lstm_cell_out_kernel
    total = c.numel()
    Dp = c.shape[-1]
    assert pre.is_contiguous() and c.is_contiguous() and bias.is_contiguous() and c.dtype == torch.float32
    assert h_view.stride(-1) == 1
    h_stride = h_view.stride(1)
    assert h_view.stride(0) == B * h_stride, "h rows must be evenly strided"
    grid = (triton.cdiv(total, block),)
    lstm_cell_out_kernel[grid](pre, bias, c, h_view, hs_t, total, Dp, B, N, h_stride, hs_k_stride,
                               BLOCK=block, num_warps=4)


# ---------------------------------------------------------------------------------------------
# Backend `fused`: the recurrent GEMM with the cell as its epilogue (models/_lstm_step_triton.py)

_MAX_BD = 64


def step_tiles(D: int) -> tuple[int, int, int]:
    """(Dk, BD, BK) for head size D: the padded head size Dk and the unit / reduction tile sizes.

    BD is the largest of 64, 32, 16 whose padding stays within 10% of the minimal (multiple of 16)
    padding; BK is the largest of 64, 32, 16 dividing Dk. E.g. D=20 -> 32, D=300 -> 320, D=850 -> 896."""
    dk_min = -(-D // 16) * 16
    for bd in (_MAX_BD, 32, 16):
        dk = -(-D // bd) * bd
        if dk <= 1.1 * dk_min or bd == 16:
            break
    bk = next(x for x in (64, 32, 16) if dk % x == 0)
    return dk, bd, bk


_TUNING: dict | None = None
_TUNING_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "step_tuning.json")


def step1_tables_run(*, D: int, B: int, V: int, device) -> bool:
    """Whether a chunk of B rows that starts from the broadcast initial state runs its steps 0 and 1
    through tables over the V tokens here: `first_gemv` and `step1_table` in this GPU's step config for
    head size D (per-step kernels, not a whole-chunk form), and V <= B. What `LSTMModel.batch_row_order`
    asks before it sorts the rows for those tables' gathers (elsewhere sorting buys nothing)."""
    if V > B:
        return False
    Dk, BD, _ = step_tiles(D)
    cfg = default_step_config(B, BD, Dk=Dk, device=device)
    return bool(cfg.get("first_gemv") and cfg.get("step1_table")
                and not (cfg.get("seq") or cfg.get("split") or cfg.get("persist")))


def tuning_key(gpu: str, Dk: int, B: int, heads: int) -> str:
    """Key of a measured best config (bench/step_kernel_sweep.py): GPU name, padded head size, batch class."""
    del heads  # the measured best depends little on the number of heads at these sizes
    return f"{gpu}|Dk={Dk}|B{'>=256' if B >= 256 else '<256'}"


def _tuning() -> dict:
    """Measured best configs: ZO_STEP_TUNING (a json file) if set, else models/step_tuning.json."""
    global _TUNING
    if _TUNING is None:
        path = os.environ.get("ZO_STEP_TUNING") or _TUNING_FILE
        try:
            with open(path) as f:
                _TUNING = json.load(f)
        except FileNotFoundError:
            _TUNING = {}
        except (OSError, ValueError) as e:
            raise ValueError(f"step tuning file {path} is unreadable ({e}); fix or delete it, or unset ZO_STEP_TUNING")
    return _TUNING


SEQ_MAX_DK = 64  # heads up to this padded size run a whole chunk per launch (lstm_seq_kernel)
TUNING_NOTES = ("ms", "fast_act")  # tuning-entry keys that record the measurement, not launch options
# tuning-entry keys measured end to end (bench/bench_step.py A/B runs), read by models.auto_models_per_pass
# and models.auto_time_chunk: the pass shape, not a kernel launch option
PASS_KEYS = ("models_per_pass", "time_chunk")
# tuning-entry keys of the chunk's first steps (`_recurrence_chunk`), measured end to end
# (bench/bench_first_steps.py, bench_step.py): the kernel sweep keeps them when it replaces an entry
CHUNK_KEYS = ("first_gemv", "step1_table", "step1_rows")


def pass_tuning(*, Dk: int, B: int, heads: int = 0, device=None) -> dict:
    """The measured pass shape of this GPU and padded head size ({"models_per_pass", "time_chunk"}, either
    may be absent), or {} where none was measured. The callers keep their memory bounds on top."""
    if device is None or torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return {}
    hit = _tuning().get(tuning_key(torch.cuda.get_device_name(device), Dk, B, heads)) or {}
    return {k: hit[k] for k in PASS_KEYS if isinstance(hit.get(k), int) and hit[k] > 0}


def default_seq_config(Dk: int, B: int) -> dict | None:
    """Launch config of the whole-chunk kernel for padded head size Dk, or None where it does not
    apply (larger heads: their weight and state no longer fit one program's registers)."""
    if Dk > SEQ_MAX_DK or Dk & (Dk - 1):
        return None
    return {"BM": min(64, max(16, 1 << (max(B, 1) - 1).bit_length())), "num_warps": 4}


def default_step_config(B: int, BD: int, *, Dk: int = 0, heads: int = 0, device=None) -> dict:
    """Kernel launch config: the measured best for this GPU and shape when there is one, else a
    heuristic (128-row tiles, 8 warps when the tile is large). Key "seq": the whole-chunk kernel's
    config ({"BM", "num_warps"[, "prefetch"]}), or None for one step kernel per time step; key
    "split" (measured entries only): a cuBLAS GEMM plus the cell kernel per step instead; key
    "persist" ({"BM", "BD", "num_warps", "num_stages"[, "BK"]}, measured entries only): the whole chunk
    in one launch with the state in L2 (`lstm_persist_kernel`); keys "persistent", "warp_specialize",
    "occupancy": the per-step kernel as a persistent kernel; "wres", "row_tiles": the weight-resident
    per-step kernel; "tma_epi": the TMA kernel's descriptor epilogue; "ws" (with "coop", "stage_out",
    "consumer_regs", "a_reg", "pingpong", "loader", "tma_out"): the warp-specialised Gluon kernel (`lstm_step_`;
    absent means False);
    "first_gemv": a chunk that starts from a state broadcast over the batch runs its step 0 as one
    matrix-vector product per head (`lstm_first_step_`) instead of the step kernel; "step1_table"
    (with "first_gemv"): steps 0 and 1 through tables over the vocabulary (`lstm_first_steps_table_`),
    where the vocabulary has at most B tokens; "step1_rows": the batch rows of a program of its step-1
    cell (default 32).
    A caller's step config is applied on top of this, so it inherits the entry's other keys.
    Keys TUNING_NOTES ("ms", "fast_act": what the sweep measured) are records, and PASS_KEYS the pass
    shape (`pass_tuning`), not launch options."""
    if device is not None and torch.device(device).type == "cuda":
        key = tuning_key(torch.cuda.get_device_name(device), Dk, B, heads)
        hit = _tuning().get(key)
        ok, why = ws_available(device) if hit and hit.get("ws") else (True, "")
        if hit and not ok:
            _warn_once(f"[lstm fused] WARNING: the tuning entry {key!r} asks for the warp-specialised Gluon step "
                       f"kernel, which cannot run here ({why}); using the heuristic step config instead (slower). "
                       f"Install a triton with Gluon, or re-run bench/step_kernel_sweep.py on this machine.")
        elif hit:
            hit = {k: v for k, v in hit.items() if k not in TUNING_NOTES and k not in PASS_KEYS}
            hit.setdefault("seq", default_seq_config(Dk, B))
            return hit
    bm = 128 if B > 64 else max(16, 1 << (max(B, 1) - 1).bit_length())
    return {"BD": BD, "BM": bm, "one_dot": False, "num_warps": 8 if bm * BD >= 8192 else 4, "num_stages": 3,
            "tma": False, "persistent": False, "seq": default_seq_config(Dk, B)}


_WARNED: set = set()


def _warn_once(msg: str) -> None:
    """Print a fallback warning to stderr, once per distinct message."""
    if msg not in _WARNED:
        _WARNED.add(msg)
        print(msg, file=sys.stderr, flush=True)


WS_KEYS = ("consumer_regs", "a_reg", "coop", "stage_out", "pingpong", "loader", "tma_out")  # the warp-specialised kernel's only


COOP_FORM_KEYS = ("coop", "prefetch", "stage_out", "a_reg")     # options of the warp-specialised kernel's
                                                                # cooperative / alternate-tile form


def merge_step_config(entry: dict, user: dict | None) -> dict:
    """A caller's step config on top of the tuning entry (it inherits the entry's other keys), except
    that `ws: False` in the caller's config also drops the entry's warp-specialised-only options,
    `step1_table: False` or `first_gemv: False` the entry's `step1_rows` (an option of the tables), and
    any of COOP_FORM_KEYS set true (without `pingpong`) the entry's `pingpong`, `loader` and `tma_out`
    (those options belong to the other form of the warp-specialised kernel); `pingpong: False` also drops
    the entry's `loader` and `tma_out`, and `loader: False` its `consumer_regs` (sized for the loader's
    warp)."""
    user = user or {}
    no_tables = user.get("step1_table") is False or user.get("first_gemv") is False
    other_form = "pingpong" not in user and any(user.get(k) for k in COOP_FORM_KEYS)
    no_pp = other_form or user.get("pingpong") is False
    base = {k: v for k, v in entry.items()
            if not (user.get("ws") is False and k in WS_KEYS) and not (no_tables and k == "step1_rows")
            and not (no_pp and k in ("pingpong", "loader", "tma_out"))
            and not ((no_pp or user.get("loader") is False) and entry.get("loader") and k == "consumer_regs")}
    return {**base, **user}


def tile_recurrent_weight(R, *, N: int, Dk: int, BD: int, kernel: bool | None = None):
    """R [K, 4, N, D, D] -> W [K*N, Dk, 4*Dk] in the kernel's tile-interleaved layout
    [K*N, Dk, Dk/BD, 4, BD] (the four gates of each tile of BD units side by side), zero-padded.
    Runs once per pass (the probes change R), so every element of W is written exactly once: one
    strided copy for all whole unit tiles, one for the last partial tile, zeros only where W pads
    (rows D..Dk, the partial tile's tail, tiles past D). No temporary of W's size exists.
    kernel (default: on CUDA, and in the interpreter for tests, when BD is a power of two): one
    Triton launch (`tile_weight_kernel`) instead, which reads each gate row as one contiguous run;
    the torch copy's permuted source ran at a third of the copy bandwidth (bench/bench_prepare.py)."""
    K, _, _, D, _ = R.shape
    J = Dk // BD
    if kernel is None:
        kernel = (R.is_cuda or interpreted()) and R.is_contiguous() and BD & (BD - 1) == 0 and available()[0]
    if kernel:
        if not R.is_contiguous() or BD & (BD - 1):
            raise ValueError(f"tile_weight_kernel needs a contiguous R and a power-of-two BD (got BD {BD}, "
                             f"contiguous {R.is_contiguous()}); pass kernel=False for the torch tiling")
        import triton
        from models._lstm_step_triton import tile_weight_kernel
        W = torch.empty(K * N, Dk, 4 * Dk, dtype=R.dtype, device=R.device)
        rows = 16
        tile_weight_kernel[(triton.cdiv(Dk, rows), J, K * N)](R, W, N, D, Dk, J, ROWS=rows, BD=BD, num_warps=4)
        return W
    full = D // BD                                                         # unit tiles without padding
    W = torch.empty(K, N, Dk, J, 4, BD, dtype=R.dtype, device=R.device)
    Rp = R.permute(0, 2, 3, 1, 4)                                          # [K, N, Din, 4, Dout]
    if full:
        W[:, :, :D, :full] = Rp[..., :full * BD].unflatten(-1, (full, BD)).transpose(3, 4)
    used = -(-D // BD)                                                     # tiles holding any unit
    if used > full:                                                        # the partial last tile
        w = D - full * BD
        W[:, :, :D, full, :, :w] = Rp[..., full * BD:]
        W[:, :, :D, full, :, w:] = 0
    if J > used:                                                           # tiles of padding only
        W[:, :, :D, used:] = 0
    if Dk > D:
        W[:, :, D:] = 0
    return W.view(K * N, Dk, 4 * Dk)


_NUM_SMS: dict[int, int] = {}
OFF_GPU_SMS = 4  # "SMs" off CUDA (the interpreter): small, so tests run several tiles per persistent program


def num_sms(device) -> int:
    """Streaming multiprocessors of `device` (cached per device), OFF_GPU_SMS off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return OFF_GPU_SMS
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _NUM_SMS:
        _NUM_SMS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _NUM_SMS[idx]


def lstm_step_(h_in, h_out, w, g, tok, t: int, c_in, c_out, *, K: int, N: int, Dk: int, BD: int, BK: int,
               D: int = 0, BM: int = 128, one_dot: bool = False, num_warps: int = 8, num_stages: int = 3,
               tma: bool = False, persistent: bool = False, warp_specialize: bool = False,
               occupancy: int = 1, prefetch: bool = False, wres: bool = False, row_tiles: int = 0,
               tma_epi: bool = False, ws: bool = False, consumer_regs: int = 240, a_reg: bool = False,
               coop: bool = False, stage_out: bool = False, pingpong: bool = False, loader: bool = False,
               tma_out: bool = False):
    """One step for K*N heads: h_out <- cell(h_in @ W + G[token]), c_out <- new c (see the kernels).
    Returns the launched kernel (its n_regs / n_spills tell the sweep what a config compiled to).

    h_in / h_out: [K, B, N, Dk] (views allowed: rows of N*Dk; h_in may broadcast over B, stride 0);
    w [K*N, Dk, 4*Dk] tile-interleaved for this BD (`tile_recurrent_weight`); g [K, V, N, 4*Dk];
    tok [B, *] int64; c_in [K*N, B, Dk] fp32 (may broadcast over B); c_out [K*N, B, Dk] fp32
    contiguous (may be c_in). tma: read h and W through tensor descriptors (one-dot form); a
    broadcast h_in takes the pointer kernel. persistent: `lstm_step_persistent_kernel` (always the
    one-dot form), SMs x occupancy programs looping over the tiles; warp_specialize asks the compiler
    to warp-specialize its tile loop. prefetch: issue the cell's loads of G[token] and c before the
    GEMM (per-step and TMA kernels), so their latency overlaps it. wres: `lstm_step_wres_kernel`, a
    program keeps its weight tile in shared memory for `row_tiles` row tiles of BM rows (0: all of them;
    needs Dk / BK <= 8). tma_epi (with tma): c loaded, c and h stored through tensor descriptors too
    (needs a c_in that does not broadcast). ws: the warp-specialised Gluon kernel
    (models/_lstm_step_gluon.py: Hopper, bf16, BM 64, num_stages shared-memory stages per consumer,
    consumer_regs registers per consumer thread, a_reg: h through registers; prefetch: the cell's G[token]
    and c copied (cp.async) into shared memory during the GEMM; stage_out (with prefetch): c and h
    stored back through those buffers in 16-byte pieces; coop: both consumers share each weight
    tile, a tile of 2*BM rows, instead of taking alternate tiles; one_dot: one wgmma of 4*BD columns a
    k-step instead of four of BD; it has its own loads, so tma does not apply to it; pingpong (with
    one_dot, BD 16 or 32): `lstm_step_pp_kernel`, a program holds a unit tile's weights in shared memory
    for every row tile and its two consumers take alternate row tiles, one's GEMM beside the other's
    cell; num_stages is then the depth of its one ring of h tiles; loader: a fourth partition, one
    warp, copies the cell's inputs for both consumers, consumer_regs <= 224; tma_out: c and h stored by
    TMA from the consumers' staging buffers). D: the heads' real size (0: Dk);
    the ping-pong kernel then skips the last k-step's columns past D rounded up to 16, which are
    padding (zero in h and in W), so the result is the same bit for bit; where c is updated in place
    (c_in is c_out), the ping-pong kernel neither reads nor writes its padding units (zero, as the
    model keeps them)."""
    import triton
    from models import _lstm_step_triton as kern
    B = c_out.shape[1]
    V = g.shape[1]
    for h in (h_in, h_out):
        assert h.shape == (K, B, N, Dk) and h.stride(-1) == 1 and h.stride(-2) == Dk
    assert h_out.stride(-3) == N * Dk and h_in.stride(-3) in (0, N * Dk)
    assert c_in.shape == c_out.shape and c_in.stride(-1) == 1 and c_in.stride(1) in (0, Dk)
    assert w.is_contiguous() and g.is_contiguous() and c_out.is_contiguous()
    assert Dk % BD == 0 and Dk % BK == 0 and c_in.dtype == torch.float32 and c_out.dtype == torch.float32
    grid = (Dk // BD, triton.cdiv(B, BM), K * N)
    ieee = w.dtype == torch.float32
    if ws:
        if persistent or wres or tma_epi:
            raise ValueError("step config asks for `ws` together with `persistent`, `wres` or `tma_epi`: the "
                             "warp-specialised kernel is its own form; drop one of them")
        return _lstm_step_ws(h_in, h_out, w, g, tok, t, c_in, c_out, K=K, N=N, Dk=Dk, BD=BD, BK=BK, BM=BM, D=D,
                             stages=num_stages, consumer_regs=consumer_regs, a_reg=a_reg, prefetch=prefetch,
                             coop=coop, one_dot=one_dot, stage_out=stage_out, pingpong=pingpong, loader=loader,
                             tma_out=tma_out)
    if coop or stage_out or a_reg or pingpong or loader or tma_out or consumer_regs != 240:
        raise ValueError("step config `coop`, `stage_out`, `a_reg`, `pingpong`, `loader`, `tma_out` and "
                         "`consumer_regs` belong to the warp-specialised kernel; add `ws` or drop them")
    if wres:
        if persistent or tma:
            raise ValueError("step config asks for `wres` together with `persistent` or `tma`: the weight-resident "
                             "kernel is its own form (pointer loads, one launch per step); drop one of them")
        if Dk // BK > kern.WRES_MAX_CHUNKS:
            raise ValueError(f"step config `wres` at Dk {Dk} needs BK >= {-(-Dk // kern.WRES_MAX_CHUNKS)} (it holds at most "
                             f"{kern.WRES_MAX_CHUNKS} weight chunks of BK rows); got BK {BK}")
        m_tiles = triton.cdiv(B, BM)
        if not isinstance(row_tiles, int) or row_tiles < 0:
            raise ValueError(f"step config `row_tiles` must be an int >= 0 (0: all row tiles), got {row_tiles!r}")
        per = row_tiles if row_tiles else m_tiles
        return kern.lstm_step_wres_kernel[(Dk // BD, triton.cdiv(m_tiles, per), K * N)](
            h_in, h_out, w, g, tok, c_in, c_out, B, N, V, tok.stride(0), t, h_in.stride(0), h_in.stride(1),
            h_out.stride(0), N * Dk, c_in.stride(0), c_in.stride(1), per, Dk=Dk, BM=BM, BD=BD, BK=BK, IEEE=ieee,
            PREFETCH=bool(prefetch), num_warps=num_warps, num_stages=num_stages)
    if persistent:
        if prefetch:
            raise ValueError("step config asks for both `persistent` and `prefetch`: the persistent kernel "
                             "overlaps the next tile's loads instead; drop one of them")
        if tma:
            raise ValueError("step config asks for both `persistent` and `tma`: the persistent kernel reads "
                             "through pointers; drop one of them")
        if not isinstance(occupancy, int) or occupancy < 1:
            raise ValueError(f"step config `occupancy` must be a positive int (programs per SM), got {occupancy!r}")
        programs = min(grid[0] * grid[1] * grid[2], num_sms(c_out.device) * occupancy)
        return kern.lstm_step_persistent_kernel[(programs,)](
            h_in, h_out, w, g, tok, c_in, c_out, B, N, V, tok.stride(0), t, h_in.stride(0), h_in.stride(1),
            h_out.stride(0), N * Dk, c_in.stride(0), c_in.stride(1), K * N, Dk=Dk, BM=BM, BD=BD, BK=BK, IEEE=ieee,
            NUM_PROGRAMS=programs, WS=bool(warp_specialize), num_warps=num_warps, num_stages=num_stages)
    if tma_epi and not tma:
        raise ValueError("step config asks for `tma_epi` without `tma`: the descriptor epilogue belongs to the TMA "
                         "kernel; add tma or drop tma_epi")
    if tma and h_in.stride(1) != 0:
        from triton.tools.tensor_descriptor import TensorDescriptor

        def desc(x, shape, strides, block):
            v = torch.as_strided(x, shape, strides)
            return TensorDescriptor(v, list(v.shape), list(v.stride()), block)
        a_desc = desc(h_in, (K, B, N * Dk), (h_in.stride(0), N * Dk, 1), [1, BM, BK])
        w_desc = desc(w, tuple(w.shape), tuple(w.stride()), [1, BK, 4 * BD])
        h_arg, c_in_arg, c_out_arg = h_out, c_in, c_out
        if tma_epi:
            if c_in.stride(1) == 0:
                raise ValueError("step config `tma_epi` needs a c_in that does not broadcast over the batch "
                                 "(a descriptor needs nonzero strides); write c out in full first")
            h_arg = desc(h_out, (K, B, N * Dk), (h_out.stride(0), N * Dk, 1), [1, BM, BD])
            c_in_arg = desc(c_in, (K * N, B, Dk), (c_in.stride(0), c_in.stride(1), 1), [1, BM, BD])
            c_out_arg = desc(c_out, (K * N, B, Dk), (B * Dk, Dk, 1), [1, BM, BD])
        return kern.lstm_step_tma_kernel[grid](a_desc, w_desc, h_arg, g, tok, c_in_arg, c_out_arg, B, N, V,
                                               tok.stride(0), t, h_out.stride(0), N * Dk, c_in.stride(0),
                                               c_in.stride(1), Dk=Dk, BM=BM, BD=BD, BK=BK, IEEE=ieee,
                                               PREFETCH=bool(prefetch), TMA_EPI=bool(tma_epi),
                                               num_warps=num_warps, num_stages=num_stages)
    return kern.lstm_step_kernel[grid](h_in, h_out, w, g, tok, c_in, c_out, B, N, V, tok.stride(0), t,
                                       h_in.stride(0), h_in.stride(1), h_out.stride(0), N * Dk, c_in.stride(0),
                                       c_in.stride(1), Dk=Dk, BM=BM, BD=BD, BK=BK, ONE_DOT=one_dot or tma, IEEE=ieee,
                                       PREFETCH=bool(prefetch), num_warps=num_warps, num_stages=num_stages)


def ws_available(device) -> tuple[bool, str]:
    """Whether the warp-specialised Gluon step kernel can run on `device` (and why not). Asked once
    per step launch, so the answer is kept per device (and per interpreter setting)."""
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    key = (str(dev), interpreted())
    hit = _WS_AVAILABLE.get(key)
    if hit is None:
        hit = _WS_AVAILABLE[key] = _ws_available(dev)
    return hit


_WS_AVAILABLE: dict = {}


def _ws_available(dev: torch.device) -> tuple[bool, str]:
    if interpreted() or dev.type != "cuda":
        return False, "the warp-specialised kernel needs a CUDA device (Gluon has no interpreter)"
    cap = torch.cuda.get_device_capability(dev)
    if cap[0] != 9:
        return False, f"the warp-specialised kernel is written for Hopper (sm_90); this GPU is sm_{cap[0]}{cap[1]}"
    try:
        import triton.experimental.gluon  # noqa: F401
    except ImportError as e:
        return False, f"this triton has no Gluon ({e}); triton >= 3.6 has it"
    return True, ""


def lstm_first_step_(h0, c0, h_out, c_out, w, g, tok, t: int, *, K: int, N: int, Dk: int, BD: int, BB: int = 64,
                     cell_BD: int | None = None) -> None:
    """Step t from a state shared by every batch row (the model's learned h0, c0 broadcast over B):
    h_out [K, B, N, Dk] (rows of N*Dk) and c_out [K*N, B, Dk] fp32 written in full, from h0 [K, N, Dk],
    c0 [K*N, Dk] fp32, W tile-interleaved for BD and the input table g. The recurrent term is the
    same for every row, so it is one fp32 matrix-vector product per head (`first_step_gemv_kernel`)
    instead of the step kernel's GEMM over B rows, and no broadcast state is written out first.
    The sum runs in another order than the step kernel's, so h and c differ from it by rounding.
    BB, cell_BD (default: W's BD): the rows and units of a program of the cell (bench/first_steps_variants.py
    times other launches; the values do not depend on them)."""
    import triton
    from models import _lstm_step_triton as kern
    B, V = c_out.shape[1], g.shape[1]
    cbd = cell_BD or BD
    if Dk % cbd or cbd & (cbd - 1) or BB & (BB - 1):
        raise ValueError(f"lstm_first_step_: cell_BD {cbd} must be a power of two dividing Dk {Dk}, "
                         f"BB {BB} a power of two")
    assert h0.shape == (K, N, Dk) and c0.shape == (K * N, Dk) and c_out.is_contiguous()
    assert h_out.shape == (K, B, N, Dk) and h_out.stride(-1) == 1 and h_out.stride(-2) == Dk and h_out.stride(-3) == N * Dk
    u = torch.empty(K * N, 4 * Dk, dtype=torch.float32, device=c_out.device)
    # 512 columns a program, no software pipelining: 0.198 against 0.278 ms (128 columns) at large
    # (bench/results/logs/first_steps_launch_2026-11-29.log)
    kern.first_step_gemv_kernel[(triton.cdiv(4 * Dk, 512), K * N)](h0.contiguous(), w, u, Dk=Dk, BC=512, BJ=64,
                                                                     num_warps=4, num_stages=1)
    kern.first_step_cell_kernel[(triton.cdiv(B, BB), Dk // cbd, K * N)](u, g, tok, c0.contiguous(), c_out, h_out, B, N,
                                                                        V, tok.stride(0), t, h_out.stride(0), Dk=Dk,
                                                                        BD=cbd, BB=BB, BDW=BD, num_warps=4)


STEP1_SUB_ROWS = 8      # rows of a sub-tile of step 1's table cell (`first_steps_cell_`)


def lstm_first_steps_table_(h0, c0, hs, c_out, w, g, tok, *, K: int, N: int, Dk: int, BD: int, BB: int = 32,
                            num_warps: int = 4, copy_h1: bool = True, cell_BD: int | None = None,
                            sub_rows: int = STEP1_SUB_ROWS) -> None:
    """Steps 0 and 1 from a state shared by every batch row, through tables over the vocabulary.
    After step 0 a row's state depends only on its step-0 token, so it takes V values per head, not
    B (`first_steps_tables`); step 1's cell then gathers them per row (`first_steps_cell_`). Pays
    where V is well below B (the paper's shapes: V = 100, B = 1024): `_recurrence_chunk` uses it only
    for V <= B. hs [K, T >= 2, B, N, Dk] (steps 0 and 1 written; step 0 only if copy_h1), c_out
    [K*N, B, Dk] fp32 (c after step 1), the rest as in `lstm_first_step_`. Step 0's h equals
    `lstm_first_step_`'s; step 1's recurrent sum is a different GEMM's (equal to the step kernel's on
    the H200, bench/bench_first_steps.py, but not promised: it may differ by rounding)."""
    tables = first_steps_tables(h0, c0, w, g, K=K, N=N, Dk=Dk, BD=BD, dtype=hs.dtype)
    first_steps_cell_(tables, hs, c_out, g, tok, K=K, N=N, Dk=Dk, BD=BD, BB=BB, num_warps=num_warps, copy_h1=copy_h1,
                      cell_BD=cell_BD, sub_rows=sub_rows)


def first_steps_tables(h0, c0, w, g, *, K: int, N: int, Dk: int, BD: int, dtype):
    """(h1 [K, V, N, Dk] in dtype, c1 [K*N, V, Dk] fp32, u [K*N, V, 4*Dk] fp32): the state after step 0
    for every token v, (h1, c1)[v] = cell(h0 @ W + G[v], c0) (`lstm_first_step_` over V rows, one per
    token), and step 1's recurrent term u[v] = h1[v] @ W summed in fp32 (`token_table_gemm_kernel`: a
    V-row GEMM instead of the step kernel's B-row one; up to 128 tokens in one row block, so W is read
    once). u's columns are W's, tile-interleaved for BD."""
    import triton
    from models import _lstm_step_triton as kern
    V, dev = g.shape[1], g.device
    vocab = torch.arange(V, device=dev).view(V, 1)
    h1 = torch.empty(K, V, N, Dk, dtype=dtype, device=dev)
    c1 = torch.empty(K * N, V, Dk, dtype=torch.float32, device=dev)
    lstm_first_step_(h0, c0, h1, c1, w, g, vocab, 0, K=K, N=N, Dk=Dk, BD=BD)
    u = torch.empty(K * N, V, 4 * Dk, dtype=torch.float32, device=dev)
    BV = min(128, max(16, triton.next_power_of_2(V)))
    # 4 warps and 4 stages: 0.325 against 0.424 ms (8 warps, 3 stages) at large, the same sums
    # (bench/results/logs/first_steps_launch_2026-11-29.log)
    kern.token_table_gemm_kernel[(triton.cdiv(V, BV), triton.cdiv(4 * Dk, 128), K * N)](
        h1, w, u, V, N, Dk=Dk, BV=BV, BC=128, BJ=32, IEEE=w.dtype == torch.float32 or interpreted(),
        num_warps=4, num_stages=4)
    return h1, c1, u


def first_steps_cell_(tables, hs, c_out, g, tok, *, K: int, N: int, Dk: int, BD: int, BB: int = 32,
                      num_warps: int = 4, copy_h1: bool = True, cell_BD: int | None = None,
                      sub_rows: int = STEP1_SUB_ROWS) -> None:
    """Step 1's cell from the tables of `first_steps_tables`, per row with j = tok[b, 0]:
    c2, h2 = cell(u[j] + G[tok[b, 1]], c1[j]) into c_out and hs[:, 1]; h1[j] copied to hs[:, 0] if copy_h1
    (`step1_table_cell_kernel`: BB rows x cell_BD units a program, in sub-tiles of sub_rows rows whose
    gathers run one sub-tile ahead). BB (the step config's `step1_rows`), sub_rows, num_warps:
    BB 32 in sub-tiles of 8 at 4 warps, on rows sorted by their step-0 token (`LSTMModel.batch_row_order`):
    0.78-0.79 against 0.96-1.02 ms a pass at large for the former one-tile programs of 16 rows
    (bench/results/logs/step1_cell_subtiles_2026-11-29_session16.log).
    cell_BD: the units of a program (dividing Dk); BD is W's (and u's) unit tile. By default 64 where
    it divides Dk and BD is smaller: at large (W in tiles of 32 for the ping-pong step kernel) the cell
    took 7.2 ms a step at 32 units against 6.5 at 64 (H200, bench/results/README.md, session 12)."""
    import triton
    from models import _lstm_step_triton as kern
    if cell_BD is None:
        cell_BD = 64 if BD < 64 and Dk % 64 == 0 else BD
    if Dk % cell_BD or cell_BD & (cell_BD - 1):
        raise ValueError(f"first_steps_cell_: cell_BD {cell_BD} must be a power of two dividing Dk {Dk}")
    sub = min(sub_rows, BB)
    if BB & (BB - 1) or sub & (sub - 1) or sub < 1:
        raise ValueError(f"first_steps_cell_: rows a program BB {BB} and sub_rows {sub_rows} must be powers of two")
    h1, c1, u = tables
    B, V = c_out.shape[1], g.shape[1]
    assert hs.dim() == 5 and hs.shape[1] >= 2 and hs.stride(-1) == 1 and hs.stride(-2) == Dk
    assert c_out.is_contiguous() and c_out.shape == (K * N, B, Dk) and tok.shape[1] >= 2
    h_prev, h_out = hs[:, 0], hs[:, 1]
    kern.step1_table_cell_kernel[(triton.cdiv(B, BB), Dk // cell_BD, K * N)](
        u, g, tok, c1, c_out, h_out, h1, h_prev, B, N, V, tok.stride(0), h_out.stride(0), h_prev.stride(0), Dk=Dk,
        BD=cell_BD, RB=BB, BB=sub, BDW=BD, COPY_H1=copy_h1, num_warps=num_warps)


WS_SMEM_LIMIT = 232448      # shared memory a program may opt into on sm_90 (227 KB)


def ws_shared_bytes(*, BD: int, BK: int, BM: int = 64, stages: int, prefetch: bool, coop: bool,
                    pingpong: bool = False, Dk: int = 0) -> int:
    """Shared memory of the warp-specialised kernel: the rings of stages (two consumers' h tiles and one
    weight tile each with coop, else one ring per consumer), the cell's staged inputs, the barriers.
    pingpong: the resident weight tile [Dk, 4*BD], one ring of [BM, BK] h tiles, and per consumer the
    cell's staged inputs (G's four gates, c) and outputs (c, h); the loader's barriers are always there."""
    if pingpong:
        nk = Dk // BK
        cell = 2 * BM * BD * (4 * 2 + 4 + 4 + 2)
        return nk * BK * 4 * BD * 2 + stages * BM * BK * 2 + cell + (2 * stages + 2 * nk + 6) * 16 + 512
    rings = 1 if coop else 2
    ring = stages * (2 * BM * BK * 2 + rings * BK * 4 * BD * 2)
    cell = 2 * (4 * BM * BD * 2 + BM * BD * 4) if prefetch else 0
    return ring + cell + 2 * rings * stages * 8 + 256        # + alignment and the compiler's own


def _ws_runnable(h_in, h_out, w, g, *, N: int, Dk: int) -> None:
    """Refuse, naming the fix, what no form of the warp-specialised kernel can run: no Gluon-capable
    Hopper device, other dtypes than bf16, an h_in a tensor descriptor cannot describe."""
    ok, why = ws_available(h_out.device)
    if not ok:
        raise ValueError(f"step config `ws`: {why}; drop `ws` from the step config")
    if w.dtype != torch.bfloat16 or g.dtype != torch.bfloat16 or h_out.dtype != torch.bfloat16:
        raise ValueError(f"step config `ws` needs bf16 weights, input gates and h (got {w.dtype}, {g.dtype}, "
                         f"{h_out.dtype}); drop `ws` for other dtypes")
    if h_in.stride(1) == 0 or h_in.stride(0) % (N * Dk):
        raise ValueError("step config `ws` reads h through a tensor descriptor: h_in must not broadcast over the "
                         "batch and its model stride must be whole rows; write h out in full first")


def _lstm_step_ws(h_in, h_out, w, g, tok, t, c_in, c_out, *, K, N, Dk, BD, BK, BM, stages, consumer_regs, D=0,
                  a_reg=False, prefetch=False, coop=False, one_dot=False, stage_out=False, pingpong=False,
                  loader=False, tma_out=False):
    """`lstm_step_` with the warp-specialised Gluon kernel (models/_lstm_step_gluon.py)."""
    if not isinstance(consumer_regs, int) or consumer_regs % 8 or not 24 <= consumer_regs <= 240:
        raise ValueError(f"step config `consumer_regs` must be a multiple of 8 in 24..240 (two consumer warpgroups "
                         f"and the producer share 168 registers a thread at launch); got {consumer_regs!r}")
    if pingpong:
        return _lstm_step_pp(h_in, h_out, w, g, tok, t, c_in, c_out, K=K, N=N, Dk=Dk, BD=BD, BK=BK, BM=BM, D=D,
                             stages=stages, consumer_regs=consumer_regs, a_reg=a_reg, prefetch=prefetch, coop=coop,
                             one_dot=one_dot, stage_out=stage_out, loader=loader, tma_out=tma_out)
    if loader or tma_out:
        raise ValueError(f"step config `{'loader' if loader else 'tma_out'}` is an option of the ping-pong form: add "
                         f"pingpong or drop it")
    if stage_out and not prefetch:
        raise ValueError("step config `stage_out` stores c and h through the buffers `prefetch` stages the cell's "
                         "inputs in; add prefetch or drop stage_out")
    if one_dot and 4 * BD > 256:
        raise ValueError(f"step config `ws` with `one_dot` needs BD <= 64 (one wgmma of 4*BD <= 256 columns); got "
                         f"BD {BD}: lower BD or set one_dot False")
    if BM != 64 or BD % 8 or BD > 256 or Dk % BD or Dk % BK or BK % 16:
        raise ValueError(f"step config `ws` needs BM 64, BD a multiple of 8 dividing Dk and BK a multiple of 16 "
                         f"dividing Dk (got BM {BM}, BD {BD}, BK {BK}, Dk {Dk})")
    smem = ws_shared_bytes(BD=BD, BK=BK, BM=BM, stages=stages, prefetch=prefetch, coop=coop)
    if smem > WS_SMEM_LIMIT:
        raise ValueError(f"step config `ws` needs {smem} bytes of shared memory at BK {BK}, {stages} stages"
                         f"{' with prefetch' if prefetch else ''}, over the {WS_SMEM_LIMIT} a program may have; "
                         f"lower num_stages or BK")
    _ws_runnable(h_in, h_out, w, g, N=N, Dk=Dk)
    from models import _lstm_step_gluon as kern
    B, V = c_out.shape[1], g.shape[1]
    a_desc, w_desc, rows_per_k, num_tiles, num_m = ws_launch_geometry(h_in, w, K=K, N=N, Dk=Dk, B=B, BM=BM, BK=BK,
                                                                      BD=BD, one_dot=one_dot, coop=coop)
    programs = min(num_tiles, num_sms(c_out.device))
    return kern.lstm_step_ws_kernel[(programs,)](
        a_desc, w_desc, h_out, g, tok, c_in, c_out, B, N, V, tok.stride(0), t, h_out.stride(0), N * Dk,
        c_in.stride(0), c_in.stride(1), num_tiles, num_m, rows_per_k, Dk=Dk, BM=BM, BD=BD, BK=BK, STAGES=stages,
        NUM_PROGRAMS=programs, CONSUMER_REGS=consumer_regs, A_REG=bool(a_reg), PREFETCH=bool(prefetch),
        COOP=bool(coop), ONE_DOT=bool(one_dot), STAGE_OUT=bool(stage_out), num_warps=4, maxnreg=168)


def pp_k_last(D: int, Dk: int, BK: int) -> int:
    """Columns of the last k-step (of BK) the ping-pong kernel multiplies for heads of D units padded to
    Dk: D rounded up to 16 (a wgmma's K), less the k-steps before; BK where D is 0 (unknown) or the
    padding leaves no whole 16 columns of the last k-step."""
    used = -(-D // 16) * 16 - (Dk // BK - 1) * BK
    return used if D and 0 < used < BK else BK


# registers a thread at the ping-pong kernel's launch (12 warps, 3 warpgroups): the consumers' two
# warpgroups take consumer_regs each, the producer's warpgroup (with the loader's warp) the rest
PP_LAUNCH_REGS = 168
PP_LOADER_MIN_REGS = 56


def _lstm_step_pp(h_in, h_out, w, g, tok, t, c_in, c_out, *, K, N, Dk, BD, BK, BM, stages, consumer_regs, a_reg,
                  prefetch, coop, one_dot, stage_out, D=0, loader=False, tma_out=False):
    """`lstm_step_` with the weight-resident ping-pong Gluon kernel (`lstm_step_pp_kernel`; consumer_regs
    checked by `_lstm_step_ws`)."""
    given = [k for k, v in (("a_reg", a_reg), ("prefetch", prefetch), ("coop", coop), ("stage_out", stage_out)) if v]
    if given:
        raise ValueError(f"step config `pingpong` has its own weight and cell-input handling; drop {', '.join(given)} "
                         f"(or drop pingpong)")
    if not one_dot:
        raise ValueError("step config `pingpong` runs one wgmma of 4*BD columns a k-step: set one_dot True")
    if BM != 64 or BD not in (16, 32) or Dk % BD or Dk % BK or BK % 16:
        raise ValueError(f"step config `pingpong` needs BM 64, BD 16 or 32 dividing Dk (the accumulator and the "
                         f"cell's inputs live in registers) and BK a multiple of 16 dividing Dk (got BM {BM}, BD {BD}, "
                         f"BK {BK}, Dk {Dk})")
    smem = ws_shared_bytes(BD=BD, BK=BK, BM=BM, stages=stages, prefetch=False, coop=False, pingpong=True, Dk=Dk)
    if smem > WS_SMEM_LIMIT:
        raise ValueError(f"step config `pingpong` needs {smem} bytes of shared memory (the weight tile [{Dk}, {4 * BD}] "
                         f"and {stages} stages of [{BM}, {BK}]), over the {WS_SMEM_LIMIT} a program may have; lower "
                         f"num_stages or BD")
    B, V = c_out.shape[1], g.shape[1]
    # the kernel's per-thread offsets within a tile are int32 (its tile bases int64): a row's offset in h,
    # (B - 1) * N * Dk, and in the tokens, (B - 1) * tok.stride(0), must stay below 2^31
    if max(B * N * Dk, B * tok.stride(0)) >= 2 ** 31:
        raise ValueError(f"step config `pingpong` addresses rows with 32-bit offsets, and B {B} x N*Dk {N * Dk} (or x "
                         f"the token stride {tok.stride(0)}) reaches 2^31: drop pingpong (the other warp-specialised "
                         f"form uses 64-bit offsets) or split the batch (micro_batch)")
    loader_regs = (3 * PP_LAUNCH_REGS - 2 * consumer_regs) // 8 * 8
    if loader and loader_regs < PP_LOADER_MIN_REGS:
        raise ValueError(f"step config `loader` needs {PP_LOADER_MIN_REGS} registers a thread for its warp, and "
                         f"consumer_regs {consumer_regs} leaves {loader_regs}: set consumer_regs <= "
                         f"{(3 * PP_LAUNCH_REGS - PP_LOADER_MIN_REGS) // 16 * 8}")
    _ws_runnable(h_in, h_out, w, g, N=N, Dk=Dk)
    from models import _lstm_step_gluon as kern
    a_desc, w_desc, rows_per_k, _, num_m = ws_launch_geometry(h_in, w, K=K, N=N, Dk=Dk, B=B, BM=BM, BK=BK, BD=BD,
                                                              one_dot=True, coop=False)
    # c updated in place (every step after a chunk's first): its padding units (zero, and they stay zero)
    # are neither read nor written; D rounded up to 4 keeps the 16-byte copies and stores whole
    in_place = c_in.data_ptr() == c_out.data_ptr() and c_in.stride() == c_out.stride()
    d4 = -(-D // 4) * 4
    c_units = d4 if in_place and 0 < d4 < Dk else 0
    num_units = K * N * (Dk // BD)
    programs = min(num_units, num_sms(c_out.device))
    h_desc = c_desc = None
    if tma_out:     # c and h stored by TMA: descriptors over [K, B, N*Dk] (h) and [K*N, B, units] (c)
        if h_out.data_ptr() % 16 or c_out.data_ptr() % 16 or h_out.stride(0) % 8:
            raise ValueError("step config `tma_out` stores h and c through tensor descriptors, which need 16-byte "
                             "aligned bases and model strides of h; drop tma_out for these tensors")
        from triton.experimental.gluon import language as gl
        from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

        def desc(x, shape, strides):
            return TensorDescriptor(torch.as_strided(x, shape, strides), list(shape), list(strides), [1, BM, BD],
                                    gl.NVMMASharedLayout.get_default_for([1, BM, BD], {
                                        torch.bfloat16: gl.bfloat16, torch.float32: gl.float32}[x.dtype]))
        h_desc = desc(h_out, (K, B, N * Dk), (h_out.stride(0), N * Dk, 1))
        c_desc = desc(c_out, (K * N, B, c_units or Dk), (B * Dk, Dk, 1))
    return kern.lstm_step_pp_kernel[(programs,)](
        a_desc, w_desc, h_out, g, tok, c_in, c_out, B, V, tok.stride(0), t, h_out.stride(0), N * Dk,
        c_in.stride(0), c_in.stride(1), num_units, rows_per_k, h_desc, c_desc, Dk=Dk, BM=BM, BD=BD, BK=BK,
        STAGES=stages, NUM_PROGRAMS=programs, CONSUMER_REGS=consumer_regs, N=N, NUM_M=num_m,
        K_LAST=pp_k_last(D, Dk, BK), C_UNITS=c_units, LOADER=bool(loader), LOADER_REGS=min(loader_regs, 256),
        TMA_OUT=bool(tma_out), num_warps=4, maxnreg=PP_LAUNCH_REGS)


def ws_launch_geometry(h_in, w, *, K: int, N: int, Dk: int, B: int, BM: int, BK: int, BD: int, one_dot: bool,
                       coop: bool):
    """The warp-specialised kernel's tensor descriptors and tile counts: (a_desc over h_in's rows
    [K rows_per_k + B, N*Dk] in [BM, BK] blocks, w_desc over W [K*N*Dk, 4*Dk] in [BK, 4*BD] blocks with
    one_dot, else [BK, BD]; rows_per_k, num_tiles, num_m (row tiles of 2*BM with coop, else BM))."""
    import triton
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    rows_per_k = h_in.stride(0) // (N * Dk)
    rows = (K - 1) * rows_per_k + B
    a_view = torch.as_strided(h_in, (rows, N * Dk), (N * Dk, 1))
    a_desc = TensorDescriptor(a_view, [rows, N * Dk], [N * Dk, 1], [BM, BK],
                              gl.NVMMASharedLayout.get_default_for([BM, BK], gl.bfloat16))
    w2 = w.view(K * N * Dk, 4 * Dk)
    wb = [BK, 4 * BD if one_dot else BD]
    w_desc = TensorDescriptor(w2, list(w2.shape), list(w2.stride()), wb, gl.NVMMASharedLayout.get_default_for(wb, gl.bfloat16))
    num_m = triton.cdiv(B, 2 * BM if coop else BM)
    return a_desc, w_desc, rows_per_k, K * N * num_m * (Dk // BD), num_m


def _chunk_kernel_args(h_in, hs, w, g, tok, c_in, c_out, *, K: int, N: int, Dk: int):
    """Checks of a whole-chunk launch's tensors; (B, T, V, interpreting)."""
    B, T, V = c_out.shape[1], hs.shape[1], g.shape[1]
    assert hs.shape == (K, T, B, N, Dk) and hs.is_contiguous() and tok.shape[1] >= T and tok.stride(1) == 1
    assert h_in.shape == (K, B, N, Dk) and h_in.stride(-1) == 1 and h_in.stride(-2) == Dk
    assert c_in.stride(-1) == 1 and c_in.stride(1) in (0, Dk) and c_out.is_contiguous()
    assert w.is_contiguous() and g.is_contiguous() and c_out.dtype == torch.float32
    return B, T, V, interpreted()


def lstm_seq_(h_in, hs, w, g, tok, c_in, c_out, *, K: int, N: int, Dk: int, BM: int = 64,
              num_warps: int = 4, prefetch: bool = False) -> None:
    """All steps of a chunk for K*N small heads in one launch (`lstm_seq_kernel`):
    hs[:, t] <- h_t and c_out <- c_T, from h_in, c_in, the tokens tok [B, T] and the input table g.

    h_in [K, B, N, Dk] (may broadcast over B); hs [K, T, B, N, Dk] contiguous; w [K*N, Dk, 4*Dk]
    tiled with BD = Dk; c_in as in `lstm_step_`; c_out [K*N, B, Dk] fp32 contiguous (may be c_in)."""
    import triton
    from models import _lstm_step_triton as kern
    assert Dk <= SEQ_MAX_DK and Dk & (Dk - 1) == 0, "lstm_seq_kernel needs a power-of-two head of at most 64"
    B, T, V, interp = _chunk_kernel_args(h_in, hs, w, g, tok, c_in, c_out, K=K, N=N, Dk=Dk)
    grid = (triton.cdiv(B, BM), K * N)
    kern.lstm_seq_kernel[grid](h_in, hs, w, g, tok, c_in, c_out, B, N, V, T, tok.stride(0), h_in.stride(0),
                               h_in.stride(1), hs.stride(0), hs.stride(1), c_in.stride(0), c_in.stride(1),
                               Dk=Dk, BM=BM, T_LOOP=T if interp else -1, IEEE=w.dtype == torch.float32,
                               PREFETCH=prefetch, num_warps=num_warps)


def lstm_persist_(h_in, hs, w, g, tok, c_in, c_out, *, K: int, N: int, Dk: int, BD: int, BK: int, BM: int = 64,
                  num_warps: int = 8, num_stages: int = 3) -> None:
    """All steps of a chunk in one launch for heads of any size (`lstm_persist_kernel`): the state
    stays with one program per (head, row tile) and in L2 across the steps. Same inputs and outputs
    as `lstm_seq_`; w tiled for BD."""
    import triton
    from models import _lstm_step_triton as kern
    assert Dk % BD == 0 and Dk % BK == 0
    B, T, V, interp = _chunk_kernel_args(h_in, hs, w, g, tok, c_in, c_out, K=K, N=N, Dk=Dk)
    grid = (triton.cdiv(B, BM), K * N)
    kern.lstm_persist_kernel[grid](h_in, hs, w, g, tok, c_in, c_out, B, N, V, T, tok.stride(0), h_in.stride(0),
                                   h_in.stride(1), hs.stride(0), hs.stride(1), c_in.stride(0), c_in.stride(1),
                                   Dk=Dk, BM=BM, BD=BD, BK=BK, T_LOOP=T if interp else -1,
                                   IEEE=w.dtype == torch.float32, num_warps=num_warps, num_stages=num_stages)


def recurrence_split_(h_in, hs, w, g, tok, c_in, c_out, *, K: int, N: int, Dk: int, block: int = 1024) -> None:
    """The `split` form of a chunk's recurrence: per step one cuBLAS batched GEMM h @ W for all K*N
    heads, then `lstm_cell_gather_kernel` (input gates by token, the cell, h out twice). Same inputs
    and outputs as `lstm_seq_`; w is W in its natural layout [K*N, Dk, 4*Dk] (tiled with BD = Dk).
    The pre-activations round to the weight dtype between the GEMM and the cell (the fused kernel
    keeps them in fp32 registers)."""
    import triton
    from models._lstm_cell_triton import lstm_cell_gather_kernel
    B = c_out.shape[1]
    T = hs.shape[1]
    V = g.shape[1]
    KN = K * N
    assert hs.shape == (K, T, B, N, Dk) and hs.is_contiguous() and w.shape == (KN, Dk, 4 * Dk)
    assert c_out.is_contiguous() and c_out.dtype == torch.float32 and g.is_contiguous()
    A = torch.empty(KN, B, Dk, dtype=hs.dtype, device=hs.device)
    A.view(K, N, B, Dk).copy_(h_in.permute(0, 2, 1, 3))
    if c_out.data_ptr() != c_in.data_ptr():
        c_out.copy_(c_in)
    pre = torch.empty(KN, B, 4 * Dk, dtype=w.dtype, device=w.device)
    total = KN * B * Dk
    grid = (triton.cdiv(total, block),)
    for t in range(T):
        torch.bmm(A, w, out=pre)
        lstm_cell_gather_kernel[grid](pre, g, tok, c_out, A, hs[:, t], total, B, N, V, tok.stride(0), t,
                                      hs.stride(0), Dk=Dk, BLOCK=block, num_warps=4)


# `input_table_kernel`'s tile: all of a 100-token vocabulary and the whole input width in one program
# (bench/bench_prepare.py --table_tiles, H200 2026-11-29: large 0.168 against 0.345 ms for 64:64:32 at 4
# warps, xlarge 0.370 against 0.702, medium 0.203 against 0.356), 8 column blocks a program on one
# load of e, 4 warps (session 16: large, K = 4, 0.26 against 0.29-0.33 ms for one block and 8 warps;
# medium, K = 12, 0.17 against 0.19-0.21; xlarge not timed apart;
# bench/results/logs/step1_cell_subtiles_2026-11-29_session16.log)
INPUT_TABLE_TILE = {"BV": 128, "BU": 64, "BI": 128, "CPB": 8, "num_warps": 4, "num_stages": 1}


def _input_table(emb, W_in, b, *, N: int, D: int, Dk: int, kernel: bool | None = None,
                 table_cols_first: bool | None = None, tile: dict | None = None):
    """G [K, V, N, 4*Dk] (weight dtype) = emb @ W_in + b per token, in the padded gate layout.

    The input of the LSTM is an embedded token, so its input projection takes only V distinct values
    per model: computing them once per pass replaces the [B, T, I] x [I, 4H] GEMM by a lookup. The
    products and the bias are summed in fp32 and rounded once (as the unfused input GEMM does).
    kernel (default: on CUDA, and in the interpreter for tests): one Triton launch
    (`input_table_kernel`) that writes each value straight into the padded layout; else one batched
    GEMM and one strided copy into that layout (the copy and the bias broadcast cost twice the GEMM at
    the large preset). table_cols_first (tests): the kernel's column blocks on the grid's first axis,
    which it takes by itself past 65535 of them. tile (bench/bench_prepare.py): the kernel's BV, BU,
    BI, CPB, num_warps, num_stages, over INPUT_TABLE_TILE."""
    K, V, I = emb.shape
    G = torch.empty(K, V, N, 4, Dk, dtype=W_in.dtype, device=emb.device)
    if kernel is None:
        kernel = (emb.is_cuda or interpreted()) and available()[0]
    if kernel:                                  # writes every element of G, the padding units too
        import triton
        from models._lstm_step_triton import input_table_kernel
        e = emb.to(W_in.dtype).contiguous()
        bb = b.reshape(K, -1).to(W_in.dtype).contiguous()
        cfg = {**INPUT_TABLE_TILE, **(tile or {})}
        BV, BU = cfg.pop("BV"), cfg.pop("BU")
        rows, cols = triton.cdiv(V, BV), triton.cdiv(4 * N * triton.cdiv(Dk, BU), cfg.get("CPB", 1))
        first = cols > 65535 or bool(table_cols_first)             # a grid's second axis stops at 65535
        input_table_kernel[(cols, rows, K) if first else (rows, cols, K)](
            e, W_in.contiguous(), bb, G, V, N, D, Dk, I=I, BV=BV, BU=BU,
            IEEE=W_in.dtype == torch.float32 or interpreted(), COLS_FIRST=first, **cfg)
        return G.view(K, V, N, 4 * Dk)
    x = torch.baddbmm(b.reshape(K, 1, -1).to(W_in.dtype), emb.to(W_in.dtype), W_in)    # [K, V, 4*N*D]
    if Dk > D:
        G[..., D:] = 0
    G[..., :D] = x.view(K, V, 4, N, D).transpose(2, 3)
    return G.view(K, V, N, 4 * Dk)


def _chunk_input_gates(P: dict, tokens_BT: torch.Tensor, *, N: int, D: int, Dk: int):
    """Large vocabularies: the input gates of this chunk's tokens, [K, B*T, N, 4*Dk] (row b*T + t),
    and the row index [B, T] the kernel looks them up by (its table then has B*T rows: the table of
    `_input_table` built over the chunk's embedded tokens instead of the vocabulary)."""
    B, T = tokens_BT.shape
    x = P["embedding"][:, tokens_BT.reshape(-1)]                            # [K, B*T, I]
    G = _input_table(x, P["W_in"], P["b"], N=N, D=D, Dk=Dk)
    return G, torch.arange(B * T, device=x.device).view(B, T)


def _padded_output_weight(W_out, *, N: int, D: int, Dk: int, Vp: int, kernel: bool | None = None):
    """W_out [K, N*D, V] as [K, N, Dk, Vp], zero in the padding rows and columns. kernel (default: on
    CUDA, and in the interpreter for tests): one Triton launch that writes every element once
    (`pad_output_weight_kernel`); else a zero fill and a strided copy (at the large preset on the H200
    those took 22.6 and 81.7 us a pass, bench/results/logs/profile_step_large64_2026-11-29_session17.md)."""
    K, _, V = W_out.shape
    if kernel is None:
        kernel = (W_out.is_cuda or interpreted()) and available()[0]
    if kernel:
        import triton
        from models._lstm_step_triton import pad_output_weight_kernel
        out = torch.empty(K, N, Dk, Vp, dtype=W_out.dtype, device=W_out.device)
        pad_output_weight_kernel[(triton.cdiv(Dk, 32), K * N)](W_out.contiguous(), out, D, V, Dk, Vp=Vp, BR=32, BV=64)
        return out
    out = torch.zeros(K, N, Dk, Vp, dtype=W_out.dtype, device=W_out.device)
    out[:, :, :D, :V] = W_out.view(K, N, D, V)
    return out


def prepare_fused(P: dict, *, num_heads: int, table_max_bytes: int | None = None) -> dict:
    """P plus the per-pass layouts of the fused forward, built once for all chunks of a pass:
    the input table G = emb @ W_in + b ([K, V, N, 4*Dk], weight dtype) and the padded output weight
    [K, N*Dk, Vp] and bias [K, Vp] (Vp = V rounded up to a multiple of 64: aligned rows for the
    output GEMM, zero in the padding); the tiled recurrent weight is built on the first chunk (its layout depends on the
    launch config) and kept. Valid while P's values are unchanged. When the table would exceed
    `table_max_bytes` (default: the larger of 1 GiB and 4x W_in), it is not built and each chunk
    computes its tokens' input gates instead (same values; memory then grows with the chunk)."""
    W_in, R, b, W_out = P["W_in"], P["R"], P["b"], P["W_out"]
    K = W_in.shape[0]
    N = num_heads
    D = W_in.shape[-1] // (4 * N)
    Dk, BD, BK = step_tiles(D)
    W = {}
    if R.dim() == 6:        # written by the ZO engine in gate tiles (`LSTMModel.stack_layouts`): no tiling
        if tuple(R.shape[:3]) != (K, N, Dk) or R.shape[3] * R.shape[5] != Dk or R.shape[4] != 4:
            raise ValueError(f"the recurrent weight in gate tiles has shape {tuple(R.shape)}; this model wants "
                             f"[{K}, {N}, {Dk}, {Dk} / BD, 4, BD]")
        W[R.shape[-1]] = R.view(K * N, Dk, 4 * Dk)
        R = None
    V = W_out.shape[-1]
    dev = W_in.device
    Vin = P["embedding"].shape[1]
    table_bytes = K * Vin * N * 4 * Dk * W_in.element_size()
    limit = table_max_bytes if table_max_bytes is not None else max(1 << 30, 4 * W_in.numel() * W_in.element_size())
    # a vocabulary much larger than the input width would make the table far larger than W_in itself
    # (a 50k vocabulary at hidden 131072: ~50 GB): then the input gates are computed per chunk
    G = _input_table(P["embedding"], W_in, b, N=N, D=D, Dk=Dk) if table_bytes <= limit else None
    Vp = -(-V // 64) * 64
    Wout = _padded_output_weight(W_out, N=N, D=D, Dk=Dk, Vp=Vp)
    bout = torch.zeros(K, 1, Vp, dtype=P["b_out"].dtype, device=dev)
    bout[:, 0, :V] = P["b_out"]
    out = dict(P)
    out["_fused"] = {"G": G, "W": W, "R": R, "Wout": Wout.view(K, N * Dk, Vp), "bout": bout, "V": V,
                     "K": K, "N": N, "D": D, "Dk": Dk, "BD": BD, "BK": BK}
    return out


def weight_tile_BD(cfg: dict, *, Dk: int, BD: int) -> int:
    """The unit tile of the recurrent weight's gate tiles that a chunk under step config `cfg` (merged,
    see `merge_step_config`) reads: Dk for the whole-chunk and split kernels, the persistent kernel's BD,
    else the config's BD (default: step_tiles')."""
    seq = cfg.get("seq")
    split = cfg.get("split", False) and not seq
    persist = cfg.get("persist") if not (seq or split) else None
    return Dk if (seq or split) else (persist or {}).get("BD", cfg.get("BD", BD))


def stack_gate_tiles_BD(*, B: int, K: int, N: int, D: int, device) -> int:
    """The unit tile `_recurrence_chunk` will tile the recurrent weight by for K stacked models of N heads
    of D units over B batch rows on `device`, with the default step config (the stacked forward's)."""
    Dk, BD, _ = step_tiles(D)
    return weight_tile_BD(merge_step_config(default_step_config(B, BD, Dk=Dk, heads=K * N, device=device), None),
                          Dk=Dk, BD=BD)


def _recurrence_chunk(P: dict, tokens_BT: torch.Tensor, state, *, num_heads: int, step_config=None,
                      all_steps: bool = True):
    """The recurrence of `forward_chunk_stacked_fused`: (P with its per-pass layouts, hidden states
    hs [K, Tc, B, N, Dk] in the weight dtype, c [K*N, B, Dk] fp32 after the chunk). all_steps False:
    only the last step's h is needed (`step1_table` then leaves step 0's h unwritten)."""
    if "_fused" not in P:
        P = prepare_fused(P, num_heads=num_heads)
    f = P["_fused"]
    G, Wout, K, N, D, Dk, BD, BK = (f[k] for k in ("G", "Wout", "K", "N", "D", "Dk", "BD", "BK"))
    B, T = tokens_BT.shape
    dt, dev = Wout.dtype, Wout.device
    h0, c0 = state
    B_ = h0.shape[-3] if h0.dim() == 4 else h0.shape[1]
    if B_ != B or h0.shape[-1] not in (D, Dk) or c0.shape[-1] not in (D, Dk):
        raise ValueError(f"state of shape {tuple(h0.shape)} / {tuple(c0.shape)} does not fit a batch of {B} "
                         f"rows with head size {D} (padded {Dk})")
    if h0.dim() == 4 and h0.dtype == dt and h0.stride(-1) == 1 and h0.stride(-2) == Dk and h0.stride(-3) == N * Dk:
        h_in = h0                                               # a previous chunk's state: no copy
    elif h0.stride(1) == 0:                                     # [K*N, B, D] broadcast over B (init_state)
        h_in = torch.zeros(K, 1, N, Dk, dtype=dt, device=dev)
        h_in[..., :h0.shape[-1]] = h0[:, :1].reshape(K, 1, N, -1)
        h_in = h_in.expand(K, B, N, Dk)
    else:                                                       # [K*N, B, D]: pad once
        h_in = torch.zeros(K, B, N, Dk, dtype=dt, device=dev)
        h_in[..., :h0.shape[-1]] = h0.reshape(K, N, B, -1).transpose(1, 2)
    if c0.shape[-1] == Dk and c0.dtype == torch.float32 and c0.is_contiguous():
        c_in = c = c0                                           # a previous chunk's state: updated in place
    else:
        if c0.stride(1) == 0:
            c_in = torch.zeros(K * N, 1, Dk, dtype=torch.float32, device=dev)
            c_in[..., :c0.shape[-1]] = c0[:, :1]
            c_in = c_in.expand(K * N, B, Dk)
        else:
            c_in = torch.zeros(K * N, B, Dk, dtype=torch.float32, device=dev)
            c_in[..., :c0.shape[-1]] = c0
        c = torch.empty(K * N, B, Dk, dtype=torch.float32, device=dev)
    hs = torch.empty(K, T, B, N, Dk, dtype=dt, device=dev)
    tok = tokens_BT if tokens_BT.dtype == torch.int64 else tokens_BT.long()
    if G is None:                                               # large vocabulary: gates per chunk
        G, tok = _chunk_input_gates(P, tok, N=N, D=D, Dk=Dk)
    cfg = merge_step_config(default_step_config(B, BD, Dk=Dk, heads=K * N, device=dev), step_config)
    bd = weight_tile_BD(cfg, Dk=Dk, BD=BD)
    seq = cfg.pop("seq", None)
    split = cfg.pop("split", False) and not seq
    persist = cfg.pop("persist", None) if not (seq or split) else None
    cfg.pop("BD", None)
    bk = cfg.pop("BK", BK)
    first_gemv = cfg.pop("first_gemv", False)
    step1_table = cfg.pop("step1_table", False)
    if "step1_rows" in cfg and not step1_table:
        raise ValueError("step config `step1_rows` sets the rows a program of the step-1 table cell (`step1_table`); "
                         "add step1_table (with first_gemv) or drop step1_rows")
    step1_rows = cfg.pop("step1_rows", 32)
    if not isinstance(step1_rows, int) or step1_rows < 16 or step1_rows > 128 or step1_rows & (step1_rows - 1):
        raise ValueError(f"step config `step1_rows` (batch rows a program of the step-1 table cell) must be a power "
                         f"of two in 16..128; got {step1_rows!r}")
    if step1_table and not first_gemv:
        raise ValueError("step config `step1_table` extends `first_gemv` (steps 0 and 1 from a broadcast state "
                         "through tables over the vocabulary): add first_gemv: true, or drop step1_table")
    if first_gemv and (seq or split or persist):
        raise ValueError("step config `first_gemv` belongs to the per-step kernels; this config runs the chunk as "
                         f"{'seq' if seq else 'split' if split else 'persist'}: drop first_gemv or that key")
    if bd not in f["W"]:
        if f["R"] is None:
            raise ValueError(f"the recurrent weight arrived in gate tiles of {next(iter(f['W']))} units (the "
                             f"layout `LSTMModel.stack_layouts` declared), but this chunk's step config tiles it "
                             f"by {bd}: declare the layout for the batch rows and models a forward really runs "
                             f"(train.evaluate.stack_layouts_fn), or pass no layouts")
        f["W"].clear()                                          # one tiled copy at a time
        f["W"][bd] = tile_recurrent_weight(f["R"], N=N, Dk=Dk, BD=bd)
    W = f["W"][bd]
    if seq:                                                     # small heads: the whole chunk in one launch
        lstm_seq_(h_in, hs, W, G, tok, c_in, c, K=K, N=N, Dk=Dk, **seq)
    elif split:                                                 # cuBLAS GEMM + cell, where measured faster
        recurrence_split_(h_in, hs, W, G, tok, c_in, c, K=K, N=N, Dk=Dk)
    elif persist:                                               # the whole chunk per launch, state in L2
        pcfg = {k_: v for k_, v in persist.items() if k_ not in ("BD", "BK")}
        lstm_persist_(h_in, hs, W, G, tok, c_in, c, K=K, N=N, Dk=Dk, BD=bd, BK=persist.get("BK", bk), **pcfg)
    else:
        # A broadcast initial state (stride 0 over B) is written out in full first: the step kernel
        # ran 2.5x slower on a broadcast h (3.54 against 1.26 ms at large, 2.17 against 0.89 ms at
        # medium; H200, 2026-11-28), and only a full h can go through a tensor descriptor (TMA).
        # hs[:, T-1] serves as the buffer: no step reads it before step T-1 writes it.
        t0 = 0
        if first_gemv and h_in.stride(1) == 0 and c_in.stride(1) == 0 and T >= 1:
            if step1_table and T >= 2 and G.shape[1] <= B:
                # steps 0 and 1 through tables over step 0's token (V rows instead of B)
                lstm_first_steps_table_(h_in[:, 0], c_in[:, 0], hs, c, W, G, tok, K=K, N=N, Dk=Dk, BD=bd,
                                        BB=step1_rows, copy_h1=all_steps)
                h_in, c_in, t0 = hs[:, 1], c, 2
            else:
                # every row starts from the same state: step 0's recurrent term is one h0 @ W per head
                lstm_first_step_(h_in[:, 0], c_in[:, 0], hs[:, 0], c, W, G, tok, 0, K=K, N=N, Dk=Dk, BD=bd)
                h_in, c_in, t0 = hs[:, 0], c, 1
        if h_in.stride(1) == 0:
            full = hs[:, T - 1] if T >= 2 else torch.empty(K, B, N, Dk, dtype=dt, device=dev)
            full.copy_(h_in)
            h_in = full
        if c_in.stride(1) == 0:
            c.copy_(c_in)
            c_in = c                                            # updated in place from here
        for t in range(t0, T):
            lstm_step_(h_in if t == t0 else hs[:, t - 1], hs[:, t], W, G, tok, t, c_in if t == t0 else c, c,
                       K=K, N=N, Dk=Dk, BD=bd, BK=bk, D=D, **cfg)
    return P, hs, c


def forward_chunk_stacked_fused(P: dict, tokens_BT: torch.Tensor, state, *, num_heads: int, step_config=None):
    """Backend `fused`: logits [K, B, Tc, V] of K stacked LSTMs (parameters on a leading axis of each
    tensor of P), all on the same tokens; one kernel per time step for all K*N heads.

    P may come from `prepare_fused` (layouts built once per pass) or be the raw parameters (built
    here). Per step: `lstm_step_kernel` (GEMM + cell; `lstm_step_persistent_kernel` where the step
    config says `persistent`). After the chunk: one batched GEMM for the output projection of all its
    steps (`loss_chunk_stacked_fused` scores them in one more kernel). Hidden states live in
    hs [K, Tc, B, N, Dk], so the working set grows with the chunk, never with T; states pass between
    chunks without copies.

    state: (h, c) as [K*N, B, D] (e.g. init_state_stacked; a view broadcast over B costs no copy),
    or as returned by a previous chunk: h [K, B, N, Dk] in the weight dtype (a view of that chunk's
    hs) and c [K*N, B, Dk] fp32, both zero-padded. Returns (logits, (h, c)) in the latter form.
    A returned state is meant for the next chunk: that chunk updates its c in place."""
    P, logits, state = _chunk_logits(P, tokens_BT, state, num_heads=num_heads, step_config=step_config)
    B, T = tokens_BT.shape
    return logits.view(logits.shape[0], T, B, -1).transpose(1, 2), state


def _chunk_logits(P: dict, tokens_BT: torch.Tensor, state, *, num_heads: int, step_config=None, skip_steps: int = 0):
    """(P, logits [K, (Tc - skip_steps)*B, V] (rows (t, b) from step skip_steps; a view of the padded
    [.., Vp] GEMM output), state). The first skip_steps steps get no logits (no target there is scored)."""
    P, hs, c = _recurrence_chunk(P, tokens_BT, state, num_heads=num_heads, step_config=step_config,
                                 all_steps=skip_steps == 0)
    K, T, B = hs.shape[:3]
    if not 0 <= skip_steps < T:
        raise ValueError(f"skip_steps must be in [0, {T}) for a chunk of {T} steps (a chunk with no scored step only "
                         f"advances the state: advance_chunk_stacked_fused); got {skip_steps}")
    f = P["_fused"]
    logits = torch.baddbmm(f["bout"], hs[:, skip_steps:].reshape(K, (T - skip_steps) * B, -1), f["Wout"])
    return P, logits[..., :f["V"]], (hs[:, T - 1], c)


def advance_chunk_stacked_fused(P: dict, tokens_BT: torch.Tensor, state, *, num_heads: int, step_config=None):
    """The state after this chunk, as `forward_chunk_stacked_fused` returns it, without the chunk's
    output projection (a chunk with no scored target)."""
    P, hs, c = _recurrence_chunk(P, tokens_BT, state, num_heads=num_heads, step_config=step_config, all_steps=False)
    return hs[:, -1], c


def loss_chunk_stacked_fused(P: dict, tokens_BT: torch.Tensor, targets_BT: torch.Tensor, state, *, num_heads: int,
                             ignore_index: int, step_config=None, skip_steps: int = 0):
    """(cross-entropy sums over the chunk's scored targets per row tile, fp32 [K, tiles] (their row
    sums are the chunk's sums), state) of K stacked LSTMs: the recurrence and output GEMM of
    `forward_chunk_stacked_fused`, then one kernel that scores the logits where the GEMM left them
    (models/logits_ce.py): no fp32 copy, reordering or log-softmax pass over them. skip_steps: the
    chunk's first steps hold no scored target (the caller's promise): their logits are not computed,
    and step 0's h is not written where `step1_table` runs."""
    from models.logits_ce import ce_tile_sums_stacked
    P, logits, state = _chunk_logits(P, tokens_BT, state, num_heads=num_heads, step_config=step_config,
                                     skip_steps=skip_steps)
    return ce_tile_sums_stacked(logits, targets_BT[:, skip_steps:], ignore_index=ignore_index), state


def forward_chunk_stacked_bmm(P: dict, tokens_BT: torch.Tensor, state, *, num_heads: int, pad_to: int = 8):
    """Backend `fused_bmm`: logits [K, B, Tc, V] of K stacked LSTMs (parameters on a leading axis of each tensor of P).

    Per step and head, one GEMM computes the input and recurrent gates together:
        pre[kn] = [x_t | h[kn]] @ [W_in[kn] ; R[kn]]        A = [K*N, B, Ip+Dp], Wcat = [K*N, Ip+Dp, 4*Dp]
    (I padded to a multiple of 8 and D to a multiple of pad_to, all padding zero)
    so the [B, T, 4H] input projection is never materialised (memory is flat in T and in the
    number of stacked models' gates). The bias is added inside the cell kernel, which writes h
    straight into the next step's A and into hs for the output projection.

    state: (h, c) as [K*N, B, D] (any float dtype; padded [K*N, B, Dp] also accepted);
    returns (logits, (h [K*N, B, Dp] weight dtype, c [K*N, B, Dp] fp32))."""
    W_in, R, b, W_out, b_out = P["W_in"], P["R"], P["b"], P["W_out"], P["b_out"]
    K, I, G4H = W_in.shape
    N = num_heads
    D = R.shape[-1]
    Dp = padded_size(D, pad_to)
    Ip = padded_size(I, 8)              # keeps the GEMM rows 16-byte aligned (sm90 kernels need it)
    V = W_out.shape[-1]
    B, T = tokens_BT.shape
    dt, dev = W_in.dtype, W_in.device
    KN = K * N
    # Per-forward weight layouts (zero padding)
    Wcat = torch.zeros(K, N, Ip + Dp, 4, Dp, dtype=dt, device=dev)
    Wcat[:, :, :I, :, :D] = W_in.view(K, I, 4, N, D).permute(0, 3, 1, 2, 4)
    Wcat[:, :, Ip:Ip + D, :, :D] = R.permute(0, 2, 3, 1, 4)                # [K, N, Din, 4, Dout]
    Wcat = Wcat.view(KN, Ip + Dp, 4 * Dp)
    bias = torch.zeros(K, N, 4, Dp, dtype=torch.float32, device=dev)
    bias[..., :D] = b.permute(0, 2, 1, 3)
    bias = bias.view(KN, 4 * Dp)
    Wout = torch.zeros(K, N, Dp, V, dtype=dt, device=dev)
    Wout[:, :, :D] = W_out.view(K, N, D, V)
    Wout = Wout.view(K, N * Dp, V)
    # State
    h0, c0 = state
    A = torch.empty(KN, B, Ip + Dp, dtype=dt, device=dev)
    A[..., I:] = 0
    A[..., Ip:Ip + h0.shape[-1]] = h0
    c = torch.zeros(KN, B, Dp, dtype=torch.float32, device=dev)
    c[..., :c0.shape[-1]] = c0
    x = P["embedding"][:, tokens_BT]                                        # [K, B, T, I]
    hs = torch.empty(K, T, B, N * Dp, dtype=dt, device=dev)
    A4 = A.view(K, N, B, Ip + Dp)
    h_view = A[..., Ip:]
    for t in range(T):
        A4[..., :I] = x[:, :, t].unsqueeze(1)                               # x_t to every head of its model
        pre = torch.bmm(A, Wcat)                                            # [KN, B, 4Dp]
        _cell_out(pre, bias, c, h_view, hs[:, t], B=B, N=N, hs_k_stride=T * B * N * Dp)
    logits = torch.baddbmm(b_out.unsqueeze(1), hs.view(K, T * B, N * Dp), Wout)   # [K, T*B, V]
    logits = logits.view(K, T, B, V).transpose(1, 2)
    return logits, (h_view.contiguous(), c)
