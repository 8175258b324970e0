"""DDPM ancestral, DDIM and DPM-Solver++(2M) samplers on lax.scan, generic over the denoiser.

The denoiser is a plain function `denoise(x_t, t) -> prediction` of x_t [B, X, Y, Z, K]
(any trailing shape) and t int32 [B] (every entry the current timestep), predicting the
`Target` it was trained for; conditioning (the image, the params) lives in its closure.
Samplers are pure functions of (x_t, key): the same key gives the same sample. They run in
float32 and return float32 x0 samples shaped like x_t.

Conventions:
- Chains start at `t_start` (default T-1, pure noise); a smaller `t_start` continues a
  partially noised start (e.g. an upsampled coarse sample in the multiscale sampler).
- x0_hat is clipped to [-1, 1] when `clip_x0` (the masks are one-hot scaled to [-1, 1]);
  the noise estimate is then recomputed from the clipped x0_hat, so the two stay consistent.
- With a signal scale b (`scale`) the chain runs on z = b x0 (x_t, the DDIM/DDPM updates,
  the clip to [-b, b]); the result is divided by b, so samples are masks whatever b.
- The last DDPM step (t = 0) adds no noise and returns the posterior mean, which is x0_hat;
  the last DDIM step goes to "t = -1" (ab = 1) and returns x0_hat.
- Per-step randomness comes from `jax.random.split(key, num_steps)`, step i using key i.
- DPM-Solver++(2M) (`dpmpp2m_chain`, Lu et al. 2022, Algorithm 2: multistep, second order,
  data prediction) is deterministic and visits DDIM's timesteps; it is generic over an x0
  function rather than a denoiser, so the exported chain (one call per step, each a one-step
  chain to x0) drives it as well as a local denoiser (`dpmpp2m_sample`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from msseg.diffusion import schedule as sched
from msseg.diffusion.schedule import Schedule, Target

DenoiseFn = Callable[[jax.Array, jax.Array], jax.Array]
"""(x_t [B, X, Y, Z, K], t int32 [B]) -> prediction [B, X, Y, Z, K] of the model's `Target`."""


def _resolve_t_start(num_timesteps: int, t_start: int | None) -> int:
    t_max = num_timesteps - 1
    t0 = t_max if t_start is None else int(t_start)
    if not 0 <= t0 <= t_max:
        raise ValueError(f"t_start must lie in [0, {t_max}], got {t_start}")
    return t0


def ddim_timesteps(num_timesteps: int, steps: int, t_start: int | None = None) -> np.ndarray:
    """`steps` timesteps [steps] int32, strictly decreasing from t_start (default T-1) to 0.

    Evenly spaced over [0, t_start], both ends included: round-half-up of
    linspace(t_start, 0, steps). Spacing >= 1 makes them unique. `steps` = 1 gives
    [t_start] (one denoiser call straight to x0); `steps` = t_start + 1 gives every
    timestep (DDIM over the full chain). steps > t_start + 1 raises ValueError.
    """
    t0 = _resolve_t_start(num_timesteps, t_start)
    if not 1 <= steps <= t0 + 1:
        raise ValueError(f"steps must lie in [1, {t0 + 1}] for t_start={t0}, got {steps}")
    return np.floor(np.linspace(t0, 0, steps) + 0.5).astype(np.int32)


def _per_example(v: jax.Array, ndim: int) -> jax.Array:
    """[B] (or a scalar) -> [B, 1, ..., 1] to broadcast over an `ndim` array."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def ddpm_step(
    s: Schedule, x_t: jax.Array, t: jax.Array, x0_hat: jax.Array, noise: jax.Array
) -> jax.Array:
    """One ancestral step: x_{t-1} = posterior mean(x0_hat, x_t) + exp(0.5 log var) noise.

    x_t, x0_hat, noise [B, ...]; t int [B]. No noise where t = 0 (the result is x0_hat).
    """
    mean, _, log_var = sched.q_posterior(s, x0_hat, x_t, t)
    std = jnp.where(_per_example(t, jnp.ndim(x_t)) > 0, jnp.exp(0.5 * log_var), 0.0)
    return mean + std * noise


def _at(s: Schedule, name: str, t: jax.Array, ndim: int, at_minus_one: float) -> jax.Array:
    """table[t] as [B, 1, ..., 1], with `at_minus_one` where t = -1 (past the last step)."""
    t = jnp.asarray(t, jnp.int32)
    values = sched.extract(s.table(name), jnp.maximum(t, 0), ndim)
    return jnp.where(_per_example(t, ndim) < 0, at_minus_one, values)


def _ddim_coefs(
    s: Schedule, t: jax.Array, t_next: jax.Array, eta: float | jax.Array, ndim: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(sqrt(ab'), sqrt(1 - ab' - sigma^2), sigma), each [B, 1, ..., 1]; ab' = 1 at t' = -1.

    With r = 1 - ab/ab': sigma^2 = eta^2 (1 - ab')/(1 - ab) r, and the direction term
    1 - ab' - sigma^2 = (1 - ab')/(1 - ab) ((1 - eta^2) r + (ab/ab') (1 - ab')), a sum of
    non-negative terms (no float32 cancellation where ab is tiny); r = -expm1(log ab - log ab')
    keeps its accuracy where ab and ab' are close to 1.
    """
    sqrt_1m = _at(s, "sqrt_one_minus_alphas_cumprod", t, ndim, 0.0)
    sqrt_1m_next = _at(s, "sqrt_one_minus_alphas_cumprod", t_next, ndim, 0.0)
    log_ratio = _at(s, "log_alphas_cumprod", t, ndim, 0.0) - _at(
        s, "log_alphas_cumprod", t_next, ndim, 0.0
    )
    r = jnp.maximum(-jnp.expm1(log_ratio), 0.0)
    scale = (sqrt_1m_next / sqrt_1m) ** 2
    sigma = eta * jnp.sqrt(scale * r)
    dir_sq = scale * ((1.0 - eta**2) * r + jnp.exp(log_ratio) * sqrt_1m_next**2)
    sqrt_ab_next = _at(s, "sqrt_alphas_cumprod", t_next, ndim, 1.0)
    return sqrt_ab_next, jnp.sqrt(jnp.maximum(dir_sq, 0.0)), sigma


def ddim_step(
    s: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    t_next: jax.Array,
    x0_hat: jax.Array,
    eps_hat: jax.Array,
    eta: float | jax.Array,
    noise: jax.Array,
) -> jax.Array:
    """One DDIM update (Song et al. 2021, eq. 12) from t to t_next < t (t_next = -1: ab' = 1).

    x_{t'} = sqrt(ab') x0_hat + sqrt(1 - ab' - sigma^2) eps_hat + sigma noise, with
    sigma = eta sqrt((1 - ab')/(1 - ab)) sqrt(1 - ab/ab'). x_t, x0_hat, eps_hat, noise
    [B, ...]; t, t_next int [B] (x_t only sets the rank). eta = 0 is deterministic; eta = 1
    with t_next = t - 1 is the ancestral (DDPM) step. At t_next = -1 the result is x0_hat.
    """
    sqrt_ab_next, dir_coef, sigma = _ddim_coefs(s, t, t_next, eta, jnp.ndim(x_t))
    return sqrt_ab_next * x0_hat + dir_coef * eps_hat + sigma * noise


def _half_log_snr(s: Schedule, t: jax.Array, ndim: int) -> jax.Array:
    """lambda_t = log(alpha_t / sigma_t) = log(ab)/2 - log sqrt(1 - ab) as [B, 1, ..., 1] (t >= 0;
    entries at t < 0 are those of t = 0, to be masked by the caller)."""
    t = jnp.maximum(jnp.asarray(t, jnp.int32), 0)
    log_ab = sched.extract(s.table("log_alphas_cumprod"), t, ndim)
    sqrt_1m = sched.extract(s.table("sqrt_one_minus_alphas_cumprod"), t, ndim)
    return 0.5 * log_ab - jnp.log(sqrt_1m)


def dpmpp2m_step(
    s: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    t_next: jax.Array,
    x0_hat: jax.Array,
    x0_prev: jax.Array,
    t_prev: jax.Array,
) -> jax.Array:
    """One DPM-Solver++(2M) update (Lu et al. 2022, Algorithm 2) from t to t_next < t.

    With alpha = sqrt(ab), sigma = sqrt(1 - ab), lambda = log(alpha / sigma) and
    h = lambda(t_next) - lambda(t):
        x_{t'} = (sigma'/sigma) x_t + alpha' (1 - e^{-h}) D,
    D = x0_hat (first order, DDIM's deterministic step) where t_prev < 0 (no previous
    estimate) or t_next = -1 (the last step: ab' = 1, the result is x0_hat); otherwise
    D = (1 + 1/(2r)) x0_hat - 1/(2r) x0_prev with r = h_prev / h, h_prev = lambda(t) -
    lambda(t_prev), x0_prev the estimate made at t_prev. x_t, x0_hat, x0_prev [B, ...];
    t, t_next, t_prev int [B].
    """
    ndim = jnp.ndim(x_t)
    lam = _half_log_snr(s, t, ndim)
    end = _per_example(t_next, ndim) < 0
    h = jnp.where(end, 1.0, _half_log_snr(s, t_next, ndim) - lam)  # 1: a finite stand-in
    sigma_ratio = _at(s, "sqrt_one_minus_alphas_cumprod", t_next, ndim, 0.0) / _at(
        s, "sqrt_one_minus_alphas_cumprod", t, ndim, 0.0
    )
    alpha_next = _at(s, "sqrt_alphas_cumprod", t_next, ndim, 1.0)
    data_coef = jnp.where(end, 1.0, -alpha_next * jnp.expm1(-h))  # alpha' (1 - e^{-h})
    second = (_per_example(t_prev, ndim) >= 0) & ~end
    h_prev = jnp.where(second, lam - _half_log_snr(s, t_prev, ndim), 1.0)
    half_inv_r = jnp.where(second, h / (2.0 * h_prev), 0.0)  # 1 / (2 r)
    d = x0_hat + half_inv_r * (x0_hat - x0_prev)
    return sigma_ratio * x_t + data_coef * d


X0Fn = Callable[[jax.Array, jax.Array], jax.Array]
"""(x_t [B, ...], t int32 scalar) -> the (clipped) x0 estimate in the chain's units [B, ...]."""


def dpmpp2m_chain(
    x0_fn: X0Fn,
    s: Schedule,
    x_t: jax.Array,
    ts: jax.Array,
    ts_next: jax.Array,
    weights: jax.Array | None = None,
) -> jax.Array:
    """DPM-Solver++(2M) over timesteps `ts` [S] (to `ts_next` [S]): `x0_fn` once per step, then
    `dpmpp2m_step` with the previous step's estimate (first order at the first step).

    Deterministic (no key). Returns the last state [B, ...] float32 in the chain's units: with
    ts_next ending at -1 it is the last estimate x0_fn(x, ts[-1]). With `weights` [S] it
    returns sum_i weights[i] x0_i instead (step fusion).
    """
    x = jnp.asarray(x_t, jnp.float32)
    batch = x.shape[0]
    ts, ts_next = jnp.asarray(ts, jnp.int32), jnp.asarray(ts_next, jnp.int32)
    fuse = weights is not None
    w = jnp.asarray(weights if fuse else jnp.zeros(ts.shape), jnp.float32)

    def body(carry, step):
        x, x0_prev, t_prev, acc = carry
        t, t_next, wi = step
        x0 = jnp.asarray(x0_fn(x, t), jnp.float32)
        tb, tb_next, tb_prev = (jnp.full((batch,), v, jnp.int32) for v in (t, t_next, t_prev))
        new = dpmpp2m_step(s, x, tb, tb_next, x0, x0_prev, tb_prev)
        return (new, x0, t, (acc + wi * x0) if fuse else acc), None

    init = (x, jnp.zeros_like(x), jnp.asarray(-1, jnp.int32), jnp.zeros_like(x) if fuse else ())
    (x, _, _, acc), _ = jax.lax.scan(body, init, (ts, ts_next, w))
    return acc if fuse else x


def _predict(
    denoise: DenoiseFn,
    s: Schedule,
    x: jax.Array,
    tb: jax.Array,
    target: Target,
    clip_x0: bool,
    scale: float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """(z0_hat, eps_hat) from one denoiser call; z0_hat clipped to [-scale, scale] and eps_hat
    recomputed (logits predictions are inside already: no clip)."""
    pred = jnp.asarray(denoise(x, tb), jnp.float32)
    x0_hat, eps_hat = sched.to_x0_eps(s, x, tb, pred, target, scale)
    if clip_x0 and target is not Target.LOGITS:
        x0_hat = jnp.clip(x0_hat, -scale, scale)
        eps_hat = sched.eps_from_x0(s, x, tb, x0_hat)
    return x0_hat, eps_hat


def sample_chain(
    denoise: DenoiseFn,
    s: Schedule,
    x_t: jax.Array,
    key: jax.Array,
    ts: jax.Array,
    ts_next: jax.Array,
    *,
    eta: float | jax.Array,
    ancestral: bool | jax.Array,
    target: Target,
    clip_x0: bool = True,
    scale: float = 1.0,
) -> jax.Array:
    """Runs the chain x_t → x0 over timesteps `ts` [S] (to `ts_next` [S]): the one sampling loop.

    Step i calls the denoiser at ts[i] and moves to ts_next[i] with `ddpm_step` (ancestral)
    or `ddim_step` (eta); its noise comes from key i of `jax.random.split(key, S)`. S may be
    a symbolic dimension and `eta` / `ancestral` traced values (the exported sampler takes
    them as inputs, so one artifact runs DDPM, DDIM and truncated chains of any length); a
    Python `eta == 0` with `ancestral=False` draws no noise at all. Returns x0 [B, ...]
    float32 (the last step lands on x0_hat), in mask units (x_t is in the chain's: `scale`
    times the mask plus noise).
    """
    x = jnp.asarray(x_t, jnp.float32)
    batch = x.shape[0]
    keys = jax.random.split(key, ts.shape[0])
    noiseless = ancestral is False and isinstance(eta, (int, float)) and eta == 0

    def body(x, step):
        t, t_next, k = step
        tb = jnp.full((batch,), t, jnp.int32)
        x0_hat, eps_hat = _predict(denoise, s, x, tb, target, clip_x0, scale)
        noise = jnp.zeros_like(x) if noiseless else jax.random.normal(k, x.shape, jnp.float32)
        if ancestral is True:
            return ddpm_step(s, x, tb, x0_hat, noise), None
        tb_next = jnp.full((batch,), t_next, jnp.int32)
        if ancestral is False:
            return ddim_step(s, x, tb, tb_next, x0_hat, eps_hat, eta, noise), None
        new = jax.lax.cond(  # traced: one of the two updates per call
            ancestral,
            lambda: ddpm_step(s, x, tb, x0_hat, noise),
            lambda: ddim_step(s, x, tb, tb_next, x0_hat, eps_hat, eta, noise),
        )
        return new, None

    x, _ = jax.lax.scan(
        body, x, (jnp.asarray(ts, jnp.int32), jnp.asarray(ts_next, jnp.int32), keys)
    )
    return x if scale == 1.0 else x / scale


def chain_timesteps(
    kind: str, num_timesteps: int, steps: int, t_start: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(ts, ts_next) int32 [S] of a "ddpm" chain (every timestep from t_start down to 0) or a
    "ddim" or "dpmpp2m" chain (both `ddim_timesteps`: DPM-Solver++ with `steps` steps visits
    the timesteps DDIM with `steps` steps does); ts_next ends at -1 (past the last step)."""
    t0 = _resolve_t_start(num_timesteps, t_start)
    if kind == "ddpm":
        ts = np.arange(t0, -1, -1, dtype=np.int32)
    elif kind in ("ddim", "dpmpp2m"):
        ts = ddim_timesteps(num_timesteps, steps, t0)
    else:
        raise ValueError(f"chain kind must be 'ddpm', 'ddim' or 'dpmpp2m', got {kind!r}")
    return ts, np.append(ts[1:], -1).astype(np.int32)


def ddpm_sample(
    denoise: DenoiseFn,
    s: Schedule,
    x_t: jax.Array,
    key: jax.Array,
    *,
    target: Target,
    t_start: int | None = None,
    clip_x0: bool = True,
) -> jax.Array:
    """Ancestral sampling from x_t [B, ...] at t_start (default T-1) down to t = 0.

    Each of the t_start + 1 steps calls the denoiser once: x0_hat from its prediction
    (clipped to [-1, 1] if `clip_x0`), x_{t-1} = `ddpm_step`. Returns x0 [B, ...] float32
    (the last posterior mean).
    """
    ts, ts_next = chain_timesteps("ddpm", s.num_timesteps, 0, t_start)
    return sample_chain(
        denoise, s, x_t, key, ts, ts_next, eta=1.0, ancestral=True, target=target, clip_x0=clip_x0
    )


def ddim_sample(
    denoise: DenoiseFn,
    s: Schedule,
    x_t: jax.Array,
    key: jax.Array,
    *,
    steps: int,
    eta: float = 0.0,
    target: Target,
    t_start: int | None = None,
    clip_x0: bool = True,
) -> jax.Array:
    """DDIM sampling from x_t [B, ...] at t_start (default T-1) over `ddim_timesteps`.

    `steps` denoiser calls; each goes from t to the next timestep (the last to t = -1,
    returning x0_hat) with `ddim_step`. eta = 0 (a Python 0) draws no noise at all.
    Returns x0 [B, ...] float32.
    """
    ts, ts_next = chain_timesteps("ddim", s.num_timesteps, steps, t_start)
    return sample_chain(
        denoise, s, x_t, key, ts, ts_next, eta=eta, ancestral=False, target=target, clip_x0=clip_x0
    )


def dpmpp2m_sample(
    denoise: DenoiseFn,
    s: Schedule,
    x_t: jax.Array,
    *,
    steps: int,
    target: Target,
    t_start: int | None = None,
    clip_x0: bool = True,
    scale: float = 1.0,
) -> jax.Array:
    """DPM-Solver++(2M) from x_t [B, ...] (chain units) at t_start (default T-1) over
    `ddim_timesteps`: `steps` denoiser calls, each estimate clipped like `sample_chain`'s.
    Deterministic. Returns x0 [B, ...] float32 in mask units."""
    ts, ts_next = chain_timesteps("dpmpp2m", s.num_timesteps, steps, t_start)
    batch = x_t.shape[0]

    def x0_fn(x, t):
        tb = jnp.full((batch,), t, jnp.int32)
        return _predict(denoise, s, x, tb, target, clip_x0, scale)[0]

    x = dpmpp2m_chain(x0_fn, s, x_t, ts, ts_next)
    return x if scale == 1.0 else x / scale
