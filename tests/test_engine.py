"""Tests of the zeroth-order engine (zo/estimator.py): the CD/FD-RGE estimate on quadratics and
smooth functions, exact probe/restore (DESIGN.md invariant 2), the update rules, checkpoint round
trips, config validation and invariance to how the seeds are split across evaluators."""
import io
import math

import pytest
import torch

from zo import noise as zn
from zo.estimator import ZOConfig, ZOEngine

PID = zn.param_id_from_name("theta")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def spd_matrix(d, seed=0, dtype=torch.float64):
    g = gen(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    eig = torch.linspace(0.5, 3.0, d, dtype=torch.float64)
    return ((q * eig) @ q.T).to(dtype)


def quad_problem(d=30, seed=0, dtype=torch.float64, scale=1.0):
    A = spd_matrix(d, seed, dtype=torch.float64)
    theta = (scale * torch.randn(d, generator=gen(seed + 100), dtype=torch.float64)).to(dtype)

    def loss_fn():
        t = theta.double()
        return 0.5 * t @ A @ t

    return A, theta, loss_fn


def full_step(engine, loss_fn, step, lr):
    seeds = engine.seeds(step)
    losses = engine.evaluate(seeds, loss_fn, lr=lr)
    base = engine.baseline(loss_fn) if engine.cfg.needs_baseline else None
    coefs = engine.coefficients(losses, lr=lr, baseline=base)
    info = engine.update(seeds, coefs, lr=lr)
    return seeds, losses, coefs, info


def g_hat(engine, seeds, coefs, like, dist="rademacher"):
    """sum_i c_i z_i in float64 from the module's own noise (no dropout/mask/normalisation)."""
    g = torch.zeros(like.shape, dtype=torch.float64)
    for s, c in zip(seeds, coefs.tolist()):
        g += c * zn.noise_like(s, PID, like, distribution=dist).double()
    return g


# ---------------------------------------------------------------------------------- estimate quality
@pytest.mark.parametrize("dist,n", [("rademacher", 2000), ("normal", 1000), ("uniform", 1000)])
def test_cd_estimate_cosine_with_true_gradient(dist, n):
    A, theta, loss_fn = quad_problem(d=30, seed=1)
    grad = A @ theta
    cfg = ZOConfig(num_perturbations=n, distribution=dist)
    eng = ZOEngine([("theta", theta)], config=cfg, run_seed=5)
    lr = 1e-3
    seeds = eng.seeds(0)
    coefs = eng.coefficients(eng.evaluate(seeds, loss_fn, lr=lr), lr=lr)
    g = g_hat(eng, seeds, coefs, theta, dist)
    cos = float(g @ grad / (g.norm() * grad.norm()))
    assert cos >= 0.9, cos
    # and the engine's own update realises -lr * g_hat
    theta0 = theta.clone()
    eng.update(seeds, coefs, lr=lr)
    dtheta = theta - theta0
    cos_upd = float(-dtheta @ grad / (dtheta.norm() * grad.norm()))
    assert cos_upd >= 0.9, cos_upd
    torch.testing.assert_close(dtheta, -lr * g, rtol=1e-3, atol=1e-6)


def test_cd_per_probe_is_exact_directional_derivative_on_quadratic():
    A, theta, loss_fn = quad_problem(d=25, seed=2)
    grad = A @ theta
    n = 16
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=n), run_seed=1)
    lr = 1e-2
    seeds = eng.seeds(0)
    coefs = eng.coefficients(eng.evaluate(seeds, loss_fn, lr=lr), lr=lr)
    for s, c in zip(seeds, coefs.tolist()):
        z = zn.noise_like(s, PID, theta).double()
        assert c * n == pytest.approx(float(z @ grad), rel=1e-5, abs=1e-6)


def _smooth_problem(d=24, seed=3):
    g = gen(seed)
    w = 0.5 + torch.rand(d, generator=g, dtype=torch.float64)
    theta = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    v = torch.randn(d, generator=g, dtype=torch.float64)

    def loss_fn():
        return torch.exp(theta * w).sum() + (v * theta ** 3).sum() / 3

    def grad():
        return w * torch.exp(theta * w) + v * theta ** 2

    return theta, loss_fn, grad


@pytest.mark.parametrize("central,expected,tol", [(True, 4.0, 1.0), (False, 2.0, 0.5)])
def test_error_order_in_epsilon(central, expected, tol):
    theta, loss_fn, grad_fn = _smooth_problem()
    n = 12
    cfg = ZOConfig(num_perturbations=n, central_difference=central)
    grad = grad_fn()

    def total_error(eps):
        eng = ZOEngine([("theta", theta)], config=cfg, run_seed=11)
        seeds = eng.seeds(0)
        losses = eng.evaluate(seeds, loss_fn, lr=eps)      # ratio 1: eps = lr
        base = None if central else eng.baseline(loss_fn)
        coefs = eng.coefficients(losses, lr=eps, baseline=base)
        err = 0.0
        for s, c in zip(seeds, coefs.tolist()):
            z = zn.noise_like(s, PID, theta).double()
            err += abs(c * n - float(z @ grad))
        return err

    e1, e2, e3 = total_error(0.02), total_error(0.01), total_error(0.005)
    assert e1 > 0 and e2 > 0 and e3 > 0
    assert abs(e1 / e2 - expected) < tol, (e1, e2)
    assert abs(e2 / e3 - expected) < tol, (e2, e3)


# ---------------------------------------------------------------------------------- determinism
def _run(run_seed, steps=3, cfg=None):
    A, theta, loss_fn = quad_problem(d=20, seed=4, dtype=torch.float32)
    eng = ZOEngine([("theta", theta)], config=cfg or ZOConfig(num_perturbations=6), run_seed=run_seed)
    for step in range(steps):
        full_step(eng, loss_fn, step, 1e-2)
    return theta.clone()


def test_same_run_seed_same_update_bitwise():
    assert torch.equal(_run(7), _run(7))
    adam = ZOConfig(num_perturbations=6, adam=True, weight_decay=0.1)
    assert torch.equal(_run(7, cfg=adam), _run(7, cfg=adam))
    assert not torch.equal(_run(7), _run(8))


def test_seeds_depend_on_step_and_run_seed():
    eng = ZOEngine([("theta", torch.zeros(3))], config=ZOConfig(num_perturbations=4), run_seed=1)
    assert eng.seeds(0) == eng.seeds(0)
    assert eng.seeds(0) != eng.seeds(1)
    other = ZOEngine([("theta", torch.zeros(3))], config=ZOConfig(num_perturbations=4), run_seed=2)
    assert not set(eng.seeds(0)) & set(other.seeds(0))


# ---------------------------------------------------------------------------------- invariant 2
@pytest.mark.parametrize("dtype,master_dtype,lr", [(torch.float32, None, 1e-3),
                                                     (torch.bfloat16, None, 0.05),
                                                     (torch.bfloat16, torch.float32, 0.05),
                                                     (torch.bfloat16, torch.float32, 1e-3)])
@pytest.mark.parametrize("central", [True, False])
def test_probes_never_drift(dtype, master_dtype, lr, central):
    d = 257
    theta = torch.randn(d, generator=gen(5)).to(dtype)
    theta0 = theta.clone()
    cfg = ZOConfig(num_perturbations=4, master_dtype=master_dtype, central_difference=central)
    eng = ZOEngine([("theta", theta)], config=cfg, run_seed=3)
    master0 = eng.params[0].master.clone()
    assert eng.params[0].master.dtype == (master_dtype or dtype)
    seen = []

    def loss_fn():
        seen.append(theta.clone())
        return theta.float().square().sum()

    checked = 0
    for k in range(50):
        seeds = eng.seeds(k)[: 1 + k % 4]
        seen.clear()
        eng.evaluate(seeds, loss_fn, lr=lr)
        signs = [+1, -1] if central else [+1]
        assert len(seen) == len(seeds) * len(signs)
        if k % 10 == 0:  # the probe really is cast(master + s eps z)
            for j, s in enumerate(seeds):
                z = zn.noise_like(s, PID, theta)
                for m, sign in enumerate(signs):
                    live = seen[j * len(signs) + m]
                    expect = torch.add(master0, z, alpha=sign * lr).to(dtype)
                    assert torch.equal(live, expect)
                    ref = master0.double() + sign * lr * z.double()
                    ulp = ref.abs() * torch.finfo(dtype).eps + 1e-30     # within one ulp of the exact sum
                    assert bool(((live.double() - ref).abs() <= ulp).all())
                    checked += 1
                    if lr >= 0.05 or dtype == torch.float32:
                        assert float((live != theta0).double().mean()) > 0.5   # not vacuous
        assert torch.equal(theta, theta0)
        assert torch.equal(eng.params[0].master, master0)
    assert checked > 0
    assert torch.equal(theta, theta0) and theta.dtype == dtype
    assert torch.equal(eng.params[0].master, master0)


def test_restore_after_exception_in_loss():
    theta = torch.randn(50, generator=gen(6))
    theta0 = theta.clone()
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=2), run_seed=0)

    def bad_loss():
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        eng.evaluate(eng.seeds(0), bad_loss, lr=0.1)
    assert torch.equal(theta, theta0)


# ---------------------------------------------------------------------------------- update formulas
@pytest.mark.parametrize("n", [1, 4, 7])
def test_sgd_update_formula_ratio_one(n):
    A, theta, loss_fn = quad_problem(d=40, seed=7, dtype=torch.float32)
    theta0 = theta.clone()
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=n), run_seed=2)
    lr = 1e-2
    seeds, losses, coefs, _ = full_step(eng, loss_fn, 0, lr)
    assert losses.shape == (n, 2)
    expect = theta0.double().clone()
    for s, (lp, lm) in zip(seeds, losses.double().tolist()):
        expect -= (lp - lm) / (2 * n) * zn.noise_like(s, PID, theta0).double()
    torch.testing.assert_close(theta.double(), expect, rtol=1e-5, atol=1e-6)
    assert not torch.equal(theta, theta0)


def test_sgd_update_formula_general_ratio():
    A, theta, loss_fn = quad_problem(d=30, seed=8, dtype=torch.float32)
    theta0 = theta.clone()
    n, ratio, lr = 5, 0.25, 2e-2
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=n, epsilon_tying_ratio=ratio), run_seed=2)
    seeds, losses, coefs, _ = full_step(eng, loss_fn, 0, lr)
    eps = ratio * lr
    expect = theta0.double().clone()
    for s, (lp, lm) in zip(seeds, losses.double().tolist()):
        expect -= lr * (lp - lm) / (2 * eps * n) * zn.noise_like(s, PID, theta0).double()
    torch.testing.assert_close(theta.double(), expect, rtol=1e-5, atol=1e-6)


def test_fd_coefficients_use_baseline():
    A, theta, loss_fn = quad_problem(d=30, seed=9, dtype=torch.float32)
    n, lr = 6, 1e-2
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=n, central_difference=False), run_seed=4)
    seeds = eng.seeds(0)
    losses = eng.evaluate(seeds, loss_fn, lr=lr)
    assert bool(torch.isnan(losses[:, 1]).all()) and bool(torch.isfinite(losses[:, 0]).all())
    base = eng.baseline(loss_fn)
    assert float(base) == pytest.approx(float(loss_fn()))
    coefs = eng.coefficients(losses, lr=lr, baseline=base)
    expect = (losses[:, 0].double() - base.double()) / (lr * n)
    torch.testing.assert_close(coefs.double(), expect, rtol=1e-6, atol=0)
    with pytest.raises(ValueError):
        eng.coefficients(losses, lr=lr)
    # a different baseline changes the coefficients
    assert not torch.allclose(coefs, eng.coefficients(losses, lr=lr, baseline=base + 1.0))


def test_antithetic_fd_equals_cd_on_half_the_seeds():
    """Docstring: 'FD antithetic: n/2 seeds, each evaluated at +z and -z against L(theta); equals CD
    on n/2 seeds'. So FD-antithetic with n perturbations has the seeds, losses, coefficients and
    update of CD with n/2 perturbations (the baseline cancels)."""
    n, lr = 8, 1e-2
    A, th_fd, loss_fd = quad_problem(d=30, seed=10, dtype=torch.float32)
    _, th_cd, loss_cd = quad_problem(d=30, seed=10, dtype=torch.float32)
    fd = ZOEngine([("theta", th_fd)], config=ZOConfig(num_perturbations=n, central_difference=False,
                                                      antithetic=True), run_seed=6)
    cd = ZOEngine([("theta", th_cd)], config=ZOConfig(num_perturbations=n // 2), run_seed=6)
    assert fd.cfg.num_seeds == n // 2 and fd.seeds(0) == cd.seeds(0)
    seeds = fd.seeds(0)
    l_fd = fd.evaluate(seeds, loss_fd, lr=lr)
    l_cd = cd.evaluate(seeds, loss_cd, lr=lr)
    assert torch.equal(l_fd, l_cd)
    base = fd.baseline(loss_fd)
    c_fd = fd.coefficients(l_fd, lr=lr, baseline=base)
    c_cd = cd.coefficients(l_cd, lr=lr)
    torch.testing.assert_close(c_fd, c_cd, rtol=1e-6, atol=0)
    # the baseline cancels
    torch.testing.assert_close(fd.coefficients(l_fd, lr=lr, baseline=base + 3.0), c_fd, rtol=1e-5, atol=0)
    fd.update(seeds, c_fd, lr=lr)
    cd.update(seeds, c_cd, lr=lr)
    torch.testing.assert_close(th_fd, th_cd, rtol=1e-6, atol=1e-7)


def test_weight_decay_with_zero_coefficients():
    theta = torch.randn(33, generator=gen(11))
    theta0 = theta.clone()
    lr, wd = 0.1, 0.3
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=3, weight_decay=wd), run_seed=0)
    seeds, losses, coefs, _ = full_step(eng, lambda: torch.tensor(1.5), 0, lr)
    assert bool((coefs == 0).all())
    torch.testing.assert_close(theta, theta0 * (1 - lr * wd), rtol=1e-6, atol=0)
    # and without weight decay a zero estimate leaves theta bitwise unchanged
    theta1 = theta.clone()
    eng2 = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=3), run_seed=0)
    full_step(eng2, lambda: torch.tensor(1.5), 0, lr)
    assert torch.equal(theta, theta1)


def test_fp64_master_keeps_fp64_precision():
    theta = torch.randn(33, generator=gen(12), dtype=torch.float64)
    theta0 = theta.clone()
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=3), run_seed=0)
    assert eng.params[0].master.dtype == torch.float64
    full_step(eng, lambda: torch.tensor(1.5, dtype=torch.float64), 0, 0.1)   # zero estimate
    assert torch.equal(theta, theta0)


def test_l2_gradient_normalization():
    A, theta, loss_fn = quad_problem(d=30, seed=13, dtype=torch.float32, scale=0.01)
    theta0 = theta.clone()
    lr = 0.1
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=5, gradient_normalization="l2"),
                   run_seed=1)
    seeds, losses, coefs, info = full_step(eng, loss_fn, 0, lr)
    step = (theta.double() - theta0.double())
    assert float(step.norm()) == pytest.approx(lr, rel=1e-5)
    g = g_hat(eng, seeds, coefs, theta0)
    assert info["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-5)
    torch.testing.assert_close(step, -lr * g / g.norm(), rtol=1e-4, atol=1e-7)


def test_l1_gradient_normalization():
    A, theta, loss_fn = quad_problem(d=30, seed=13, dtype=torch.float32, scale=0.01)
    theta0 = theta.clone()
    lr = 0.1
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=5, gradient_normalization="l1"),
                   run_seed=1)
    full_step(eng, loss_fn, 0, lr)
    assert float((theta.double() - theta0.double()).abs().sum()) == pytest.approx(lr, rel=1e-5)


@pytest.mark.parametrize("clip", [1e-3, 1e3])
def test_grad_clip(clip):
    A, theta, loss_fn = quad_problem(d=30, seed=14, dtype=torch.float32, scale=0.01)
    theta0 = theta.clone()
    lr = 0.1
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=5, grad_clip=clip), run_seed=1)
    seeds, losses, coefs, info = full_step(eng, loss_fn, 0, lr)
    step = theta.double() - theta0.double()
    g = g_hat(eng, seeds, coefs, theta0)
    raw = float(g.norm())
    assert info["grad_norm"] == pytest.approx(raw, rel=1e-5)
    assert float(step.norm()) <= lr * clip * (1 + 1e-5)
    if raw > clip:
        assert float(step.norm()) == pytest.approx(lr * clip, rel=1e-5)
        torch.testing.assert_close(step, -lr * clip * g / raw, rtol=1e-4, atol=1e-9)
    else:
        assert clip == 1e3   # the large clip must leave the step unclipped
        torch.testing.assert_close(step, -lr * g, rtol=1e-4, atol=1e-9)


def test_adam_first_step_moves_by_lr():
    A, theta, loss_fn = quad_problem(d=40, seed=15, dtype=torch.float32, scale=0.01)
    theta0 = theta.clone()
    lr = 1e-2
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=3, adam=True), run_seed=2)
    seeds, losses, coefs, _ = full_step(eng, loss_fn, 0, lr)
    g = g_hat(eng, seeds, coefs, theta0)
    step = theta.double() - theta0.double()
    nz = g.abs() > 1e-6
    assert int(nz.sum()) > 30
    torch.testing.assert_close(step[nz].abs(), torch.full_like(step[nz], lr), rtol=1e-4, atol=0)
    assert bool((torch.sign(step[nz]) == -torch.sign(g[nz])).all())
    assert eng.state.adam_step == 1


def test_probe_dropout_zeroes_about_half():
    d, rate, lr = 4000, 0.5, 0.1
    theta = torch.randn(d, generator=gen(16))
    theta0 = theta.clone()
    diffs = []

    def loss_fn():
        diffs.append(theta - theta0)
        return (theta.double() ** 2).sum()

    n = 4
    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=n, probe_dropout_rate=rate), run_seed=3)
    seeds = eng.seeds(0)
    losses = eng.evaluate(seeds, loss_fn, lr=lr)
    assert len(diffs) == 2 * n
    for j, s in enumerate(seeds):
        keep = zn.dropout_keep(s, PID, d, rate)
        z = zn.noise_flat(s, PID, d)
        for m, sign in enumerate([1, -1]):
            diff = diffs[2 * j + m]
            frac_zero = float((diff == 0).double().mean())
            assert abs(frac_zero - rate) < 5 * math.sqrt(rate * (1 - rate) / d)
            assert bool((diff[~keep] == 0).all())
            torch.testing.assert_close(diff[keep], (sign * lr * z[keep]), rtol=0, atol=1e-5)
    coefs = eng.coefficients(losses, lr=lr)
    expect = (losses[:, 0].double() - losses[:, 1].double()) / (2 * lr * n) / (1 - rate)
    torch.testing.assert_close(coefs.double(), expect, rtol=1e-6, atol=0)


@pytest.mark.parametrize("wd", [0.0, 0.2])
def test_param_mask_freezes_elements(wd):
    d, lr = 60, 0.05
    theta = torch.randn(d, generator=gen(17))
    theta0 = theta.clone()
    mask = torch.rand(d, generator=gen(18)) < 0.5
    diffs = []

    def loss_fn():
        diffs.append(theta - theta0)
        return (theta.double() ** 2).sum()

    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=4, weight_decay=wd, adam=wd > 0),
                   param_masks={"theta": mask}, run_seed=4)
    assert eng.dim == int(mask.sum())
    for step in range(3):
        full_step(eng, loss_fn, step, lr)
    assert len(diffs) == 3 * 4 * 2
    for diff in diffs:
        assert bool((diff[~mask] == 0).all())
        assert bool((diff[mask] != 0).all())      # rademacher probes move every trained element
    assert torch.equal(theta[~mask], theta0[~mask])
    assert bool((theta[mask] != theta0[mask]).all())


def _mean_estimate_projection(cfg, d=20, lr=1e-2):
    """<g_hat, g> / |g|^2 for a linear loss w.theta (exact directional derivatives), read off the update."""
    w = torch.randn(d, generator=gen(21), dtype=torch.float64)
    theta = torch.zeros(d)
    eng = ZOEngine([("theta", theta)], config=cfg, run_seed=1)
    full_step(eng, lambda: theta.double() @ w, 0, lr)
    g = -theta.double() / lr
    return float(g @ w / (w @ w))


def test_probe_dropout_estimate_unbiased():
    # E[z_drop z_drop^T] = (1 - rate) I, undone by the coefficients' 1/(1 - rate)
    proj = _mean_estimate_projection(ZOConfig(num_perturbations=1000, probe_dropout_rate=0.5))
    assert abs(proj - 1.0) < 0.2, proj


def test_probe_dropout_with_probe_normalization_unbiased():
    proj = _mean_estimate_projection(ZOConfig(num_perturbations=1000, probe_dropout_rate=0.5,
                                              probe_normalization=True))
    assert abs(proj - 1.0) < 0.2, proj     # observed ~2.0 = 1 / (1 - rate)


def test_probe_normalization_gives_norm_sqrt_d():
    d, lr = 500, 0.1
    theta = torch.zeros(d)
    seen = []

    def loss_fn():
        seen.append(theta.clone())
        return theta.sum()

    eng = ZOEngine([("theta", theta)], config=ZOConfig(num_perturbations=3, distribution="normal",
                                                       probe_normalization=True), run_seed=5)
    eng.evaluate(eng.seeds(0), loss_fn, lr=lr)
    for live in seen:
        assert float(live.double().norm()) == pytest.approx(lr * math.sqrt(d), rel=1e-5)


# ---------------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_adam():
    cfg = ZOConfig(num_perturbations=4, adam=True, weight_decay=0.01)
    lr = 1e-2
    A, theta, loss_fn = quad_problem(d=30, seed=19, dtype=torch.float32)
    eng = ZOEngine([("theta", theta)], config=cfg, run_seed=8)
    for step in range(3):
        full_step(eng, loss_fn, step, lr)
    buf = io.BytesIO()
    torch.save(eng.state_dict(), buf)
    checkpoint_theta = theta.clone()
    ref = []
    for step in range(3, 6):
        full_step(eng, loss_fn, step, lr)
        ref.append(theta.clone())

    A2 = A.clone()
    theta2 = torch.zeros_like(theta)        # a fresh model; the checkpoint supplies theta

    def loss_fn2():
        t = theta2.double()
        return 0.5 * t @ A2 @ t

    eng2 = ZOEngine([("theta", theta2)], config=cfg, run_seed=8)
    buf.seek(0)
    eng2.load_state_dict(torch.load(buf))
    assert torch.equal(theta2, checkpoint_theta)
    assert eng2.state.adam_step == 3
    for k, step in enumerate(range(3, 6)):
        full_step(eng2, loss_fn2, step, lr)
        assert torch.equal(theta2, ref[k]), k

    # a round trip without Adam moments would not reproduce the steps: the moments matter
    eng3 = ZOEngine([("theta", theta2)], config=cfg, run_seed=8)
    eng3.load_state_dict({"adam_step": 0, "adam_m": {}, "adam_v": {}, "master": {"theta": checkpoint_theta}})
    full_step(eng3, loss_fn2, 3, lr)
    assert not torch.equal(theta2, ref[0])


def test_load_state_dict_requires_every_master():
    eng = ZOEngine([("theta", torch.zeros(3))], config=ZOConfig(), run_seed=0)
    with pytest.raises(ValueError):
        eng.load_state_dict({"adam_step": 0, "adam_m": {}, "adam_v": {}, "master": {}})


# ---------------------------------------------------------------------------------- config validation
@pytest.mark.parametrize("kw", [dict(num_perturbations=0), dict(num_perturbations=-2),
                                dict(distribution="gaussian"),
                                dict(antithetic=True, central_difference=True),
                                dict(antithetic=True, central_difference=False, num_perturbations=3),
                                dict(probe_dropout_rate=1.0), dict(probe_dropout_rate=-0.1),
                                dict(weight_decay=-1e-3), dict(grad_clip=-1.0),
                                dict(epsilon_tying_ratio=0.0), dict(gradient_normalization="l3"),
                                dict(beta1=1.0), dict(beta2=-0.1)])
def test_bad_config_raises(kw):
    with pytest.raises(ValueError):
        ZOConfig(**kw)


def test_good_configs_accepted():
    ZOConfig(antithetic=True, central_difference=False, num_perturbations=4)
    ZOConfig(probe_dropout_rate=0.0, weight_decay=0.0, distribution="uniform", gradient_normalization="l1")


def test_engine_rejects_bad_inputs():
    with pytest.raises(ValueError):
        ZOEngine([("idx", torch.zeros(3, dtype=torch.int64))], config=ZOConfig())
    eng = ZOEngine([("theta", torch.zeros(3))], config=ZOConfig(num_perturbations=4))
    with pytest.raises(ValueError):
        eng.coefficients(torch.zeros(3, 2), lr=0.1)
    with pytest.raises(ValueError):
        eng.update(eng.seeds(0), [0.0, 0.0], lr=0.1)


# ---------------------------------------------------------------------------------- seed splitting
@pytest.mark.parametrize("cfg", [ZOConfig(num_perturbations=7),
                                 ZOConfig(num_perturbations=8, central_difference=False, antithetic=True),
                                 ZOConfig(num_perturbations=6, central_difference=False, adam=True,
                                          probe_dropout_rate=0.25),
                                 ZOConfig(num_perturbations=5, distribution="normal", probe_normalization=True,
                                          gradient_normalization="l2")])
def test_split_evaluation_gives_identical_update(cfg):
    lr = 1e-2
    A, th_one, loss_one = quad_problem(d=30, seed=20, dtype=torch.float32)
    _, th_split, loss_split = quad_problem(d=30, seed=20, dtype=torch.float32)
    _, th_rank, loss_rank = quad_problem(d=30, seed=20, dtype=torch.float32)
    one = ZOEngine([("theta", th_one)], config=cfg, run_seed=12)
    split = ZOEngine([("theta", th_split)], config=cfg, run_seed=12)
    # a "rank" that evaluates only the second share, with no direction cache at all
    rank = ZOEngine([("theta", th_rank)], config=cfg, run_seed=12, cache_budget_bytes=0)
    for step in range(2):
        seeds = one.seeds(step)
        k = len(seeds) // 2
        l_one = one.evaluate(seeds, loss_one, lr=lr)
        l_a = split.evaluate(seeds[:k], loss_split, lr=lr)
        l_b = split.evaluate(seeds[k:], loss_split, lr=lr)
        l_rank_b = rank.evaluate(seeds[k:], loss_rank, lr=lr)
        l_split = torch.cat([l_a, l_b])
        assert torch.equal(l_one.nan_to_num(7.0), l_split.nan_to_num(7.0))
        assert torch.equal(l_rank_b.nan_to_num(7.0), l_b.nan_to_num(7.0))
        base = one.baseline(loss_one) if cfg.needs_baseline else None
        c_one = one.coefficients(l_one, lr=lr, baseline=base)
        c_split = split.coefficients(l_split, lr=lr, baseline=base)
        c_rank = rank.coefficients(l_split, lr=lr, baseline=base)
        assert torch.equal(c_one, c_split) and torch.equal(c_one, c_rank)
        one.update(seeds, c_one, lr=lr)
        split.update(seeds, c_split, lr=lr)
        rank.update(seeds, c_rank, lr=lr)
        assert torch.equal(th_one, th_split)
        assert torch.equal(th_one, th_rank)
    assert one.master_checksum() == split.master_checksum() == rank.master_checksum()


def test_multiple_params_and_bf16_master_update():
    """Two named tensors, bf16 live with an fp32 master: the master accumulates updates smaller than a
    bf16 ulp, the live tensor is always cast(master)."""
    w = torch.ones(64, dtype=torch.bfloat16)
    b = torch.zeros(8, dtype=torch.bfloat16)
    eng = ZOEngine([("w", w), ("b", b)], config=ZOConfig(num_perturbations=2, master_dtype=torch.float32),
                   run_seed=0)
    lr = 1e-4

    def loss_fn():
        return w.float().sum() + 3 * b.float().sum()

    for step in range(3):
        full_step(eng, loss_fn, step, lr)
        for p in eng.params:
            assert torch.equal(p.live, p.master.to(torch.bfloat16))
    m = eng.params[0].master
    assert m.dtype == torch.float32 and not torch.equal(m, torch.ones(64))


def test_master_checksum_is_chunked_and_order_fixed():
    """The replica checksum does not depend on the chunk size beyond float64 rounding, and is the same
    value for the same theta every time (replicas compare it for equality)."""
    import torch
    from zo.estimator import ZOConfig, ZOEngine
    g = torch.Generator().manual_seed(0)
    params = [("a", torch.randn(1000, generator=g)), ("b", torch.randn(37, 11, generator=g))]
    eng = ZOEngine(params, config=ZOConfig(num_perturbations=2))
    whole = sum(float(t.double().sum()) + 1e-3 * float(t.double().abs().sum()) for _, t in params)
    assert abs(eng.master_checksum(chunk_elems=64) - whole) < 1e-9
    assert eng.master_checksum(chunk_elems=64) == eng.master_checksum(chunk_elems=64)


@pytest.mark.parametrize("dropout", [0.0, 0.5])
def test_prefetched_keys_equal_fresh_keys(dropout):
    """`prefetch_keys` hashes this step's update keys and the next step's first-pass probe keys ahead
    of the sync; what it caches equals the keys computed fresh, the pass grouped exactly as
    `evaluate_stacked` groups the seeds, and the cache stays bounded."""
    from zo import kernels as zk
    lin = torch.nn.Linear(5, 3)
    eng = ZOEngine(lin.named_parameters(), config=ZOConfig(num_perturbations=5, probe_dropout_rate=dropout),
                   run_seed=3)
    eng.use_kernels = True                       # keys only: no kernel is launched here
    now, nxt = eng.seeds(0), eng.seeds(1)
    eng.prefetch_keys(now, nxt, models_per_pass=4)
    groups = eng._probe_groups(nxt, 4)
    assert [g for g, _ in groups] == [nxt[0:2], nxt[2:4], nxt[4:5]]
    assert groups[0][1] == [nxt[0], nxt[0], nxt[1], nxt[1]]
    pids = [p.pid for p in eng.params]
    expect = {tuple(now): now, tuple(groups[0][1]): groups[0][1]}
    assert set(eng._keys_cache) == set(expect)
    for t, seeds in expect.items():
        fresh = zk.noise_keys_multi(seeds, pids, device="cpu", dropout=dropout > 0)
        assert torch.equal(eng._keys_cache[t], fresh)
    eng.prefetch_keys(now, nxt, models_per_pass=1)        # one seed per pass (the per-probe path)
    assert (nxt[0],) in eng._keys_cache and (nxt[1],) not in eng._keys_cache
    eng.prefetch_keys(now, [], models_per_pass=4)         # a rank with no seeds this step
    for step in range(2, 40):
        eng.prefetch_keys(eng.seeds(step), eng.seeds(step + 1), models_per_pass=10)
    assert len(eng._keys_cache) <= eng.KEYS_CACHED


def test_stack_layouts_fn_follows_the_micro_batches():
    """`train.evaluate.stack_layouts_fn`: the model's declared layouts for the rows each forward of a pass
    sees (the micro-batches, the last one possibly smaller); none where those forwards would disagree, and
    None for a model that declares nothing."""
    from train.evaluate import stack_layouts_fn
    from zo.layouts import GateTiles

    class Declares:
        def __init__(self):
            self.asked = []

        def stack_layouts(self, batch_rows, models):
            self.asked.append((batch_rows, models))
            return {"R": GateTiles(N=2, D=20, Dk=32, BD=32 if batch_rows >= 256 else 16)}

    m = Declares()
    assert stack_layouts_fn(m, 1024)(4) == {"R": GateTiles(N=2, D=20, Dk=32, BD=32)}
    assert m.asked == [(1024, 4)]
    assert stack_layouts_fn(m, 1024, 512)(4)["R"].BD == 32           # two micro-batches of 512: the same
    assert stack_layouts_fn(m, 1024, 300)(4) == {}                    # 300 x 3 + 124: the tiles would differ
    assert stack_layouts_fn(object(), 1024) is None
    with pytest.raises(ValueError, match="BD dividing Dk"):
        GateTiles(N=2, D=20, Dk=32, BD=24)
    assert GateTiles(N=2, D=20, Dk=32, BD=16).shape(3) == (3, 2, 32, 2, 4, 16)
    assert GateTiles(N=2, D=20, Dk=32, BD=16).fits((4, 2, 20, 20)) and not GateTiles(2, 20, 32, 16).fits((4, 2, 20, 21))


def test_row_order_is_computed_once_per_batch():
    """`stacked_batch_loss` asks a model's `batch_row_order` once per batch, not once per pass: the same
    batch again reuses it; an in-place change of the inputs, a new batch or another model asks again."""
    from tasks import Batch
    from train.evaluate import _row_order

    class Sorts:
        calls = 0

        def batch_row_order(self, tokens):
            Sorts.calls += 1
            return torch.argsort(tokens[:, 0], stable=True)

    inputs = torch.tensor([[3, 1], [0, 2], [2, 2]])
    batch = Batch(inputs=inputs, targets=inputs.clone())
    m = Sorts()
    first = _row_order(m, batch)
    assert torch.equal(first, torch.tensor([1, 2, 0])) and Sorts.calls == 1
    assert _row_order(m, batch) is first and Sorts.calls == 1
    batch.inputs[0, 0] = -1                                  # in place: the order is computed again
    assert torch.equal(_row_order(m, batch), torch.tensor([0, 1, 2])) and Sorts.calls == 2
    assert _row_order(m, Batch(inputs=inputs.clone(), targets=inputs.clone())) is not None and Sorts.calls == 3
    assert _row_order(Sorts(), batch) is not None and Sorts.calls == 4     # another model
    assert _row_order(object(), batch) is None
    with torch.inference_mode():                             # no version counter: ordered every time
        frozen = Batch(inputs=inputs.clone(), targets=inputs.clone())
    _row_order(m, frozen)
    _row_order(m, frozen)
    assert Sorts.calls == 6


def test_step_args_hold_the_steps_values_in_one_buffer():
    """fill_step_args writes a step's keys, probe coefficients, scales, coefficient factor and lr into
    views of one buffer, equal to what the launch-argument path passes; a pass layout that does not
    match the seeds is refused."""
    import numpy as np
    eng = ZOEngine([("w", torch.zeros(4, 8)), ("b", torch.zeros(8))], config=ZOConfig(num_perturbations=3),
                   run_seed=2)
    eng.use_kernels = True          # no kernel runs here: only the buffers' layout and values
    args = eng.step_args(3, models_per_pass=4)        # passes of 2 seeds (4 models) and 1 seed (2 models)
    assert [k.shape[1] for k in args.pass_keys] == [4, 2] and args.update_keys.shape == (2, 3, 2)
    seeds = eng.seeds(5)
    eng.fill_step_args(args, seeds, seeds, lr=0.05, models_per_pass=4)
    for (chunk, model_seeds), keys, alphas in zip(eng._probe_groups(seeds, 4), args.pass_keys, args.pass_alphas):
        assert np.array_equal(keys.numpy(), eng.host_keys(model_seeds))
        want = torch.tensor([sg * 0.05 for _ in chunk for sg in (1.0, -1.0)], dtype=torch.float32)
        assert torch.equal(alphas, want)
    assert np.array_equal(args.update_keys.numpy(), eng.host_keys(seeds))
    assert torch.equal(args.update_scales, torch.ones(3, dtype=torch.float64))
    assert args.coef_scale.item() == eng.coefficient_scale(0.05) == 1.0 / (2.0 * 0.05 * 3)
    assert args.lr.item() == torch.tensor(0.05, dtype=torch.float32).item()
    # the factor gives the coefficients of the lr path, bit for bit
    losses = torch.tensor([[1.0, 0.5], [0.25, 0.75], [2.0, 2.0]])
    assert torch.equal(eng.coefficients(losses, scale=args.coef_scale), eng.coefficients(losses, lr=0.05))
    with pytest.raises(ValueError, match="exactly one"):
        eng.coefficients(losses, lr=0.05, scale=args.coef_scale)
    with pytest.raises(ValueError, match="laid out"):
        eng.fill_step_args(args, seeds, seeds[:2], lr=0.05, models_per_pass=4)
