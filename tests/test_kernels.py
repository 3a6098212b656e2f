"""Tests of zo/kernels.py (Triton) on CPU through the Triton interpreter (TRITON_INTERPRET=1).

The interpreter is switched on only while these tests run (a module fixture restores the
environment), so GPU tests in the same session still compile their kernels. Everything is skipped
cleanly when triton is not installed. Sizes stay at a few thousand elements: the interpreter runs
each program instance in numpy. Kernels also get compiled for sm_90 (no GPU needed: Triton's own
ptxas) to catch constructs that only the compiler rejects.
"""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from unittest import mock

import pytest
import torch

from zo import noise as zn

HAVE_TRITON = importlib.util.find_spec("triton") is not None
needs_triton = pytest.mark.skipif(not HAVE_TRITON, reason="triton is not installed")

PID = zn.param_id_from_name("lstm.weight_ih_l0")
BLK = 512  # small blocks: several programs and a ragged tail at a few thousand elements


@pytest.fixture(scope="module")
def K():
    """zo.kernels with TRITON_INTERPRET=1 for this module only."""
    if not HAVE_TRITON:
        pytest.skip("triton is not installed")
    old = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        from zo import kernels
        yield kernels
    finally:
        if old is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = old


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def bits(t: torch.Tensor) -> torch.Tensor:
    """Raw bits, so that -0.0 / +0.0 and NaN payloads count."""
    return t.view({torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}[t.dtype])


def engine_direction(seed, n, dist="rademacher", rate=0.0, mask=None):
    """The engine's `_direction` recipe (ZOEngine._direction) on CPU."""
    z = zn.noise_flat(seed, PID, n, distribution=dist)
    if rate > 0:
        z.mul_(zn.dropout_keep(seed, PID, n, rate))
    if mask is not None:
        z.mul_(mask.reshape(-1))
    return z


def engine_accumulate(seeds, coefs, n, dist="rademacher", rate=0.0, mask=None):
    """ZOEngine._accumulate: fp32, seed order, g.add_(z, alpha=c), zero coefficients skipped."""
    g = torch.zeros(n, dtype=torch.float32)
    for s, c in zip(seeds, coefs):
        if c != 0.0:
            g.add_(engine_direction(s, n, dist, rate, mask), alpha=c)
    return g


def engine_apply(master, g, lr, wd=0.0, mask=None):
    """ZOEngine._apply on a copy: returns (new master, upd in fp32)."""
    upd = master.to(torch.float32, copy=True)
    if wd > 0:
        keep = 1.0 - lr * wd
        upd = torch.where(mask, upd * keep, upd) if mask is not None else upd * keep
    upd.add_(g, alpha=-lr)
    return upd.to(master.dtype), upd


def cpu_add_alpha_is_fused() -> bool:
    """Whether this CPU's torch computes a + alpha*b with one rounding (AVX2/AVX-512 builds do)."""
    a = torch.full((67,), -1.0, dtype=torch.float32)
    b = torch.full((67,), 1.0 + 2.0 ** -23, dtype=torch.float32)
    alpha = 1.0 - 2.0 ** -23  # b*alpha = 1 - 2^-46: fused a + b*alpha = -2^-46, unfused 0
    r = a.clone().add_(b, alpha=alpha)
    return bool((r == -(2.0 ** -46)).all())


SEEDS5 = [zn.probe_seed(3, 1, i) for i in range(5)]
COEFS5 = [0.37, -1.25, 2.5e-3, -0.0625, 0.0]  # mixed signs and a skipped zero


# ----------------------------------------------------------------------------------------------- laziness / errors
def test_import_does_not_import_triton():
    code = ("import sys, torch; before = 'triton' in sys.modules; import zo.kernels; "
            "assert before or 'triton' not in sys.modules, 'zo.kernels imported triton'")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env, timeout=120)


def test_clear_error_without_triton(monkeypatch):
    from zo import kernels
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` raise ImportError
    monkeypatch.setitem(sys.modules, "triton.language", None)
    with pytest.raises(RuntimeError, match="triton"):
        kernels.triton_noise_flat(1, PID, 10, device="cpu")
    assert not kernels.available()


@needs_triton
def test_clear_error_without_cuda_when_not_interpreting(monkeypatch):
    from zo import kernels
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with mock.patch.object(torch.cuda, "is_available", lambda: False):
        with pytest.raises(RuntimeError, match="CUDA"):
            kernels.triton_noise_flat(1, PID, 10, device="cpu")
        with pytest.raises(RuntimeError, match="CUDA"):
            kernels.triton_update(torch.zeros(8), [1], PID, [0.5], 0.1)
        assert not kernels.available()


def test_noise_keys_match_stream_key():
    from zo import kernels
    seeds = [0, 1, 2**62 + 11, zn.probe_seed(9, 9, 9)]
    k = kernels.noise_keys(seeds, PID, device="cpu", dropout=True)
    assert k.dtype == torch.int32 and k.shape == (4, 4)
    for row, s in zip(k.tolist(), seeds):
        want = list(zn.stream_key(s, PID)) + list(zn.stream_key(s, PID, zn.DROPOUT_SALT))
        assert [v & zn.MASK32 for v in row] == want


def test_noise_keys_multi_vectorised_equals_stream_key():
    """The vectorised keys (numpy uint64) == the exact-integer stream_key for every (param, seed)."""
    from zo import kernels
    seeds = [0, 1, 2**63 - 1, 2**32, zn.probe_seed(3, 4, 5)] + [zn.probe_seed(0, 7, i) for i in range(20)]
    pids = [0, 1, PID, 2**32 - 1] + [zn.param_id_from_name(f"p{i}") for i in range(9)]
    k = kernels.noise_keys_multi(seeds, pids, device="cpu", dropout=True)
    assert k.shape == (len(pids), len(seeds), 4) and k.dtype == torch.int32
    for i, p in enumerate(pids):
        for j, s in enumerate(seeds):
            want = list(zn.stream_key(s, p)) + list(zn.stream_key(s, p, zn.DROPOUT_SALT))
            assert [v & zn.MASK32 for v in k[i, j].tolist()] == want, (p, s)
    assert kernels.noise_keys_multi([], pids, device="cpu").shape == (len(pids), 0, 2)
    with pytest.raises(ValueError):
        zn.stream_keys([-1], [0])


# ----------------------------------------------------------------------------------------------- noise
# word-unaligned starts and sizes; a range inside one word; word index >= 2**31 (start >> 5 passed as
# uint32 by the interpreter) and a word range across word index 2**32 (elements around 2**37)
NOISE_CASES = [(0, 3001), (7, 1000), (2**32 - 700, 1500), (2**40 + 3, 777), (5, 1), (3, 20), (31, 33),
               (32, 64), (2**36 + 2**35 + 5, 700), (2**37 - 45, 999)]


@pytest.mark.parametrize("dist", ["rademacher", "uniform"])
def test_noise_bit_identical(K, dist):
    for start, numel in NOISE_CASES:
        a = K.triton_noise_flat(123456789, PID, numel, dist, device="cpu", start=start, block=BLK)
        b = zn.noise_flat(123456789, PID, numel, distribution=dist, start=start)
        assert torch.equal(bits(a), bits(b)), (dist, start, numel)


def test_noise_rademacher_any_block(K):
    # the smallest tile (a single word), a two-word tile and the default tile, vs the Python reference
    for blk in (32, 64, None):
        for start, numel in [(13, 100), (2**37 - 45, 999)]:
            a = K.triton_noise_flat(99, PID, numel, device="cpu", start=start, block=blk)
            assert a.tolist() == [float(zn.rademacher_int(99, PID, start + j)) for j in range(numel)], (blk, start)


def test_noise_normal_close(K):
    a = K.triton_noise_flat(42, PID, 3001, "normal", device="cpu", start=2**33 + 1, block=BLK)
    b = zn.noise_flat(42, PID, 3001, distribution="normal", start=2**33 + 1)
    assert float(((a - b).abs() / b.abs().clamp_min(1.0)).max()) <= 1e-6


def test_noise_rejects_bad_distribution(K):
    with pytest.raises(ValueError):
        K.triton_noise_flat(1, PID, 10, "gaussian", device="cpu")


# ----------------------------------------------------------------------------------------------- apply_probes
@pytest.mark.parametrize("dist", ["rademacher", "uniform"])
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_apply_probes_bitwise(K, dist, out_dtype):
    N = 2500
    master = torch.randn(N, generator=gen(1)) * 0.05
    master[:4] = torch.tensor([0.0, -0.0, 1e-3, -1e-3])
    chunk = SEEDS5[:3]
    seeds = [s for s in chunk for _ in (0, 1)]         # (+eps, -eps) pairs share a seed
    eps = 1e-3
    coefs = [sg * eps for _ in chunk for sg in (1.0, -1.0)]
    out = torch.full((len(seeds), N), float("nan"), dtype=out_dtype)
    K.triton_apply_probes(master.view(50, 50), out.view(len(seeds), 50, 50), seeds, PID, coefs, dist, block=BLK)
    for m, (s, c) in enumerate(zip(seeds, coefs)):
        ref = torch.add(master, engine_direction(s, N, dist), alpha=c).to(out_dtype)  # evaluate_stacked
        assert torch.equal(bits(out[m]), bits(ref)), (dist, out_dtype, m)


@pytest.mark.parametrize("N, D, Dk, BD, master_dtype", [(3, 20, 32, 16, torch.float32),   # two words a row
                                                        (2, 37, 64, 32, torch.float32),   # rows straddle words
                                                        (2, 30, 64, 64, torch.bfloat16)])  # three words, bf16 master
def test_apply_probes_gate_tiles_equal_flat_probes_tiled(K, N, D, Dk, BD, master_dtype):
    """The gate-tile probe kernel writes exactly the values of the flat probe kernel, in the layout
    the LSTM step kernels read (`models.lstm_fused.tile_recurrent_weight`), zeros in the padding."""
    from models.lstm_fused import tile_recurrent_weight
    master = (torch.randn(4, N, D, D, generator=gen(5)) * 0.05).to(master_dtype)
    chunk = SEEDS5[:2]
    seeds = [s for s in chunk for _ in (0, 1)]
    coefs = [sg * 1e-3 for _ in chunk for sg in (1.0, -1.0)]
    M = len(seeds)
    flat = torch.empty(M, 4, N, D, D, dtype=torch.bfloat16)
    K.triton_apply_probes(master, flat, seeds, PID, coefs, "rademacher", block=BLK)
    want = tile_recurrent_weight(flat, N=N, Dk=Dk, BD=BD, kernel=False).view(M, N, Dk, Dk // BD, 4, BD)
    out = torch.full((M, N, Dk, Dk // BD, 4, BD), float("nan"), dtype=torch.bfloat16)
    K.triton_apply_probes_gate_tiles(master, out, seeds, PID, coefs, rows=16)
    assert torch.equal(bits(out), bits(want))
    with pytest.raises(ValueError, match="gate tiles"):
        K.triton_apply_probes_gate_tiles(master, out[..., :BD // 2].contiguous(), seeds, PID, coefs)
    with pytest.raises(ValueError, match="seeds"):
        K.triton_apply_probes_gate_tiles(master, out, seeds[:-1], PID, coefs)


def test_apply_probes_bf16_master_dropout_mask(K):
    N = 1999
    master = (torch.randn(N, generator=gen(2)) * 0.1).to(torch.bfloat16)
    mask = torch.rand(N, generator=gen(3)) > 0.2
    rate = 0.3
    seeds = [SEEDS5[0], SEEDS5[0], SEEDS5[1]]
    coefs = [2e-3, -2e-3, 2e-3]
    out = torch.empty(3, N, dtype=torch.bfloat16)
    K.triton_apply_probes(master, out, seeds, PID, coefs, "rademacher", dropout_rate=rate, mask=mask, block=BLK)
    for m, (s, c) in enumerate(zip(seeds, coefs)):
        ref = torch.add(master, engine_direction(s, N, "rademacher", rate, mask), alpha=c).to(torch.bfloat16)
        assert torch.equal(bits(out[m]), bits(ref)), m


# ----------------------------------------------------------------------------------------------- update / grad
@pytest.mark.parametrize("dist", ["rademacher", "uniform"])
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_update_matches_engine(K, dist, wd):
    N = 3001
    master0 = torch.randn(N, generator=gen(4))
    master0[:3] = torch.tensor([0.0, -0.0, 3.0])
    lr = 0.0137
    g_ref = engine_accumulate(SEEDS5, COEFS5, N, dist)
    m_ref, upd = engine_apply(master0, g_ref, lr, wd)

    master = master0.clone()
    live = torch.empty(N, dtype=torch.bfloat16)
    g = torch.empty(N)
    K.triton_update(master, SEEDS5, PID, COEFS5, lr, wd, dist, live, grad_out=g, block=BLK)
    assert torch.equal(bits(g), bits(g_ref))                     # g: bitwise, always
    assert torch.equal(bits(live), bits(upd.to(torch.bfloat16)))  # live <- cast(master)
    if cpu_add_alpha_is_fused():
        assert torch.equal(bits(master), bits(m_ref))
    else:  # a torch build without FMA kernels rounds a + alpha*b twice: at most 1 ulp apart
        ulp = torch.finfo(torch.float32).eps * m_ref.abs().clamp_min(torch.finfo(torch.float32).tiny)
        assert bool(((master - m_ref).abs() <= ulp).all())

    g2 = K.triton_grad(master0, SEEDS5, PID, torch.tensor(COEFS5), dist, block=BLK)
    assert torch.equal(bits(g2), bits(g_ref))


def test_update_bf16_master_mask_dropout_keys_tensor(K):
    N = 2049
    master0 = (torch.randn(N, generator=gen(5)) * 0.2).to(torch.bfloat16)
    mask = torch.rand(N, generator=gen(6)) > 0.25
    rate, lr, wd = 0.2, 0.01, 0.5
    scaled = [c / (1 - rate) for c in COEFS5]
    g_ref = engine_accumulate(SEEDS5, scaled, N, "rademacher", rate, mask)
    m_ref, _ = engine_apply(master0, g_ref, lr, wd, mask)
    master = master0.clone()
    live = torch.empty(N, dtype=torch.float32)
    keys = K.noise_keys(SEEDS5, PID, device="cpu", dropout=True)
    g = torch.empty(N)
    K.triton_update(master, keys, PID, scaled, lr, wd, "rademacher", live, dropout_rate=rate, mask=mask,
                    grad_out=g, block=BLK)
    assert torch.equal(bits(g), bits(g_ref))
    if cpu_add_alpha_is_fused():
        assert torch.equal(bits(master), bits(m_ref))
        assert torch.equal(bits(live), bits(m_ref.float()))
    assert torch.equal(bits(master[~mask]), bits(master0[~mask]))  # frozen elements never move


def test_default_blocks_bitwise(K):
    """The default tiles (UPDATE_BLOCK: the fast path's one-word-per-thread layout) with a ragged tail."""
    N = K.UPDATE_BLOCK + 1000 + 7
    master0 = torch.randn(N, generator=gen(7))
    lr = 0.01
    g_ref = engine_accumulate(SEEDS5, COEFS5, N)
    master = master0.clone()
    g = torch.empty(N)
    K.triton_update(master, SEEDS5, PID, COEFS5, lr, 0.0, "rademacher", grad_out=g)
    assert torch.equal(bits(g), bits(g_ref))
    if cpu_add_alpha_is_fused():
        assert torch.equal(bits(master), bits(engine_apply(master0, g_ref, lr)[0]))
    out = torch.empty(2, N, dtype=torch.bfloat16)
    K.triton_apply_probes(master0, out, [SEEDS5[0]] * 2, PID, [1e-3, -1e-3])
    for m, c in enumerate([1e-3, -1e-3]):
        ref = torch.add(master0, engine_direction(SEEDS5[0], N), alpha=c).to(torch.bfloat16)
        assert torch.equal(bits(out[m]), bits(ref)), m


def test_update_mulhi_variants_agree(K):
    N = 1500
    ref = K.triton_grad(torch.empty(N), SEEDS5, PID, COEFS5, block=BLK, mulhi=0)
    for mh in (1, 2, 3):
        g = K.triton_grad(torch.empty(N), SEEDS5, PID, COEFS5, block=BLK, mulhi=mh)
        assert torch.equal(bits(g), bits(ref)), mh


def test_update_argument_checks(K):
    with pytest.raises(ValueError):
        K.triton_update(torch.zeros(8), [1, 2], PID, [0.5], 0.1)
    with pytest.raises(ValueError):
        K.triton_apply_probes(torch.zeros(8), torch.zeros(2, 9), [1, 2], PID, [0.1, 0.2])
    with pytest.raises(ValueError):
        K.triton_grad(torch.zeros(8), [1], PID, [1.0], block=1000)


# ----------------------------------------------------------------------------------------------- multi-tensor launches
MULTI_SHAPES = [(37, 29), (1,), (BLK,), (3, BLK + 5), (40,), (2, 2, 300)]  # ragged, one element, exact blocks
MULTI_PIDS = [zn.param_id_from_name(f"t{i}") for i in range(len(MULTI_SHAPES))]


@pytest.mark.parametrize("variant", ["fast", "dropout_mask_uniform"])
def test_apply_probes_multi_equals_per_tensor(K, variant):
    """One launch over six tensors == one launch per tensor, bit for bit (fp32 master, bf16 out)."""
    drop, dist = (0.25, "uniform") if variant != "fast" else (0.0, "rademacher")
    masters = [torch.randn(s, generator=gen(10 + i)) * 0.1 for i, s in enumerate(MULTI_SHAPES)]
    masks = [torch.rand(s, generator=gen(30 + i)) > 0.3 for i, s in enumerate(MULTI_SHAPES)] if drop else None
    seeds = [SEEDS5[0], SEEDS5[0], SEEDS5[2], SEEDS5[2]]
    coefs = [1e-3, -1e-3, 1e-3, -1e-3]
    # rows of the keys tensor in reverse order: key_rows must route every tensor to its own row
    keys = K.noise_keys_multi(seeds, MULTI_PIDS[::-1], device="cpu", dropout=drop > 0)
    outs = [torch.full((4, *s), float("nan"), dtype=torch.bfloat16) for s in MULTI_SHAPES]
    plan = K.multi_apply_plan(masters, outs, masks=masks, key_rows=range(len(masters) - 1, -1, -1), block=BLK)
    assert len(plan) == len(masters) and plan.grid[0] == sum(-(-m.numel() // BLK) for m in masters)
    K.triton_apply_probes_multi(plan, keys, coefs, dist, dropout_rate=drop)
    for i, (m, o) in enumerate(zip(masters, outs)):
        ref = torch.empty_like(o)
        K.triton_apply_probes(m, ref, seeds, MULTI_PIDS[i], coefs, dist, dropout_rate=drop,
                              mask=None if masks is None else masks[i], block=BLK)
        assert torch.equal(bits(o), bits(ref)), (variant, i)


@pytest.mark.parametrize("variant", ["fast", "dropout_mask_wd"])
def test_update_multi_equals_per_tensor(K, variant):
    drop, wd = (0.2, 0.3) if variant != "fast" else (0.0, 0.0)
    masters0 = [torch.randn(s, generator=gen(50 + i)) for i, s in enumerate(MULTI_SHAPES)]
    masks = [torch.rand(s, generator=gen(70 + i)) > 0.3 for i, s in enumerate(MULTI_SHAPES)] if drop else None
    keys = K.noise_keys_multi(SEEDS5, MULTI_PIDS, device="cpu", dropout=drop > 0)
    masters = [m.clone() for m in masters0]
    lives = [torch.empty(s, dtype=torch.bfloat16) for s in MULTI_SHAPES]
    grads = [torch.empty(s) for s in MULTI_SHAPES]
    plan = K.multi_update_plan(masters, lives=lives, grads=grads, masks=masks, block=BLK)
    K.triton_update_multi(plan, keys, COEFS5, 0.013, wd, dropout_rate=drop)
    gplan = K.multi_update_plan(masters0, grads=[torch.empty(s) for s in MULTI_SHAPES], masks=masks, block=BLK)
    K.triton_update_multi(gplan, keys, COEFS5, dropout_rate=drop, update=False)
    for i, m0 in enumerate(masters0):
        ref, live, g = m0.clone(), torch.empty_like(lives[i]), torch.empty(MULTI_SHAPES[i])
        mask = None if masks is None else masks[i]
        K.triton_update(ref, SEEDS5, MULTI_PIDS[i], COEFS5, 0.013, wd, "rademacher", live, dropout_rate=drop,
                        mask=mask, grad_out=g, block=BLK)
        assert torch.equal(bits(masters[i]), bits(ref)), i
        assert torch.equal(bits(lives[i]), bits(live)), i
        assert torch.equal(bits(grads[i]), bits(g)), i
        assert torch.equal(bits(gplan.tensors[2][i]), bits(g)), i
        assert torch.equal(bits(masters0[i]), bits(masters0[i])) and not torch.equal(masters[i], m0)


def test_multi_plan_argument_checks(K):
    a, b = torch.zeros(8), torch.zeros(5)
    with pytest.raises(TypeError, match="one dtype"):
        K.multi_apply_plan([a, b.bfloat16()], [torch.zeros(2, 8), torch.zeros(2, 5)])
    with pytest.raises(ValueError, match="not \\[M=2"):
        K.multi_apply_plan([a, b], [torch.zeros(2, 8), torch.zeros(3, 5)])
    with pytest.raises(ValueError, match="every tensor or for none"):
        K.multi_update_plan([a, b], masks=[torch.ones(8, dtype=torch.bool), None])
    plan = K.multi_update_plan([a, b], lives=[a.clone(), b.clone()])
    with pytest.raises(ValueError, match="grads="):
        K.triton_update_multi(plan, K.noise_keys_multi([1], [1, 2], device="cpu"), [1.0], update=False)
    with pytest.raises(ValueError, match="keys must be int32"):
        K.triton_update_multi(plan, torch.zeros(2, 1, 2), [1.0], 0.1)
    with pytest.raises(ValueError, match="multi_apply_plan"):
        K.triton_apply_probes_multi(plan, K.noise_keys_multi([1], [1, 2], device="cpu"), [1.0])


# ----------------------------------------------------------------------------------------------- compiled (sm_90)
@needs_triton
def test_kernels_compile_for_sm90(monkeypatch):
    """Compile the main variants for an H100/H200 target (no GPU needed): interpreter-only
    constructs would fail here. Skipped where this triton cannot compile for CUDA."""
    from zo import kernels
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except Exception as e:  # pragma: no cover - triton layout differs
        pytest.skip(f"no compile API: {e!r}")
    with mock.patch.object(torch.cuda, "is_available", lambda: True):
        ks = kernels._kernels()
    usig = {"master_ptr": "*fp32", "live_ptr": "*i16", "g_ptr": "*fp32", "keys_ptr": "*i32", "coefs_ptr": "*fp32",
            "mask_ptr": "*i8", "n": "i32", "numel": "i32", "neg_lr": "fp32", "keep": "fp32", "drop_rate": "fp32",
            "m13": "i32", "m16": "i32", "blk_ptr": "*i32", "seg_ptr": "*i64"}
    ucx = dict(LOOP_N=-1, KEY_STRIDE=2, DIST=0, MASTER_KIND=0, LIVE_KIND=1, HAS_LIVE=True, HAS_WD=True,
               HAS_DROPOUT=False, HAS_MASK=False, WRITE_G=False, UPDATE=True, FAST=True, MULHI=kernels.MULHI,
               EMU=False, BLOCK=kernels.UPDATE_BLOCK, MULTI=False)
    psig = {"master_ptr": "*fp32", "out_ptr": "*i16", "keys_ptr": "*i32", "coefs_ptr": "*fp32", "mask_ptr": "*i8",
            "M": "i32", "numel": "i32", "stride_m": "i32", "drop_rate": "fp32", "m13": "i32", "m16": "i32",
            "blk_ptr": "*i32", "seg_ptr": "*i64"}
    pcx = dict(LOOP_N=-1, KEY_STRIDE=4, DIST=1, MASTER_KIND=0, OUT_KIND=1, HAS_DROPOUT=True, HAS_MASK=True,
               FAST=False, MULHI=0, EMU=False, BLOCK=kernels.PROBE_BLOCK, MULTI=False)
    pfast = dict(pcx, KEY_STRIDE=2, DIST=0, HAS_DROPOUT=False, HAS_MASK=False, FAST=True)
    uslow = dict(ucx, KEY_STRIDE=4, HAS_DROPOUT=True, HAS_MASK=True, FAST=False, WRITE_G=True)
    nsig = {"out_ptr": "*fp32", "numel": "i32", "q_start": "i64", "head": "i32", "k0": "i32", "k1": "i32"}
    jobs = [("_update_kernel", usig, ucx, kernels.UPDATE_WARPS), ("_update_kernel", usig, uslow, kernels.UPDATE_WARPS),
            ("_apply_probes_kernel", psig, pcx, 8), ("_apply_probes_kernel", psig, pfast, kernels.PROBE_WARPS),
            ("_update_kernel", usig, dict(ucx, MULTI=True), kernels.UPDATE_WARPS),
            ("_update_kernel", usig, dict(uslow, MULTI=True), kernels.UPDATE_WARPS),
            ("_apply_probes_kernel", psig, dict(pcx, MULTI=True), 8),
            ("_apply_probes_kernel", psig, dict(pfast, MULTI=True), kernels.PROBE_WARPS),
            ("_noise_kernel", nsig, dict(DIST=1, BLOCK=kernels.NOISE_BLOCK), 4),
            ("_noise_kernel", nsig, dict(DIST=0, BLOCK=kernels.NOISE_BLOCK), 4)]
    for name, sig, cx, warps in jobs:
        src = ASTSource(fn=ks[name], signature={**sig, **{k: "constexpr" for k in cx}}, constexprs=cx)
        try:
            compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": warps})
        except Exception as e:
            if "ptxas" in repr(e).lower() and "not found" in repr(e).lower():
                pytest.skip(f"no ptxas: {e!r}")
            raise
        ptx = compiled.asm["ptx"]
        assert ".target sm_90" in ptx
        if name == "_update_kernel" and cx["FAST"]:
            # One hash per word: the loop-carried transposed accumulator [32, W] keeps a word's 32 bits
            # in one thread (bits axis: 1 lane, 1 warp) and W words on distinct threads; the PTX
            # multiplies by fmix32's first constant twice (two rounds), i.e. one word per thread.
            ttgir = compiled.asm["ttgir"]
            W = cx["BLOCK"] // 32
            m = re.search(r"scf\.for .*tensor<32x%dxf32, (#\w+)>" % W, ttgir)
            assert m, "fast update: no [32, W] loop-carried accumulator"
            lay = re.search(re.escape(m.group(1)) + r" = #ttg\.blocked<\{sizePerThread = \[(\d+), (\d+)\], "
                            r"threadsPerWarp = \[(\d+), (\d+)\], warpsPerCTA = \[(\d+), (\d+)\]", ttgir)
            spt0, spt1, tpw0, tpw1, wpc0, wpc1 = map(int, lay.groups())
            assert tpw0 == 1 and wpc0 == 1, lay.group(0)              # all 32 bits of a word in one thread
            assert spt1 * tpw1 * wpc1 == W, lay.group(0)              # no word on two threads
            assert ptx.count("-2048144789") == 2 * spt1, ptx.count("-2048144789")  # 0x85EBCA6B
        if name == "_update_kernel":
            assert "fma.rn.f32" in ptx  # the final master - lr*g is one fused multiply-add


ENGINE_KERNEL_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from models import ModelConfig, build_model
from zo import kernels as zk
from zo.estimator import ZOConfig, ZOEngine
m = build_model(ModelConfig(vocab_size=11, input_size=6, hidden_size=12, num_heads=3), generator=torch.Generator().manual_seed(0))
for drop in (0.0, 0.25):
    eng = ZOEngine(m.named_parameters(), config=ZOConfig(num_perturbations=3, probe_dropout_rate=drop), run_seed=5)
    eng.use_kernels = True                       # the CUDA path, run by the Triton interpreter on CPU
    seeds = eng.seeds(7)
    # probe writes: the engine's one-upload keys == per-tensor calls with seed lists
    got = {{}}
    def grab(P):
        for n, t in P.items():
            got[n] = t.clone()
        return torch.zeros(next(iter(P.values())).shape[0])
    eng.evaluate_stacked(seeds, grab, lr=0.1, models_per_pass=6)
    ok_apply = True
    alphas = [sg * (0.1 * eng.probe_scale(s)) for s in seeds for sg in (1.0, -1.0)]
    ms = [s for s in seeds for _ in (1, -1)]
    for p in eng.params:
        ref = torch.empty_like(got[p.name])
        zk.triton_apply_probes(p.master, ref, ms, p.pid, alphas, dropout_rate=drop)
        ok_apply &= torch.equal(ref, got[p.name])
    # update: the same against per-tensor calls on copies
    coefs = [0.3, -0.2, 0.05]
    before = [p.master.clone() for p in eng.params]
    eng.update(seeds, coefs, lr=0.01)
    scaled = [c * eng.probe_scale(s) for s, c in zip(seeds, coefs)]
    ok_upd = True
    for p, b in zip(eng.params, before):
        zk.triton_update(b, seeds, p.pid, scaled, 0.01, dropout_rate=drop)
        ok_upd &= torch.equal(b, p.master)
    print("drop", drop, ok_apply, ok_upd)
# a stack buffer that grows drops the plans that addressed the old one (they would keep it alive)
eng = ZOEngine(m.named_parameters(), config=ZOConfig(num_perturbations=3), run_seed=5)
eng.use_kernels = True
eng.evaluate_stacked(eng.seeds(1)[:1], grab, lr=0.1, models_per_pass=2)
eng.evaluate_stacked(eng.seeds(1), grab, lr=0.1, models_per_pass=6)
print("stack_plans", sum(k[0] == "stack" for k in eng._plans))
# Adam (the full-gradient path): kernels, grouped into one launch, == the torch path after two steps
engs = [ZOEngine(m.named_parameters(), config=ZOConfig(num_perturbations=3, adam=True), run_seed=5) for _ in (0, 1)]
for e, use in zip(engs, (True, False)):   # (both built first: each copies the model's tensors as its master)
    e.use_kernels = use
    for step in (1, 2):
        e.update(e.seeds(step), [0.3, -0.2, 0.05], lr=0.01)
print("adam", len(engs[0]._groups) >= 1, all(torch.equal(a.master, b.master) for a, b in zip(engs[0].params, engs[1].params)))
"""


def test_engine_kernel_path_uploads_keys_once_and_matches_per_tensor_calls():
    """The engine's kernel path passes every tensor's keys from one upload; the results equal
    per-tensor kernel calls bit for bit (probe writes and the update, with and without dropout)."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", ENGINE_KERNEL_SCRIPT.format(root=root)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert lines == ["drop 0.0 True True", "drop 0.25 True True", "stack_plans 1", "adam True True"], out.stdout


EARLY_UPDATE_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from models import ModelConfig, build_model
from train.zo_step import NonFiniteLossError, zo_step
from zo.comm import LocalComm
from zo.estimator import ZOConfig, ZOEngine
m = build_model(ModelConfig(vocab_size=11, input_size=6, hidden_size=12, num_heads=3), generator=torch.Generator().manual_seed(0))
start = [t.detach().clone() for _, t in m.named_parameters()]

def engines(**kw):
    out = []
    for early in (True, False):
        e = ZOEngine(zip([n for n, _ in m.named_parameters()], [t.clone() for t in start]),
                     config=ZOConfig(num_perturbations=3, **kw), run_seed=5)
        e.use_kernels = True                     # the CUDA path, run by the Triton interpreter on CPU
        e.update_before_sync = early
        out.append(e)
    return out

def stacked_for(e, bad_at=None):
    def stacked(P):
        # a deterministic function of the probed tensors: one loss per model
        loss = sum((t.float().reshape(t.shape[0], -1) * 0.1).sin().sum(1) for t in P.values())
        if bad_at is not None:
            loss = loss.clone(); loss[bad_at] = float("nan")
        return loss
    return stacked

for kw in (dict(), dict(probe_normalization=True, distribution="normal")):
    a, b = engines(**kw)
    for step in (0, 1, 2):
        for e in (a, b):
            zo_step(e, step=step, lr=0.05, loss_for_probe=None, comm=LocalComm(), stacked_loss=stacked_for(e),
                    models_per_pass=2)
    same = all(torch.equal(p.master, q.master) and torch.equal(p.live, q.live) for p, q in zip(a.params, b.params))
    moved = any(not torch.equal(p.master, d) for p, d in zip(a.params, start))
    print("equal", same, moved)
# a NaN loss: the queued update is a no-op and the step raises
a, _ = engines()
before = [(p.master.clone(), p.live.clone()) for p in a.params]
try:
    zo_step(a, step=0, lr=0.05, loss_for_probe=None, comm=LocalComm(), stacked_loss=stacked_for(a, bad_at=1),
            models_per_pass=2)
    print("no error")
except NonFiniteLossError as err:
    print("raised", err.step, all(torch.equal(p.master, m0) and torch.equal(p.live, l0)
                                  for p, (m0, l0) in zip(a.params, before)))
# weight decay's factor is a host scalar: the update then waits for the sync (without it, it need not)
flags = []
for wdk in (0.1, 0.0):
    e = ZOEngine(m.named_parameters(), config=ZOConfig(num_perturbations=3, weight_decay=wdk), run_seed=5)
    e.use_kernels = True
    flags.append(e.update_before_sync)
print("wd", *flags)
"""


def test_update_queued_before_the_sync_equals_the_update_after_it_and_a_nan_leaves_theta():
    """zo_step's early update (coefficients kept on the device, guarded on device) ends bit-equal to
    the update made after the sync, with and without probe normalisation; a NaN loss raises with
    master and live bitwise unchanged."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", EARLY_UPDATE_SCRIPT.format(root=root)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines() == ["equal True True", "equal True True", "raised 0 True", "wd False True"], out.stdout


STEP_ARGS_SCRIPT = r"""
import sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(1)
from models import ModelConfig, build_model
from tasks import Batch
from train.graphs import GraphedZOStep
from train.zo_step import NonFiniteLossError, zo_step
from zo.comm import LocalComm
from zo.estimator import ZOConfig, ZOEngine
m = build_model(ModelConfig(vocab_size=11, input_size=6, hidden_size=12, num_heads=3), generator=torch.Generator().manual_seed(0))
start = [t.detach().clone() for _, t in m.named_parameters()]
names = [n for n, _ in m.named_parameters()]
batch = Batch(inputs=torch.arange(8).reshape(2, 4), targets=torch.arange(8).reshape(2, 4))

def fn(P, b, bad_at=None):
    # a deterministic function of the probed tensors and the batch: one loss per model
    loss = sum((t.float().reshape(t.shape[0], -1) * 0.1).sin().sum(1) for t in P.values()) + b.inputs.float().mean()
    if bad_at is not None:
        loss = loss.clone(); loss[bad_at] = float("nan")
    return loss

for kw in (dict(), dict(probe_normalization=True, distribution="normal")):
    for mpp in (2, 6):
        a, b = [ZOEngine(zip(names, [t.clone() for t in start]), config=ZOConfig(num_perturbations=3, **kw), run_seed=5)
                for _ in (0, 1)]
        for e in (a, b):
            e.use_kernels = True                 # the CUDA path, run by the Triton interpreter on CPU
        g = GraphedZOStep(fn, capture=False)
        same_losses = True
        for step, lr in ((0, 0.05), (1, 0.03), (2, 0.07)):   # lr changes: the device lr and coefficient scale
            ra = zo_step(a, step=step, lr=lr, loss_for_probe=None, comm=LocalComm(), stacked_loss=lambda P: fn(P, batch),
                         models_per_pass=mpp, step_graph=g, batch=batch)
            rb = zo_step(b, step=step, lr=lr, loss_for_probe=None, comm=LocalComm(), stacked_loss=lambda P: fn(P, batch),
                         models_per_pass=mpp)
            same_losses &= torch.equal(ra.losses, rb.losses) and ra.train_loss == rb.train_loss
            same_losses &= ra.info.get("cuda_graph") == "step"
        same = all(torch.equal(p.master, q.master) and torch.equal(p.live, q.live) for p, q in zip(a.params, b.params))
        moved = any(not torch.equal(p.master, d) for p, d in zip(a.params, start))
        print("equal", mpp, same_losses, same, moved)
# a NaN loss: the queued update is a no-op and the step raises
a = ZOEngine(zip(names, [t.clone() for t in start]), config=ZOConfig(num_perturbations=3), run_seed=5)
a.use_kernels = True
before = [(p.master.clone(), p.live.clone()) for p in a.params]
g = GraphedZOStep(lambda P, b: fn(P, b, bad_at=1), capture=False)
try:
    zo_step(a, step=0, lr=0.05, loss_for_probe=None, comm=LocalComm(), stacked_loss=lambda P: fn(P, batch, 1),
            models_per_pass=2, step_graph=g, batch=batch)
    print("no error")
except NonFiniteLossError as err:
    print("raised", err.step, all(torch.equal(p.master, m0) and torch.equal(p.live, l0)
                                  for p, (m0, l0) in zip(a.params, before)))
# where the whole step cannot be replayed, the step graph says why
adam = ZOEngine(m.named_parameters(), config=ZOConfig(num_perturbations=3, adam=True), run_seed=5)
adam.use_kernels = True
print("why", g.why_not(adam, models_per_pass=2) is not None, g.why_not(a, models_per_pass=1) is not None,
      g.why_not(a, models_per_pass=2) is None, GraphedZOStep(fn).why_not(a, models_per_pass=2))
"""


def test_step_args_path_equals_the_eager_step_bit_for_bit():
    """GraphedZOStep's device-args path (every value from StepArgs buffers, here run uncaptured under
    the interpreter) gives the eager step's losses, mean loss, master and live bit for bit, over steps
    whose lr changes, with one and several passes, with probe normalisation; a NaN leaves theta."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", STEP_ARGS_SCRIPT.format(root=root)], capture_output=True,
                         text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines() == [
        "equal 2 True True True", "equal 6 True True True", "equal 2 True True True", "equal 6 True True True",
        "raised 0 True", "why True True True not on CUDA"], out.stdout


def test_update_takes_lr_from_a_device_tensor(K):
    """triton_update with lr as a one-element fp32 tensor (read by the kernel) == lr as a float, bit
    for bit; another dtype, or weight decay with it, is refused with a clear message."""
    a = torch.randn(3000, generator=gen(0))
    b, start = a.clone(), a.clone()
    K.triton_update(a, [11, 12], PID, [0.3, -0.2], 0.0123, block=BLK)
    K.triton_update(b, [11, 12], PID, [0.3, -0.2], torch.tensor([0.0123], dtype=torch.float32), block=BLK)
    assert torch.equal(bits(a), bits(b)) and not torch.equal(a, start)
    with pytest.raises(ValueError, match="one fp32 value"):
        K.triton_update(b, [11, 12], PID, [0.3, -0.2], torch.tensor([0.0123], dtype=torch.float64))
    with pytest.raises(ValueError, match="weight decay"):
        K.triton_update(b, [11, 12], PID, [0.3, -0.2], torch.tensor([0.0123]), weight_decay=0.1)
