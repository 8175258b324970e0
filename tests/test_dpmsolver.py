"""DPM-Solver++(2M) ("dpmpp2m"): its update against DDIM and closed forms, its order of
accuracy, its place among the samplers, and both sampling routes of an exported model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from msseg.diffusion import sampler_config as sc
from msseg.diffusion import samplers
from msseg.diffusion import schedule as sch
from msseg.diffusion import segment as seg
from msseg.diffusion.schedule import Target


def _alpha_sigma(s: sch.Schedule, t) -> tuple[np.ndarray, np.ndarray]:
    """float64 (alpha_t, sigma_t) of the schedule; t = -1 gives (1, 0)."""
    t = np.asarray(t)
    a = np.where(t < 0, 1.0, s.sqrt_alphas_cumprod[np.maximum(t, 0)])
    g = np.where(t < 0, 0.0, s.sqrt_one_minus_alphas_cumprod[np.maximum(t, 0)])
    return a, g


# ---------------------------------------------------------------------------------------
# The update itself.


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_the_first_order_step_is_ddims_deterministic_step_and_the_last_returns_the_estimate(
    kind,
):
    """Without a previous estimate the update is DDIM's (eta = 0) for any estimate: the same
    coefficients, written as (sigma'/sigma) x + alpha' (1 - e^{-h}) x0."""
    s = sch.make_schedule(kind, 1000)
    rng = np.random.default_rng(0)
    pairs = [(999, 998), (999, 749), (750, 500), (400, 399), (250, 0), (10, 3), (1, 0)]
    t = jnp.asarray([p[0] for p in pairs], jnp.int32)
    t_next = jnp.asarray([p[1] for p in pairs], jnp.int32)
    x = jnp.asarray(rng.normal(size=(len(pairs), 5, 3)), jnp.float32)
    x0 = jnp.asarray(rng.uniform(-1, 1, size=x.shape), jnp.float32)
    none = jnp.full(t.shape, -1, jnp.int32)
    got = samplers.dpmpp2m_step(s, x, t, t_next, x0, jnp.zeros_like(x0), none)
    eps = sch.eps_from_x0(s, x, t, x0)
    want = samplers.ddim_step(s, x, t, t_next, x0, eps, 0.0, jnp.zeros_like(x))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-5)
    # the last step (to t = -1) returns the estimate, whatever the previous one
    end = jnp.full(t.shape, -1, jnp.int32)
    prev = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
    t_prev = jnp.minimum(t + 50, 999)
    last = samplers.dpmpp2m_step(s, x, t, end, x0, prev, t_prev)
    np.testing.assert_array_equal(last, x0)


def test_the_second_order_step_extrapolates_the_two_estimates_in_log_snr():
    """D = (1 + 1/(2r)) x0_i - 1/(2r) x0_{i-1}, r = h_{i-1}/h_i in lambda = log(alpha/sigma),
    computed here in float64 from the schedule's tables."""
    s = sch.make_schedule("linear", 1000)
    t_prev, t, t_next = (
        np.array([999, 600, 300]),
        np.array([749, 400, 200]),
        np.array([500, 200, 0]),
    )
    rng = np.random.default_rng(1)
    x, x0, x0_prev = (rng.normal(size=(3, 4)) for _ in range(3))
    lam = {k: np.log(np.divide(*_alpha_sigma(s, v))) for k, v in
           {"p": t_prev, "t": t, "n": t_next}.items()}  # fmt: skip
    h, h_prev = lam["n"] - lam["t"], lam["t"] - lam["p"]
    c = (h / h_prev / 2)[:, None]
    d = (1 + c) * x0 - c * x0_prev
    (a_n, g_n), (_, g_t) = _alpha_sigma(s, t_next), _alpha_sigma(s, t)
    want = (g_n / g_t)[:, None] * x + (a_n * (1 - np.exp(-h)))[:, None] * d
    f32 = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    i32 = lambda v: jnp.asarray(v, jnp.int32)  # noqa: E731
    got = samplers.dpmpp2m_step(s, f32(x), i32(t), i32(t_next), f32(x0), f32(x0_prev), i32(t_prev))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    first = samplers.dpmpp2m_step(s, f32(x), i32(t), i32(t_next), f32(x0), f32(x0_prev), i32(-t))
    assert np.abs(np.asarray(first) - want).max() > 1e-3  # the previous estimate matters


# ---------------------------------------------------------------------------------------
# Closed forms: a constant estimate, and Gaussian data.


@pytest.mark.parametrize("kind,scale", [("linear", 1.0), ("cosine", 0.5)])
def test_a_constant_estimate_follows_the_exact_ode_trajectory_and_is_returned(kind, scale):
    """For a constant x0 the ODE solution is x_t = alpha_t b x0 + sigma_t eps_0 (eps_0 fixed by
    x_T): first and second order coincide with DDIM's step there, and each intermediate state
    must lie on it; the chain returns x0 itself."""
    s = sch.make_schedule(kind, 1000)
    rng = np.random.default_rng(2)
    c = jnp.asarray(rng.uniform(-0.9, 0.9, size=(2, 4, 4, 4, 3)), jnp.float32)
    x_T = jnp.asarray(rng.normal(size=c.shape), jnp.float32)
    ts, ts_next = samplers.chain_timesteps("dpmpp2m", 1000, 6)
    a_T, g_T = _alpha_sigma(s, ts[0])
    eps0 = (np.asarray(x_T, np.float64) - a_T * scale * np.asarray(c, np.float64)) / g_T

    def denoise(x, t):
        return jnp.broadcast_to(c, x.shape)

    for i in range(1, len(ts)):
        got = samplers.dpmpp2m_chain(lambda x, t: scale * c, s, x_T, ts[:i], ts_next[:i])
        a, g = _alpha_sigma(s, ts_next[i - 1])
        np.testing.assert_allclose(got, a * scale * c + g * eps0, rtol=1e-5, atol=2e-5)
        ddim = samplers.sample_chain(
            denoise, s, x_T, jax.random.key(0), ts[:i], ts_next[:i], eta=0.0, ancestral=False,
            target=Target.X0, scale=scale,
        )  # fmt: skip
        np.testing.assert_allclose(got, scale * ddim, rtol=1e-5, atol=2e-5)
    out = samplers.dpmpp2m_sample(denoise, s, x_T, steps=6, target=Target.X0, scale=scale)
    np.testing.assert_array_equal(out, c)


def _identity_exact(s: sch.Schedule, x_T: np.ndarray) -> np.ndarray:
    """The exact chain result for the estimate x0_hat(x_t, t) = x_t, from T-1 to the read-out
    at t = 0. In u = x/sigma the ODE is du/dlambda = e^lambda x0_hat = e^lambda sigma u = alpha u,
    alpha = (1 + e^{-2 lambda})^{-1/2}, whose integral is asinh(e^lambda):
    x_t = (sigma_t / sigma_s) x_s exp(asinh(e^lambda_t) - asinh(e^lambda_s))."""
    (a_T, g_T), (a_0, g_0) = _alpha_sigma(s, s.num_timesteps - 1), _alpha_sigma(s, 0)
    return g_0 / g_T * x_T * np.exp(np.arcsinh(a_0 / g_0) - np.arcsinh(a_T / g_T))


def test_dpm_solver_is_second_order_and_beats_ddim_at_the_same_steps():
    """A linear estimate with a closed-form ODE solution (homogeneous: the relative error does
    not depend on x_T). On the cosine schedule DPM-Solver++ is closer than DDIM at 5, 10 and
    20 steps, and its error falls ~4-6x per doubling (DDIM's ~2x).

    Not every case is this kind on DDIM's grid: its last interval (T/(steps-1) down to t = 0)
    spans a large share of the log-SNR range (linear schedule, 10 steps: lambda 1.0 → 4.6),
    and where the estimate still changes there the 2M extrapolation can lose to DDIM (e.g.
    this case on the linear schedule at 10 steps)."""
    s = sch.make_schedule("cosine", 1000)
    x_T = np.random.default_rng(3).normal(size=(4, 256))
    exact = _identity_exact(s, x_T)
    x = jnp.asarray(x_T, jnp.float32)

    def denoise(x_t, t):
        return x_t

    def err(out):
        return float(np.abs(np.asarray(out, np.float64) - exact).max() / np.abs(exact).max())

    dpm, ddim = {}, {}
    for n in (5, 10, 20, 40):
        kw = dict(steps=n, target=Target.X0, clip_x0=False)
        dpm[n] = err(samplers.dpmpp2m_sample(denoise, s, x, **kw))
        ddim[n] = err(samplers.ddim_sample(denoise, s, x, jax.random.key(0), **kw))
    assert dpm[5] < 0.75 * ddim[5] and dpm[10] < 0.75 * ddim[10], (dpm, ddim)
    assert dpm[20] < 0.4 * ddim[20] and dpm[40] < 0.2 * ddim[40], (dpm, ddim)
    assert dpm[10] / dpm[20] > 3 and dpm[20] / dpm[40] > 3, dpm  # second order
    assert 1.5 < ddim[10] / ddim[20] < 2.5, ddim  # DDIM: first order


# ---------------------------------------------------------------------------------------
# The sampler kind, and the chain-function route the exported models take.


def test_dpmpp2m_is_a_sampler_with_ddims_timesteps_and_steps_evaluations():
    assert "dpmpp2m" in sc.SAMPLERS and "dpmpp2m" in sc.STEP_SAMPLERS
    cfg = sc.SamplerConfig(kind="dpmpp2m", steps=7)
    assert cfg.kind is sc.SamplerKind.DPMPP2M
    assert cfg.denoiser_evaluations(1000) == 7
    for steps, t_start in [(5, None), (3, 40), (1, None)]:
        for a, b in zip(
            samplers.chain_timesteps("dpmpp2m", 100, steps, t_start),
            samplers.chain_timesteps("ddim", 100, steps, t_start),
            strict=True,
        ):
            np.testing.assert_array_equal(a, b)


K, S100 = 3, sch.make_schedule("linear", 100)


def _logits_denoiser(image):
    """A nonlinear logits 'model' of (x_t, t) and the image."""

    def denoise(x_t, t):
        t = t.astype(jnp.float32).reshape((-1,) + (1,) * (x_t.ndim - 1)) / 100.0
        return 3.0 * jnp.tanh(x_t * image + t) - x_t**2 * (1.0 - t)

    return denoise


def _chain_fn(scale):
    """A `seg.ChainFn` over `sample_chain` of `_logits_denoiser`: what both routes provide."""

    def run(image, x_t, key, ts, ts_next, eta, ancestral, depth):
        return samplers.sample_chain(
            _logits_denoiser(image), S100, x_t, key, ts, ts_next, eta=eta,
            ancestral=ancestral, target=Target.LOGITS, scale=scale,
        )  # fmt: skip

    return run


@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_the_sampler_built_on_one_step_chains_is_the_direct_solver(scale):
    """`chain_masks` runs DPM-Solver++ one denoiser call per chain call (so exported models
    run it); it equals the solver on the denoiser itself, and differs from DDIM."""
    rng = np.random.default_rng(4)
    image = jnp.asarray(rng.normal(size=(2, 4, 4, 4, 1)), jnp.float32)
    key = jax.random.key(5)
    cfg = sc.SamplerConfig(kind="dpmpp2m", steps=4, eta=0.7)  # eta: ignored
    got = jax.jit(
        lambda im, k: seg.chain_masks(_chain_fn(scale), im, k, S100, cfg, K, 1, 0, scale)
    )(image, key)
    k_init, _ = jax.random.split(key)
    x_t = jax.random.normal(k_init, got.shape, jnp.float32)
    want = samplers.dpmpp2m_sample(
        _logits_denoiser(image), S100, x_t, steps=4, target=Target.LOGITS, scale=scale
    )
    np.testing.assert_allclose(got, want, atol=2e-5)
    ddim = seg.chain_masks(
        _chain_fn(scale), image, key, S100, sc.SamplerConfig(steps=4), K, 1, 0, scale
    )
    assert np.abs(np.asarray(got) - np.asarray(ddim)).max() > 1e-3


def test_step_fusion_averages_the_solvers_estimates():
    rng = np.random.default_rng(6)
    image = jnp.asarray(rng.normal(size=(1, 4, 4, 4, 1)), jnp.float32)
    x_t = jnp.asarray(rng.normal(size=(1, 4, 4, 4, K)), jnp.float32)
    chain, key = _chain_fn(0.5), jax.random.key(7)
    ts, ts_next = samplers.chain_timesteps("dpmpp2m", 100, 4)
    end = np.array([-1], np.int32)
    estimates = []  # the chain is causal: step i's state is the first i steps' result
    for i in range(4):
        x = x_t
        if i:  # the state after i steps (chain units: the result times the scale)
            x = 0.5 * seg.dpmpp2m_chain(chain, image, x_t, key, S100, ts[:i], ts_next[:i], 0, 0.5)
        estimates.append(chain(image, x, key, ts[i : i + 1], end, 0.0, False, 0))
    w = seg.step_weights("mean", 4)
    fused = seg.dpmpp2m_chain(chain, image, x_t, key, S100, ts, ts_next, 0, 0.5, w)
    want = sum(wi * e for wi, e in zip(w, estimates, strict=True))
    np.testing.assert_allclose(fused, want, atol=2e-5)
    plain = seg.dpmpp2m_chain(chain, image, x_t, key, S100, ts, ts_next, 0, 0.5)
    np.testing.assert_allclose(plain, estimates[-1], atol=2e-5)
    cfg = sc.SamplerConfig(kind="dpmpp2m", steps=4, step_fusion="mean")
    masks = seg.chain_masks(chain, image, key, S100, cfg, K, 1, 0, 0.5)
    k_init, k_chain = jax.random.split(key)
    x_t = jax.random.normal(k_init, masks.shape, jnp.float32)
    want = seg.dpmpp2m_chain(chain, image, x_t, k_chain, S100, ts, ts_next, 0, 0.5, w)
    np.testing.assert_allclose(masks, want, atol=1e-6)


# ---------------------------------------------------------------------------------------
# End to end: the exported tiny model (conftest's `exported`), both routes.


def test_exported_and_local_routes_give_the_same_dpm_solver_segmentation(exported):
    from msseg import io
    from msseg.data.prepare import prepare_image
    from msseg.inference import model as model_lib
    from msseg.inference import predict

    _, model_dir, raw = exported
    image = sorted((raw / "imagesTs").glob("*.nii.gz"))[0]
    out = {}
    for route in ("exported", "local"):
        model = model_lib.load_model(model_dir, route=route)
        assert model.route == route
        cfg = model_lib.sampler_config(model, kind="dpmpp2m", steps=3)
        assert cfg.kind is sc.SamplerKind.DPMPP2M
        segmenter = predict.Segmenter(model, predict.Options(cfg, batch=8))
        prepared, _ = prepare_image(io.load_image(image), model.preprocess)
        crop = prepared.image[:24, :24, :24]  # 8 windows of 16³
        out[route] = segmenter.segment_array(crop, jax.random.key(3))
    np.testing.assert_allclose(out["exported"][0], out["local"][0], atol=2e-3)
    same = np.mean(out["exported"][0].argmax(-1) == out["local"][0].argmax(-1))
    assert same > 0.995, same
    assert out["exported"][2] == out["local"][2] == 8
