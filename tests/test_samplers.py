"""Tests for msseg.diffusion.samplers: single steps against float64 NumPy, oracle recovery."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.diffusion import samplers
from msseg.diffusion import schedule as sd
from msseg.diffusion.schedule import Target

SHAPE = (2, 4, 4, 4, 3)
# the targets with an exact value to regress to (the logits of a one-hot mask are infinite)
REGRESSION_TARGETS = [t for t in Target if t is not Target.LOGITS]


def ref_ab(kind, T):
    if kind == "linear":
        b = np.minimum(np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T), 0.999)
    else:
        f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
        b = np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)])
    return b, np.cumprod(1 - b)


def bcast(v, t):
    return np.asarray(v)[np.asarray(t)].reshape(-1, *([1] * (len(SHAPE) - 1)))


def f32(*arrays):
    return tuple(jnp.asarray(a, jnp.float32) for a in arrays)


def oracle(s, x0, target):
    """A denoiser that knows x0: it returns the exact `target` for the current x_t."""

    def denoise(x_t, t):
        assert t.shape == (x_t.shape[0],) and t.dtype == jnp.int32
        eps = sd.eps_from_x0(s, x_t, t, x0)
        return sd.target_from(s, x0, eps, t, target)

    return denoise


def random_x0_noise(seed=0):
    rng = np.random.default_rng(seed)
    return f32(rng.uniform(-1, 1, SHAPE), rng.standard_normal(SHAPE))


def fast_key(seed):
    """An rbg key: XLA:CPU compiles its sampling far faster than threefry's (oracle tests)."""
    return jax.random.key(seed, impl="rbg")


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddpm_step_matches_numpy(kind):
    T = 1000
    s = sd.make_schedule(kind, T)
    b, ab = ref_ab(kind, T)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    rng = np.random.default_rng(0)
    xt, x0, z = rng.standard_normal(SHAPE), rng.uniform(-1, 1, SHAPE), rng.standard_normal(SHAPE)
    for t in ([0, 999], [1, 2], [500, 17]):
        t = np.array(t)
        bt, at, apt = bcast(b, t), bcast(ab, t), bcast(ab_prev, t)
        mean = (np.sqrt(apt) * bt / (1 - at)) * x0 + (np.sqrt(1 - bt) * (1 - apt) / (1 - at)) * xt
        var = b * (1 - ab_prev) / (1 - ab)
        std = np.sqrt(bcast(np.where(np.arange(T) == 0, var[1], var), t)) * (bcast(t, [0, 1]) > 0)
        want = mean + std * z
        got = samplers.ddpm_step(s, *f32(xt), jnp.asarray(t, jnp.int32), *f32(x0, z))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_ddim_step_matches_numpy(eta):
    T = 1000
    s = sd.make_schedule("cosine", T)
    _, ab = ref_ab("cosine", T)
    ab_ext = np.append(ab, 1.0)  # index -1 -> ab' = 1
    rng = np.random.default_rng(1)
    xt, x0, eps, z = (rng.standard_normal(SHAPE) for _ in range(4))
    for t, tn in (([999, 5], [949, 4]), ([1, 0], [0, -1]), ([600, 300], [-1, 100])):
        t, tn = np.array(t), np.array(tn)
        a, an = bcast(ab, t), bcast(ab_ext, tn)
        sigma = eta * np.sqrt((1 - an) / (1 - a)) * np.sqrt(1 - a / an)
        want = np.sqrt(an) * x0 + np.sqrt(1 - an - sigma**2) * eps + sigma * z
        got = samplers.ddim_step(
            s, *f32(xt), jnp.asarray(t), jnp.asarray(tn), *f32(x0, eps), eta, *f32(z)
        )
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # The last step (t_next = -1) returns x0_hat exactly.
    last = samplers.ddim_step(
        s, *f32(xt), jnp.array([3, 0]), jnp.array([-1, -1]), *f32(x0, eps), eta, *f32(z)
    )
    np.testing.assert_array_equal(last, np.asarray(f32(x0)[0]))


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_eta1_full_steps_is_ancestral(kind):
    T = 1000
    s = sd.make_schedule(kind, T)
    b, ab = ref_ab(kind, T)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    rng = np.random.default_rng(2)
    xt, x0 = rng.standard_normal(SHAPE), rng.uniform(-1, 1, SHAPE)
    zeros, ones = jnp.zeros(SHAPE), jnp.ones(SHAPE)
    for t in ([1, 2], [10, 100], [500, 998], [999, 700]):
        t = np.array(t)
        tj, tnj = jnp.asarray(t, jnp.int32), jnp.asarray(t - 1, jnp.int32)
        xtj, x0j = f32(xt, x0)
        eps_hat = sd.eps_from_x0(s, xtj, tj, x0j)
        mean = samplers.ddim_step(s, xtj, tj, tnj, x0j, eps_hat, 1.0, zeros)
        bt, at, apt = bcast(b, t), bcast(ab, t), bcast(ab_prev, t)
        post_mean = (np.sqrt(apt) * bt / (1 - at)) * x0 + (
            np.sqrt(1 - bt) * (1 - apt) / (1 - at)
        ) * xt
        np.testing.assert_allclose(mean, post_mean, rtol=1e-4, atol=2e-5)
        # With x0_hat = eps_hat = 0 and unit noise the step returns sigma.
        sigma = samplers.ddim_step(s, xtj, tj, tnj, zeros, zeros, 1.0, ones)[:, 0, 0, 0, 0]
        post_var = bt * (1 - apt) / (1 - at)
        np.testing.assert_allclose(np.asarray(sigma, np.float64) ** 2, post_var.ravel(), rtol=1e-4)


@pytest.mark.parametrize(
    "T,steps,t_start",
    [(1000, 50, None), (1000, 7, None), (20, 20, None), (20, 5, 9), (100, 1, None), (10, 2, 3)],
)
def test_ddim_timesteps_properties(T, steps, t_start):
    ts = samplers.ddim_timesteps(T, steps, t_start)
    t0 = T - 1 if t_start is None else t_start
    assert ts.dtype == np.int32 and ts.shape == (steps,)
    assert ts[0] == t0
    if steps > 1:
        assert ts[-1] == 0
        d = -np.diff(ts)
        assert np.all(d >= 1) and d.max() - d.min() <= 1  # strictly decreasing, evenly spaced
    assert len(np.unique(ts)) == steps
    if steps == t0 + 1:
        np.testing.assert_array_equal(ts, np.arange(t0, -1, -1))


def test_ddim_timesteps_errors():
    with pytest.raises(ValueError):
        samplers.ddim_timesteps(10, 11)
    with pytest.raises(ValueError):
        samplers.ddim_timesteps(10, 5, t_start=3)
    with pytest.raises(ValueError):
        samplers.ddim_timesteps(10, 0)
    with pytest.raises(ValueError):
        samplers.ddim_timesteps(10, 2, t_start=10)


@pytest.mark.parametrize("target", REGRESSION_TARGETS)
@pytest.mark.parametrize("steps", [5, 50])
def test_ddim_oracle_recovers_x0(target, steps):
    s = sd.make_schedule("cosine", 1000)
    x0, noise = random_x0_noise(0)
    x_T = sd.q_sample(s, x0, jnp.full((2,), 999, jnp.int32), noise)
    out = samplers.ddim_sample(
        oracle(s, x0, target), s, x_T, fast_key(2), steps=steps, target=target
    )
    np.testing.assert_allclose(out, x0, atol=1e-4)


@pytest.mark.parametrize("target", REGRESSION_TARGETS)
def test_ddpm_oracle_recovers_x0(target):
    s = sd.make_schedule("linear", 50)
    x0, noise = random_x0_noise(3)
    x_T = sd.q_sample(s, x0, jnp.full((2,), 49, jnp.int32), noise)
    out = samplers.ddpm_sample(oracle(s, x0, target), s, x_T, fast_key(5), target=target)
    np.testing.assert_allclose(out, x0, atol=1e-4)


@pytest.mark.parametrize("t_start", [0, 40, 300])
def test_t_start_truncation_oracle(t_start):
    s = sd.make_schedule("cosine", 1000)
    x0, noise = random_x0_noise(6)
    x_t = sd.q_sample(s, x0, jnp.full((2,), t_start, jnp.int32), noise)
    den = oracle(s, x0, Target.V)
    for eta in (0.0, 0.5):
        out = samplers.ddim_sample(
            den,
            s,
            x_t,
            fast_key(8),
            steps=min(5, t_start + 1),
            eta=eta,
            target=Target.V,
            t_start=t_start,
        )
        np.testing.assert_allclose(out, x0, atol=1e-4)
    if t_start == 40:
        out = samplers.ddpm_sample(den, s, x_t, fast_key(8), target=Target.V, t_start=t_start)
        np.testing.assert_allclose(out, x0, atol=1e-4)


def test_denoiser_sees_the_step_timesteps():
    s = sd.make_schedule("cosine", 20)
    seen = []

    def denoise(x, t):
        jax.debug.callback(lambda t: seen.append(np.asarray(t)), t, ordered=True)
        return jnp.zeros_like(x)

    x = jnp.zeros(SHAPE)
    samplers.ddim_sample(denoise, s, x, fast_key(0), steps=4, target=Target.EPS, t_start=12)
    jax.effects_barrier()
    np.testing.assert_array_equal(np.stack(seen), np.repeat([[12], [8], [4], [0]], 2, axis=1))
    seen.clear()
    samplers.ddpm_sample(denoise, s, x, fast_key(0), target=Target.EPS, t_start=3)
    jax.effects_barrier()
    np.testing.assert_array_equal(np.stack(seen)[:, 0], [3, 2, 1, 0])


def _toy_denoiser(x, t):
    return 0.5 * x + 0.01 * t[:, None, None, None, None].astype(jnp.float32)


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_jit_scan_shape_and_keys(name):
    s = sd.make_schedule("cosine", 20)

    def sample(x, key):
        if name == "ddpm":
            return samplers.ddpm_sample(_toy_denoiser, s, x, key, target=Target.EPS)
        return samplers.ddim_sample(_toy_denoiser, s, x, key, steps=5, eta=1.0, target=Target.V)

    x = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
    assert "scan" in str(jax.make_jaxpr(sample)(x, jax.random.key(1)))
    f = jax.jit(sample)
    a = f(x, jax.random.key(1))
    assert a.shape == SHAPE and a.dtype == jnp.float32
    assert np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1)  # last step returns clipped x0_hat
    np.testing.assert_array_equal(a, f(x, jax.random.key(1)))
    assert not np.allclose(a, f(x, jax.random.key(2)))


def test_ddim_eta0_is_deterministic_across_keys():
    s = sd.make_schedule("linear", 20)
    x = jnp.asarray(np.random.default_rng(0).standard_normal(SHAPE), jnp.float32)
    run = jax.jit(lambda k: samplers.ddim_sample(_toy_denoiser, s, x, k, steps=6, target=Target.X0))
    np.testing.assert_array_equal(run(jax.random.key(1)), run(jax.random.key(2)))


@pytest.mark.parametrize("target", [Target.EPS, Target.X0])
def test_ddim_eta1_all_steps_equals_ddpm_sampler(target):
    # Both samplers draw step i's noise from split(key)[i]: with eta = 1 and S = T the DDIM
    # chain is the ancestral chain, sample for sample.
    s = sd.make_schedule("linear", 20)
    x = jnp.asarray(np.random.default_rng(9).standard_normal(SHAPE), jnp.float32)
    key = fast_key(3)
    a = samplers.ddpm_sample(_toy_denoiser, s, x, key, target=target)
    b = samplers.ddim_sample(_toy_denoiser, s, x, key, steps=20, eta=1.0, target=target)
    np.testing.assert_allclose(a, b, atol=1e-4)
