"""Model configuration, the paper's size presets, parameter counts and memory estimates.

No tensors are allocated here: everything is arithmetic on the config, so a run can refuse a
model that will not fit before it builds anything.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from models.lstm_backends import BACKENDS

MODEL_TYPES = ("LSTM", "DNC")

# The paper's LSTM sizes (hidden_size, num_heads); head size is hidden / heads.
SIZE_PRESETS = {
    "tiny": (240, 12),          # 150,740 params at vocab 100, input 100
    "small": (1600, 32),        # 1,139,700
    "medium": (9600, 64),       # 10,627,700
    "large": (66000, 220),      # 112,606,100
    "xlarge": (297500, 350),    # 1,162,045,100
    "xxlarge": (1000000, 1000),
}

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an LSTM or DNC language model over a token vocabulary.

    LSTM: embedding [V, input_size] -> W_in [input_size, 4H] -> head-structured recurrence
    R [4, num_heads, D, D] with bias [4, num_heads, D] (gate order i, f, z, o) -> W_out [H, V], b_out [V];
    learned initial states h0, c0 [H]. H = hidden_size, D = head_size = H / num_heads.

    DNC: an LSTM controller (same parameterisation, with the previous read vectors appended to
    its input) and an external memory of memory_size slots x mem_word_size, read by num_heads
    content-addressed heads. For the DNC, head_size is the memory word size (the paper's naming).
    """
    model_type: str = "LSTM"
    vocab_size: int = 100
    input_size: int = 100
    hidden_size: int = 240
    num_heads: int = 12
    head_size: int = 0           # 0: derived (LSTM: hidden/heads; DNC: equals hidden_size)
    memory_size: int = 0         # DNC slots (0: equals hidden_size)
    controller_heads: int = 1    # DNC: recurrence heads of the controller LSTM
    dtype: str = "float32"
    backend: str = "auto"        # LSTM recurrence backend (models/lstm_backends.py): torch, fused, auto, flashrnn_*

    def __post_init__(self):
        for f in ("vocab_size", "input_size", "hidden_size", "num_heads", "controller_heads"):
            v = getattr(self, f)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{f} must be a positive integer, got {v!r}")
        if self.head_size < 0 or self.memory_size < 0:
            raise ValueError(f"head_size and memory_size must be >= 0 (0 = derived), got "
                             f"{self.head_size}, {self.memory_size}")
        if self.model_type not in MODEL_TYPES:
            raise ValueError(f"unknown model_type {self.model_type!r}; choose one of {MODEL_TYPES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown LSTM backend {self.backend!r}; choose one of {BACKENDS}")
        if self.dtype not in _DTYPE_BYTES:
            raise ValueError(f"unknown dtype {self.dtype!r}; choose one of {tuple(_DTYPE_BYTES)}")
        if self.model_type == "LSTM":
            if self.hidden_size % self.num_heads:
                raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}; "
                                 f"pick num_heads among the divisors of hidden_size or change hidden_size")
            if self.head_size and self.head_size * self.num_heads != self.hidden_size:
                raise ValueError(f"head_size {self.head_size} x num_heads {self.num_heads} != hidden_size "
                                 f"{self.hidden_size}; pass head_size 0 to derive it")
        else:
            if self.hidden_size % self.controller_heads:
                raise ValueError(f"DNC hidden_size {self.hidden_size} is not divisible by controller_heads "
                                 f"{self.controller_heads}")

    # ------------------------------------------------------------------ derived sizes
    @property
    def lstm_head_size(self) -> int:
        heads = self.num_heads if self.model_type == "LSTM" else self.controller_heads
        return self.hidden_size // heads

    @property
    def lstm_heads(self) -> int:
        return self.num_heads if self.model_type == "LSTM" else self.controller_heads

    @property
    def mem_slots(self) -> int:
        return self.memory_size or self.hidden_size

    @property
    def mem_word(self) -> int:
        return self.head_size or self.hidden_size

    @property
    def dtype_bytes(self) -> int:
        return _DTYPE_BYTES[self.dtype]

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **kw) -> "ModelConfig":
        return replace(self, **kw)


def apply_scale(cfg: ModelConfig, scale: int) -> ModelConfig:
    """The paper's model_scale: multiplies hidden_size, memory_size and head_size.

    The number of heads is kept, so a DNC at scale 8 from the base 128/128/128 with one read head
    is the paper's 1024/1024/1024 one-head model."""
    if not isinstance(scale, int) or scale < 1:
        raise ValueError(f"model_scale must be a positive integer, got {scale!r}")
    if scale == 1:
        return cfg
    return cfg.replace(hidden_size=cfg.hidden_size * scale, memory_size=cfg.memory_size * scale,
                       head_size=cfg.head_size * scale)


def preset(name: str, **overrides) -> ModelConfig:
    if name not in SIZE_PRESETS:
        raise ValueError(f"unknown size preset {name!r}; choose one of {tuple(SIZE_PRESETS)}")
    hidden, heads = SIZE_PRESETS[name]
    return ModelConfig(hidden_size=hidden, num_heads=heads, **overrides)


def lstm_param_count(vocab: int, inp: int, hidden: int, heads: int, extra_in: int = 0, out_in: int | None = None) -> int:
    d = hidden // heads
    out_in = hidden if out_in is None else out_in
    return (vocab * inp + (inp + extra_in) * 4 * hidden + 4 * heads * d * d + 4 * hidden
            + out_in * vocab + vocab + 2 * hidden)


def param_count(cfg: ModelConfig) -> int:
    """Exact number of trainable parameters of the model the config describes."""
    if cfg.model_type == "LSTM":
        return lstm_param_count(cfg.vocab_size, cfg.input_size, cfg.hidden_size, cfg.num_heads)
    R, W, H = cfg.num_heads, cfg.mem_word, cfg.hidden_size
    iface = R * W + R + W + 1 + 2 * W          # read keys+strengths, write key+strength, erase, add
    return (lstm_param_count(cfg.vocab_size, cfg.input_size, H, cfg.controller_heads, extra_in=R * W,
                             out_in=H + R * W)
            + H * iface + iface)


def estimate_memory_bytes(cfg: ModelConfig, *, batch_size: int, time_chunk: int, zo: bool = True,
                          master_bytes: int | None = None, probes_in_flight: int = 1) -> int:
    """Upper estimate of device memory for one run: parameters, optimiser copies and the
    working set of one time chunk of the forward (BPTT: the whole sequence is stored)."""
    P = param_count(cfg)
    b = cfg.dtype_bytes
    master = P * (master_bytes if master_bytes is not None else b)
    params = P * b + (master if zo else 0)
    H, V, I = cfg.hidden_size, cfg.vocab_size, cfg.input_size
    if zo:
        # Inference keeps one step's gates and states plus one chunk of hidden outputs and logits
        # (the fused forward never materialises the [B, T, 4H] input projection).
        per_seq = (4 * H * 2 + H * 4 + (I + H) * 2) + time_chunk * (H * 2 + V * 4)
    else:
        # BPTT stores every step's gates, states and logits for the backward pass.
        per_seq = time_chunk * ((4 * H * 2 + 4 * H + V + H) * max(b, 4))
    if cfg.model_type == "DNC":
        per_seq += time_chunk * cfg.num_heads * cfg.mem_word * 4
    act = probes_in_flight * batch_size * per_seq
    state = probes_in_flight * batch_size * (cfg.mem_slots * cfg.mem_word * 4 if cfg.model_type == "DNC" else 0)
    noise_tmp = min(P, 1 << 22) * 8 * 3          # int64 noise words for one chunk, fp32 noise
    grads = 0 if zo else P * 4 * 3               # BPTT: grads + two Adam moments (upper bound)
    return int(params + act + state + noise_tmp + grads)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"
