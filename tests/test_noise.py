"""Tests of the counter-based probe noise (DESIGN.md invariant 1): purity, chunking independence,
distribution moments, decorrelation of streams, probe seeds and the probe-dropout mask.

Rademacher packs 32 signs per hash word (element i = bit i & 31 of word(i >> 5)); the tests check
the format against the pure-Python reference and that the 32 bits of a word, neighbouring words,
seeds and parameter ids are uncorrelated."""
import math

import pytest
import torch

from zo import noise as zn
from zo.estimator import ZOConfig, ZOEngine

SEED_PID_SALT = [(0, 0, 0), (1, 0, 0), (0, 1, 0), (12345, 678, 1), (2**40 + 3, 2**31 + 7, 0),
                 (2**63 - 1, zn.MASK32, 255), (zn.probe_seed(5, 7, 11), zn.param_id_from_name("W_in"), 1)]
DISTS = list(zn.DISTRIBUTIONS)


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def corr_matrix(rows: torch.Tensor) -> torch.Tensor:
    """Pearson correlations of the rows of a [k, N] tensor, in float64."""
    return torch.corrcoef(rows.double())


def max_offdiag(c: torch.Tensor) -> float:
    return float((c - torch.diag(torch.diag(c))).abs().max())


# ---------------------------------------------------------------------------------- bit recipe
@pytest.mark.parametrize("seed,pid,salt", SEED_PID_SALT)
def test_noise_words_match_python_reference(seed, pid, salt):
    g = gen(seed % 1000 + salt)
    starts = torch.randint(0, 2**45, (12,), generator=g).tolist() + [0, 2**32 - 5, 2**33 - 3, 2**40]
    for start in starts:
        words = zn.noise_words(seed, pid, start, 10, device="cpu", salt=salt).tolist()
        ref = [zn.noise_word_int(seed, pid, start + j, salt) for j in range(10)]
        assert words == ref, (start, words, ref)
        assert all(0 <= w <= zn.MASK32 for w in words)


@pytest.mark.parametrize("seed,pid,salt", SEED_PID_SALT)
def test_rademacher_matches_python_reference(seed, pid, salt):
    """noise_flat(rademacher) == rademacher_int at random word-unaligned starts and sizes, including
    element indices >= 2**32 and word indices >= 2**32 (elements >= 2**37)."""
    del salt  # signs always use the salt-0 stream
    g = gen(seed % 997 + pid % 991)
    starts = torch.randint(0, 2**45, (6,), generator=g).tolist() + torch.randint(0, 4096, (3,), generator=g).tolist()
    starts += [0, 1, 31, 32, 33, 2**32 - 37, 2**36 + 2**35 + 5, 2**37 - 45, 2**37, 2**40 + 17]
    sizes = [1, 5, 31, 32, 33, 64, 95, 97]
    for k, start in enumerate(starts):
        n = sizes[k % len(sizes)]
        z = zn.noise_flat(seed, pid, n, start=start)
        ref = [float(zn.rademacher_int(seed, pid, start + j)) for j in range(n)]
        assert z.tolist() == ref, (start, n)


def test_rademacher_is_32_bits_per_word():
    # element 32q + b is bit b of word q of the salt-0 stream: +1 for a 0 bit, -1 for a 1 bit
    q0, nw = 2**32 - 3, 6  # word indices across 2**32 (lo/hi split of the word index)
    words = zn.noise_words(77, 13, q0, nw, device="cpu").tolist()
    z = zn.noise_flat(77, 13, 32 * nw, start=32 * q0)
    want = [1.0 - 2.0 * ((w >> b) & 1) for w in words for b in range(32)]
    assert z.tolist() == want
    assert torch.equal(zn.signs_from_words(zn.noise_words(77, 13, q0, nw, device="cpu")), z)
    # one word per element stays the format of uniform / normal / dropout: only signs are packed
    with pytest.raises(ValueError, match="32 signs"):
        zn.words_to_noise(zn.noise_words(77, 13, 0, 4, device="cpu"), "rademacher")


def test_rademacher_word_index_2_32_is_not_periodic():
    # words q and q + 2**32 share the low 32 bits of the counter; the high word must still matter
    a = zn.noise_flat(3, 9, 4096, start=2**37)
    b = zn.noise_flat(3, 9, 4096, start=0)
    assert float((a == b).double().mean()) < 0.6
    assert zn.noise_flat(3, 9, 64, start=2**37 - 32).tolist() == [
        float(zn.rademacher_int(3, 9, 2**37 - 32 + j)) for j in range(64)]


def test_noise_words_cross_2_32_boundary_is_not_periodic():
    # Elements i and i + 2**32 share the low word; the high word must still change the value.
    lo = zn.noise_words(3, 9, 2**32 - 5, 10, device="cpu")
    wrapped = zn.noise_words(3, 9, 0, 5, device="cpu")
    assert lo.tolist() == [zn.noise_word_int(3, 9, 2**32 - 5 + j) for j in range(10)]
    assert not torch.equal(lo[5:], wrapped)


def test_salt_and_param_id_change_the_stream():
    base = zn.noise_words(11, 5, 0, 64, device="cpu")
    assert not torch.equal(base, zn.noise_words(11, 5, 0, 64, device="cpu", salt=1))
    assert not torch.equal(base, zn.noise_words(11, 6, 0, 64, device="cpu"))
    assert not torch.equal(base, zn.noise_words(12, 5, 0, 64, device="cpu"))
    # fmix32 is a bijection: distinct elements of one stream never share a word
    many = zn.noise_words(11, 5, 0, 1 << 16, device="cpu")
    assert many.unique().numel() == many.numel()


def test_stream_key_rejects_bad_arguments():
    for args in [(-1, 0, 0), (0, -1, 0), (0, 0, 256), (0, 0, -1)]:
        with pytest.raises(ValueError):
            zn.stream_key(*args)


def test_fmix32_tensor_matches_int():
    x = torch.randint(0, 2**32, (1000,), generator=gen(1), dtype=torch.int64)
    ref = [zn.fmix32_int(v) for v in x.tolist()]
    assert zn._fmix32_(x.clone()).tolist() == ref


# ---------------------------------------------------------------------------------- chunking
@pytest.mark.parametrize("dist", DISTS)
def test_noise_flat_slices_equal_full_stream(dist):
    full = zn.noise_flat(21, 4, 4099, distribution=dist)
    for a, n in [(1, 1), (3, 5), (7, 129), (333, 1001), (1, 4097), (4097, 1)]:
        part = zn.noise_flat(21, 4, n, distribution=dist, start=a)
        assert torch.equal(part, full[a:a + n]), (dist, a, n)


@pytest.mark.parametrize("dist", DISTS)
def test_noise_flat_independent_of_internal_chunk(monkeypatch, dist):
    a, n = 37, 5001
    if dist == "rademacher":  # one pass, no chunking: the covered words, expanded and sliced
        ref = zn.signs_from_words(zn.noise_words(8, 2, a >> 5, ((a + n - 1) >> 5) - (a >> 5) + 1,
                                                 device="cpu"))[a & 31:(a & 31) + n]
    else:
        ref = zn.words_to_noise(zn.noise_words(8, 2, a, n, device="cpu"), dist)
    full = zn.noise_flat(8, 2, a + n, distribution=dist)
    for chunk in (1000, 96, 33):  # chunk sizes that are and are not multiples of 32
        monkeypatch.setattr(zn, "_CHUNK", chunk)
        chunked = zn.noise_flat(8, 2, n, distribution=dist, start=a)
        chunked_full = zn.noise_flat(8, 2, a + n, distribution=dist)
        assert torch.equal(chunked, ref), chunk
        assert torch.equal(chunked_full, full), chunk
        assert torch.equal(chunked, full[a:]), chunk


@pytest.mark.parametrize("start", [0, 5, 31, 32, 45, 2**33 + 7])
def test_rademacher_any_start_and_size(start):
    """Partial first word, whole words, partial last word, and ranges inside one word."""
    full = zn.noise_flat(4, 4, 300, start=start)
    for a in range(0, 70, 3):
        for n in (0, 1, 2, 30, 31, 32, 33, 64, 65, 130):
            assert torch.equal(zn.noise_flat(4, 4, n, start=start + a), full[a:a + n]), (start, a, n)


def test_noise_like_is_row_major_noise_flat():
    like = torch.empty(7, 3, 5, dtype=torch.bfloat16)
    z = zn.noise_like(9, 1, like, distribution="normal")
    assert z.shape == like.shape and z.dtype == torch.float32
    assert torch.equal(z.reshape(-1), zn.noise_flat(9, 1, like.numel(), distribution="normal"))


def test_dropout_keep_chunk_start_consistent():
    full = zn.dropout_keep(4, 6, 3001, 0.3)
    assert torch.equal(zn.dropout_keep(4, 6, 1001, 0.3, start=1999), full[1999:3000])


# ---------------------------------------------------------------------------------- distributions
N_BIG = 1_000_000


def test_rademacher_values_and_balance():
    z = zn.noise_flat(2024, 17, N_BIG, distribution="rademacher")
    assert z.dtype == torch.float32
    assert bool(((z == 1.0) | (z == -1.0)).all())
    tol = 5 / math.sqrt(N_BIG)
    assert abs(float(z.double().mean())) < tol
    frac_pos = float((z > 0).double().mean())
    assert abs(frac_pos - 0.5) < tol / 2 + 1e-12
    # exact +-1 in low precision too
    zb = z.to(torch.bfloat16)
    assert bool(((zb == 1) | (zb == -1)).all())


@pytest.mark.parametrize("dist,fourth_moment", [("uniform", 9 / 5), ("normal", 3.0)])
def test_continuous_moments(dist, fourth_moment):
    z = zn.noise_flat(77, 3, N_BIG, distribution=dist).double()
    assert bool(torch.isfinite(z).all())
    mean, var = float(z.mean()), float(z.var())
    assert abs(mean) < 5 / math.sqrt(N_BIG)
    assert abs(var - 1.0) < 5 * math.sqrt((fourth_moment - 1.0) / N_BIG)
    if dist == "uniform":
        assert float(z.abs().max()) < math.sqrt(3.0)
        assert float(z.abs().max()) > math.sqrt(3.0) * (1 - 1e-4)     # really fills the support
        # flat histogram over 10 bins
        hist = torch.histc(z, bins=10, min=-math.sqrt(3), max=math.sqrt(3)) / N_BIG
        assert float((hist - 0.1).abs().max()) < 5 * math.sqrt(0.09 / N_BIG)
    else:
        # P(|z| > 1.96) ~ 0.05 and symmetric tails
        frac = float((z.abs() > 1.959964).double().mean())
        assert abs(frac - 0.05) < 5 * math.sqrt(0.05 * 0.95 / N_BIG)
        skew = float((z ** 3).mean())
        assert abs(skew) < 5 * math.sqrt(15 / N_BIG)


def test_words_to_noise_rejects_unknown_distribution():
    with pytest.raises(ValueError):
        zn.noise_flat(0, 0, 4, distribution="gaussian")
    with pytest.raises(ValueError):
        zn.noise_flat(0, 0, 0, distribution="gaussian")
    with pytest.raises(ValueError):
        zn.words_to_noise(torch.zeros(4, dtype=torch.int64), "gaussian")


# ---------------------------------------------------------------------------------- decorrelation
N_CORR = 100_000
CORR_TOL = 5 / math.sqrt(N_CORR)


def test_sequential_seeds_uncorrelated():
    rows = torch.stack([zn.noise_flat(s, 42, N_CORR) for s in range(64)])
    assert max_offdiag(corr_matrix(rows)) < CORR_TOL     # (so no two seeds give the same vector or -vector)


def test_sequential_param_ids_uncorrelated():
    rows = torch.stack([zn.noise_flat(1234, pid, N_CORR) for pid in range(64)])
    assert max_offdiag(corr_matrix(rows)) < CORR_TOL


def test_named_param_ids_uncorrelated():
    names = [f"layer{i}.weight" for i in range(32)] + [f"layer{i}.bias" for i in range(32)]
    pids = [zn.param_id_from_name(n) for n in names]
    assert len(set(pids)) == 64
    rows = torch.stack([zn.noise_flat(0, pid, N_CORR) for pid in pids])
    assert max_offdiag(corr_matrix(rows)) < CORR_TOL


def test_probe_seed_streams_uncorrelated_across_index_and_step():
    across_i = torch.stack([zn.noise_flat(zn.probe_seed(0, 5, i), 7, N_CORR) for i in range(64)])
    assert max_offdiag(corr_matrix(across_i)) < CORR_TOL
    across_step = torch.stack([zn.noise_flat(zn.probe_seed(0, s, 0), 7, N_CORR) for s in range(64)])
    assert max_offdiag(corr_matrix(across_step)) < CORR_TOL


# 32 signs share one hash word: the bits of a word, and neighbouring words, must be uncorrelated.
N_WORDS = 100_000


def test_rademacher_bits_within_a_word_balanced_and_uncorrelated():
    z = zn.noise_flat(2024, 3, 32 * N_WORDS).view(N_WORDS, 32).double()   # row = word, column = bit
    tol = 5 / math.sqrt(N_WORDS)
    assert float(z.mean(0).abs().max()) < tol                               # every bit position balanced
    assert max_offdiag(corr_matrix(z.T)) < tol                              # all 32 x 32 bit pairs


@pytest.mark.parametrize("seed", [0, 7, 2**62 + 5])
def test_rademacher_neighbours_uncorrelated(seed):
    # lags inside a word (1, 2, 16, 31), across the word boundary (32, 33) and to the next-but-one
    # word (64); element i of neighbouring seeds s, s+1 (same word index, same bit)
    N = 1_000_000
    z = zn.noise_flat(seed, 11, N + 64).double()
    tol = 5 / math.sqrt(N)
    for lag in (1, 2, 16, 31, 32, 33, 64):
        r = float(torch.corrcoef(torch.stack([z[:N], z[lag:lag + N]]))[0, 1])
        assert abs(r) < tol, (lag, r)
    z1 = zn.noise_flat(seed + 1, 11, N).double()
    r = float(torch.corrcoef(torch.stack([z[:N], z1]))[0, 1])
    assert abs(r) < tol, r
    # same element, neighbouring parameter ids
    z2 = zn.noise_flat(seed, 12, N).double()
    r = float(torch.corrcoef(torch.stack([z[:N], z2]))[0, 1])
    assert abs(r) < tol, r


def test_rademacher_bits_uncorrelated_across_seeds_per_bit_position():
    # bit b of word q for seeds s and s+1, for every b: no bit position is shared between seeds
    rows = torch.stack([zn.noise_flat(s, 42, 32 * N_WORDS // 4) for s in range(4)]).view(4, -1, 32).double()
    tol = 5 / math.sqrt(N_WORDS // 4)
    for s in range(3):
        a, b = rows[s] - rows[s].mean(0), rows[s + 1] - rows[s + 1].mean(0)
        r = (a * b).sum(0) / (a.square().sum(0) * b.square().sum(0)).sqrt()
        assert float(r.abs().max()) < tol, (s, r.abs().max())


def test_normal_stream_components_uncorrelated():
    # u1 and u2 of Box-Muller come from related words; the outputs of neighbouring elements and of
    # neighbouring seeds must still be uncorrelated.
    z = zn.noise_flat(5, 5, N_CORR + 1, distribution="normal").double()
    r = float(torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1])
    assert abs(r) < CORR_TOL
    rows = torch.stack([zn.noise_flat(s, 5, N_CORR, distribution="normal") for s in range(16)])
    assert max_offdiag(corr_matrix(rows)) < CORR_TOL


# ---------------------------------------------------------------------------------- purity
@pytest.mark.parametrize("dist", DISTS)
def test_noise_is_deterministic(dist):
    a = zn.noise_flat(99, 1, 10_000, distribution=dist)
    b = zn.noise_flat(99, 1, 10_000, distribution=dist)
    assert torch.equal(a, b)
    c = zn.noise_flat(100, 1, 10_000, distribution=dist)
    assert not torch.equal(a, c)


def _engine_step(engine, theta, loss_fn, step, lr):
    seeds = engine.seeds(step)
    losses = engine.evaluate(seeds, loss_fn, lr=lr)
    base = engine.baseline(loss_fn) if engine.cfg.needs_baseline else None
    coefs = engine.coefficients(losses, lr=lr, baseline=base)
    engine.update(seeds, coefs, lr=lr)


def test_global_rng_untouched():
    before = torch.random.get_rng_state().clone()
    for dist in DISTS:
        zn.noise_flat(1, 2, 5000, distribution=dist)
    zn.dropout_keep(1, 2, 5000, 0.25)
    zn.noise_like(3, 4, torch.empty(10, 10))
    theta = torch.randn(40, generator=gen(0))
    for cfg in [ZOConfig(num_perturbations=4),
                ZOConfig(num_perturbations=4, central_difference=False, antithetic=True, adam=True,
                         distribution="normal", probe_normalization=True, probe_dropout_rate=0.3,
                         gradient_normalization="l2", weight_decay=0.1, grad_clip=1.0)]:
        engine = ZOEngine([("theta", theta)], config=cfg, run_seed=3)
        for step in range(3):
            _engine_step(engine, theta, lambda: (theta ** 2).sum(), step, 1e-2)
    after = torch.random.get_rng_state()
    assert torch.equal(before, after)


# ---------------------------------------------------------------------------------- probe seeds
def test_probe_seed_grid_has_no_collisions():
    vals = [zn.probe_seed(0, step, i) for step in range(100) for i in range(100)]
    assert len(set(vals)) == len(vals)
    assert all(0 <= v < 2**63 for v in vals)
    other = {zn.probe_seed(1, step, i) for step in range(100) for i in range(100)}
    assert not (other & set(vals))


@pytest.mark.parametrize("run_seed", [0, 1, 42, 2**40])
def test_probe_seed_is_not_seed_plus_index(run_seed):
    s = [zn.probe_seed(run_seed, 3, i) for i in range(20)]
    diffs = {b - a for a, b in zip(s, s[1:])}
    assert len(diffs) > 1                       # no arithmetic progression
    assert all(v != run_seed + i for i, v in enumerate(s))
    assert s[0] != zn.probe_seed(run_seed + 1, 3, 0)
    # seeds of step k, index i+1 and step k+1, index i are unrelated too
    assert zn.probe_seed(run_seed, 3, 1) != zn.probe_seed(run_seed, 4, 0)
    assert zn.probe_seed(run_seed, 3, 5) == s[5]   # pure


def test_engine_seeds_use_probe_seed():
    e = ZOEngine([("w", torch.zeros(3))], config=ZOConfig(num_perturbations=6), run_seed=9)
    assert e.seeds(4) == [zn.probe_seed(9, 4, i) for i in range(6)]
    ea = ZOEngine([("w", torch.zeros(3))], config=ZOConfig(num_perturbations=6, central_difference=False,
                                                          antithetic=True), run_seed=9)
    assert ea.seeds(4) == [zn.probe_seed(9, 4, i) for i in range(3)]


# ---------------------------------------------------------------------------------- dropout mask
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
def test_dropout_keep_fraction(rate):
    n = 200_000
    keep = zn.dropout_keep(31, 8, n, rate)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    frac = float(keep.double().mean())
    assert abs(frac - (1 - rate)) < 5 * math.sqrt(rate * (1 - rate) / n)


def test_dropout_keep_rate_zero_keeps_all():
    assert bool(zn.dropout_keep(1, 1, 10_000, 0.0).all())


def test_dropout_keep_independent_of_signs():
    n = 200_000
    for seed in range(2):
        keep = zn.dropout_keep(seed, 8, n, 0.5).double()
        z = zn.noise_flat(seed, 8, n)
        r = float(torch.corrcoef(torch.stack([keep, z.double()]))[0, 1])
        assert abs(r) < 5 / math.sqrt(n)
        # P(z=+1 | kept) ~ 1/2
        kept = z[keep.bool()]
        assert abs(float((kept > 0).double().mean()) - 0.5) < 2.5 / math.sqrt(kept.numel())
    # the mask's stream is not the sign stream: identical seed/pid, different salt
    words_sign = zn.noise_words(0, 8, 0, 64, device="cpu")
    words_mask = zn.noise_words(0, 8, 0, 64, device="cpu", salt=zn.DROPOUT_SALT)
    assert not torch.equal(words_sign, words_mask)
