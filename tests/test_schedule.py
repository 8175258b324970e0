"""Tests for msseg.diffusion.schedule against plain float64 NumPy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.diffusion import schedule as sd
from msseg.diffusion.schedule import Target

SHAPE = (2, 4, 4, 4, 3)
# the targets with an exact value to regress to (the logits of a one-hot mask are infinite)
REGRESSION_TARGETS = [t for t in Target if t is not Target.LOGITS]


def ref_betas(kind, T):
    if kind == "linear":
        return np.minimum(np.linspace(1e-4 * 1000 / T, 0.02 * 1000 / T, T), 0.999)
    f = [math.cos((i / T + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(T + 1)]
    return np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(T)])


def ref_tables(kind, T):
    b = ref_betas(kind, T)
    ab = np.cumprod(1 - b)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    return dict(
        b=b,
        ab=ab,
        ab_prev=ab_prev,
        post_var=b * (1 - ab_prev) / (1 - ab),
        coef1=b * np.sqrt(ab_prev) / (1 - ab),
        coef2=(1 - ab_prev) * np.sqrt(1 - b) / (1 - ab),
    )


def bcast(v, t):
    return np.asarray(v)[np.asarray(t)].reshape(-1, *([1] * (len(SHAPE) - 1)))


def random_inputs(T, seed=0, batch=SHAPE[0]):
    rng = np.random.default_rng(seed)
    x0 = rng.uniform(-1, 1, SHAPE)
    eps = rng.standard_normal(SHAPE)
    t = rng.integers(0, T, batch)
    return x0, eps, t


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("T", [10, 1000])
def test_schedule_identities(kind, T):
    s = sd.make_schedule(kind, T)
    r = ref_tables(kind, T)
    assert s.num_timesteps == T
    for name in sd.TABLE_NAMES:
        table = getattr(s, name)
        assert table.dtype == np.float64 and table.shape == (T,), name
    np.testing.assert_allclose(s.betas, r["b"], rtol=1e-12)
    assert np.all((s.betas > 0) & (s.betas < 1))
    np.testing.assert_allclose(s.alphas, 1 - s.betas, rtol=1e-15)
    np.testing.assert_allclose(s.alphas_cumprod, np.cumprod(s.alphas), rtol=1e-12)
    assert np.all(np.diff(s.alphas_cumprod) < 0)
    np.testing.assert_allclose(s.alphas_cumprod_prev, r["ab_prev"], rtol=1e-12)
    np.testing.assert_allclose(s.log_alphas_cumprod, np.log(r["ab"]), rtol=1e-10)
    np.testing.assert_allclose(s.sqrt_alphas_cumprod, np.sqrt(r["ab"]), rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod, np.sqrt(1 - r["ab"]), rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_recip_alphas_cumprod, 1 / np.sqrt(r["ab"]), rtol=1e-10)
    np.testing.assert_allclose(s.sqrt_recipm1_alphas_cumprod, np.sqrt(1 / r["ab"] - 1), rtol=1e-10)
    np.testing.assert_allclose(s.posterior_variance, r["post_var"], rtol=1e-12, atol=1e-300)
    assert s.posterior_variance[0] == 0
    expected_log = np.log(np.concatenate([[r["post_var"][1]], r["post_var"][1:]]))
    np.testing.assert_allclose(s.posterior_log_variance_clipped, expected_log, rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef1, r["coef1"], rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef2, r["coef2"], rtol=1e-12)


def test_linear_endpoints_and_scaling():
    s = sd.make_schedule("linear", 1000)
    assert s.betas[0] == pytest.approx(1e-4, rel=1e-12)
    assert s.betas[-1] == pytest.approx(0.02, rel=1e-12)
    s100 = sd.make_schedule("linear", 100)
    np.testing.assert_allclose(s100.betas[[0, -1]], [1e-3, 0.2], rtol=1e-12)
    # Same curve for any T: ab at the same fraction of the chain is close.
    np.testing.assert_allclose(s100.alphas_cumprod[49], s.alphas_cumprod[499], rtol=0.1)


def test_cosine_endpoints():
    s = sd.make_schedule("cosine", 1000)
    assert s.betas[-1] == pytest.approx(0.999)
    assert s.alphas_cumprod[0] > 0.9999
    assert s.alphas_cumprod[-1] < 1e-8


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        sd.make_schedule("sigmoid", 10)
    with pytest.raises(ValueError):
        sd.make_schedule("linear", 0)
    with pytest.raises(ValueError, match="unknown schedule table"):
        sd.make_schedule("linear", 10).table("gammas")


def test_table_float32_cached_and_jit_safe():
    s = sd.make_schedule("cosine", 50)
    inside = jax.jit(lambda t: s.table("posterior_mean_coef1")[t])(jnp.int32(3))  # first use
    tbl = s.table("posterior_mean_coef1")
    assert isinstance(tbl, jax.Array) and not isinstance(tbl, jax.core.Tracer)
    assert tbl.dtype == jnp.float32 and tbl.shape == (50,)
    assert s.table("posterior_mean_coef1") is tbl
    np.testing.assert_allclose(np.asarray(tbl), s.posterior_mean_coef1, rtol=1e-6)
    assert float(inside) == pytest.approx(s.posterior_mean_coef1[3], rel=1e-6)


def test_extract_shape():
    table = jnp.arange(10.0)
    out = sd.extract(table, jnp.array([1, 7], jnp.int32), 5)
    assert out.shape == (2, 1, 1, 1, 1)
    np.testing.assert_array_equal(np.asarray(out).ravel(), [1.0, 7.0])


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_q_sample_exact_and_statistics(kind):
    T = 1000
    s = sd.make_schedule(kind, T)
    ab = ref_tables(kind, T)["ab"]
    x0, eps, t = random_inputs(T)
    got = sd.q_sample(
        s, jnp.asarray(x0, jnp.float32), jnp.asarray(t), jnp.asarray(eps, jnp.float32)
    )
    want = np.sqrt(bcast(ab, t)) * x0 + np.sqrt(1 - bcast(ab, t)) * eps
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)

    # Statistics over many draws: mean sqrt(ab) x0, variance 1 - ab.
    n = 200_000
    t_stat = jnp.array([10, 500], jnp.int32)
    x0_stat = jnp.array([0.7, -0.3], jnp.float32)[:, None]
    noise = jax.random.normal(jax.random.key(0), (2, n))
    xt = np.asarray(sd.q_sample(s, x0_stat, t_stat, noise), np.float64)
    ab_t = ab[[10, 500]]
    np.testing.assert_allclose(xt.mean(1), np.sqrt(ab_t) * [0.7, -0.3], atol=5 / math.sqrt(n))
    np.testing.assert_allclose(xt.var(1), 1 - ab_t, rtol=0.02)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_conversions_invert_each_other(kind):
    T = 1000
    s = sd.make_schedule(kind, T)
    ab = ref_tables(kind, T)["ab"]
    x0, eps, _ = random_inputs(T, seed=1)
    for t in ([0, 999], [1, 500], [250, 990], [10, 900]):
        t = np.array(t)
        a = bcast(ab, t)
        xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
        v = np.sqrt(a) * eps - np.sqrt(1 - a) * x0
        # x0 from (x_t, eps) divides by sqrt(ab): float32 error grows as 1/sqrt(ab).
        tol_x0 = 2e-6 * (1 + np.abs(xt) + np.abs(eps)) / np.sqrt(a)
        j = {
            k: jnp.asarray(val, jnp.float32) for k, val in dict(x0=x0, eps=eps, xt=xt, v=v).items()
        }
        tj = jnp.asarray(t, jnp.int32)
        got_x0 = np.asarray(sd.x0_from_eps(s, j["xt"], tj, j["eps"]))
        assert np.all(np.abs(got_x0 - x0) <= tol_x0)
        np.testing.assert_allclose(sd.eps_from_x0(s, j["xt"], tj, j["x0"]), eps, atol=1e-4)
        np.testing.assert_allclose(sd.v_from_x0_eps(s, j["x0"], j["eps"], tj), v, atol=1e-5)
        np.testing.assert_allclose(sd.x0_from_v(s, j["xt"], tj, j["v"]), x0, atol=1e-5)
        np.testing.assert_allclose(sd.eps_from_v(s, j["xt"], tj, j["v"]), eps, atol=1e-5)
        # Round trips through the module only.
        eps_rt = sd.eps_from_x0(s, j["xt"], tj, sd.x0_from_eps(s, j["xt"], tj, j["eps"]))
        np.testing.assert_allclose(eps_rt, eps, atol=1e-4)
        v_rt = sd.v_from_x0_eps(s, j["x0"], sd.eps_from_v(s, j["xt"], tj, j["v"]), tj)
        np.testing.assert_allclose(v_rt, v, atol=1e-5)
        x0_rt = sd.x0_from_v(s, j["xt"], tj, sd.v_from_x0_eps(s, j["x0"], j["eps"], tj))
        np.testing.assert_allclose(x0_rt, x0, atol=1e-5)


@pytest.mark.parametrize("target", REGRESSION_TARGETS)
def test_target_from_and_to_x0_eps(target):
    T = 1000
    s = sd.make_schedule("cosine", T)
    ab = ref_tables("cosine", T)["ab"]
    x0, eps, _ = random_inputs(T, seed=2)
    t = np.array([3, 700])
    a = bcast(ab, t)
    xt = np.sqrt(a) * x0 + np.sqrt(1 - a) * eps
    want = {
        Target.EPS: eps,
        Target.X0: x0,
        Target.V: np.sqrt(a) * eps - np.sqrt(1 - a) * x0,
    }[target]
    x0j, epsj, xtj = (jnp.asarray(v, jnp.float32) for v in (x0, eps, xt))
    tj = jnp.asarray(t, jnp.int32)
    pred = sd.target_from(s, x0j, epsj, tj, target)
    np.testing.assert_allclose(pred, want, atol=1e-5)
    got_x0, got_eps = sd.to_x0_eps(s, xtj, tj, jnp.asarray(want, jnp.float32), target)
    np.testing.assert_allclose(got_x0, x0, atol=1e-4)
    np.testing.assert_allclose(got_eps, eps, atol=1e-4)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("T", [10, 1000])
def test_q_posterior_matches_numpy(kind, T):
    s = sd.make_schedule(kind, T)
    b = ref_betas(kind, T)
    rng = np.random.default_rng(3)
    x0 = rng.uniform(-1, 1, SHAPE)
    xt = rng.standard_normal(SHAPE)
    for t in (np.array([0, T - 1]), rng.integers(0, T, 2), np.array([1, T // 2])):
        a = np.cumprod(1 - b)
        a_prev = np.concatenate([[1.0], a[:-1]])
        bt, at, apt = bcast(b, t), bcast(a, t), bcast(a_prev, t)
        mean = (np.sqrt(apt) * bt / (1 - at)) * x0 + (np.sqrt(1 - bt) * (1 - apt) / (1 - at)) * xt
        var = bt * (1 - apt) / (1 - at)
        pv = b * (1 - a_prev) / (1 - a)
        logvar = bcast(np.log(np.where(np.arange(T) == 0, pv[1], pv)), t)
        got = sd.q_posterior(
            s, jnp.asarray(x0, jnp.float32), jnp.asarray(xt, jnp.float32), jnp.asarray(t)
        )
        assert got[0].shape == SHAPE and got[1].shape == (2, 1, 1, 1, 1)
        np.testing.assert_allclose(got[0], mean, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(got[1], var, rtol=1e-5, atol=1e-30)
        np.testing.assert_allclose(got[2], logvar, rtol=1e-5)


def test_functions_jit_with_traced_t():
    s = sd.make_schedule("cosine", 100)
    x0, eps, _ = random_inputs(100, seed=4)
    x0j, epsj = jnp.asarray(x0, jnp.float32), jnp.asarray(eps, jnp.float32)

    @jax.jit
    def f(t):
        xt = sd.q_sample(s, x0j, t, epsj)
        v = sd.target_from(s, x0j, epsj, t, Target.V)
        return sd.to_x0_eps(s, xt, t, v, Target.V)[0], sd.q_posterior(s, x0j, xt, t)[0]

    got_x0, mean = f(jnp.array([5, 60], jnp.int32))
    np.testing.assert_allclose(got_x0, x0, atol=1e-5)
    assert mean.shape == SHAPE and mean.dtype == jnp.float32
