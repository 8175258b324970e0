"""Noise schedules and the closed-form DDPM quantities (float64 NumPy tables, cast once).

A `Schedule` holds its tables as float64 NumPy arrays of length T (timesteps 0..T-1, where
t = 0 is the first noising step, as in Ho et al. 2020); `Schedule.table(name)` gives a
float32 `jnp` copy, made once per name. The functions below are jit-friendly: `t` is an
int32 array [B] (traced or not), arrays are [B, ...] of any trailing shape (e.g.
[B, X, Y, Z, K]) and the math runs in float32.

Prediction targets (`Target`): the noise eps, the clean sample x0, the velocity
v = sqrt(ab) eps - sqrt(1 - ab) x0 (Salimans & Ho 2022), with ab = alphas_cumprod[t], or
per-class logits whose softmax is the mask (x0 = 2 softmax - 1: the estimate is always a
distribution, and cross-entropy and Dice act on the softmax directly).

Signal scale b (`scale`, default 1): the chain diffuses z0 = b x0 instead of the mask x0 in
[-1, 1]^K, so at any t the mask is b times harder to read from x_t (input scaling, Chen et
al. 2023). x0 and logits predictions are in mask units (z0 = b x0_hat); eps and v live in the
chain's units. `to_x0_eps` returns z0; divide by b for the mask.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import jax
import jax.numpy as jnp
import numpy as np


class Target(enum.Enum):
    """What the denoiser predicts."""

    EPS = "eps"
    X0 = "x0"
    V = "v"
    LOGITS = "logits"


TABLE_NAMES = (
    "betas",
    "alphas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "log_alphas_cumprod",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
    """All tables [T] float64 NumPy, indexed by timestep t = 0..T-1 (ab = alphas_cumprod).

    betas, alphas = 1 - betas, alphas_cumprod = cumprod(alphas), alphas_cumprod_prev
    (ab_{t-1}, 1 at t = 0), log_alphas_cumprod (for accurate ratios ab_t / ab_s),
    sqrt_alphas_cumprod, sqrt_one_minus_alphas_cumprod,
    sqrt_recip_alphas_cumprod = 1/sqrt(ab), sqrt_recipm1_alphas_cumprod = sqrt(1/ab - 1)
    (the last two keep x0-from-eps accurate where ab is tiny), posterior_variance
    = betas (1 - ab_prev) / (1 - ab) (0 at t = 0), posterior_log_variance_clipped (its log,
    with the t = 0 entry replaced by the t = 1 one), posterior_mean_coef1
    = betas sqrt(ab_prev) / (1 - ab), posterior_mean_coef2 = (1 - ab_prev) sqrt(alphas) / (1 - ab).
    """

    betas: np.ndarray
    alphas: np.ndarray
    alphas_cumprod: np.ndarray
    alphas_cumprod_prev: np.ndarray
    log_alphas_cumprod: np.ndarray
    sqrt_alphas_cumprod: np.ndarray
    sqrt_one_minus_alphas_cumprod: np.ndarray
    sqrt_recip_alphas_cumprod: np.ndarray
    sqrt_recipm1_alphas_cumprod: np.ndarray
    posterior_variance: np.ndarray
    posterior_log_variance_clipped: np.ndarray
    posterior_mean_coef1: np.ndarray
    posterior_mean_coef2: np.ndarray
    _cache: dict[str, jax.Array] = dataclasses.field(default_factory=dict, init=False, repr=False)

    @property
    def num_timesteps(self) -> int:
        return int(self.betas.shape[0])

    def table(self, name: str) -> jax.Array:
        """The float32 `jnp` copy of table `name` [T], cast once and cached."""
        if name not in TABLE_NAMES:
            raise ValueError(f"unknown schedule table {name!r}; known: {', '.join(TABLE_NAMES)}")
        if name not in self._cache:
            # Concrete even when first asked for inside a jit trace.
            with jax.ensure_compile_time_eval():
                self._cache[name] = jnp.asarray(np.asarray(getattr(self, name), np.float32))
        return self._cache[name]


def schedule_from_betas(betas: np.ndarray) -> Schedule:
    """The `Schedule` of a float64 beta sequence [T] (each beta in (0, 1))."""
    betas = np.asarray(betas, np.float64)
    if betas.ndim != 1 or betas.size < 1:
        raise ValueError(f"betas must be a non-empty 1-D array, got shape {betas.shape}")
    if not np.all((betas > 0) & (betas < 1)):
        raise ValueError("every beta must lie in (0, 1)")
    alphas = 1.0 - betas
    ab = np.cumprod(alphas)
    ab_prev = np.append(1.0, ab[:-1])
    post_var = betas * (1.0 - ab_prev) / (1.0 - ab)
    # post_var[0] == 0: the clipped log uses the t = 1 value there (Ho et al.'s convention).
    post_log_var = np.log(np.append(post_var[1], post_var[1:]) if betas.size > 1 else betas)
    return Schedule(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=ab,
        alphas_cumprod_prev=ab_prev,
        log_alphas_cumprod=np.cumsum(np.log1p(-betas)),
        sqrt_alphas_cumprod=np.sqrt(ab),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - ab),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / ab),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / ab - 1.0),
        posterior_variance=post_var,
        posterior_log_variance_clipped=post_log_var,
        posterior_mean_coef1=betas * np.sqrt(ab_prev) / (1.0 - ab),
        posterior_mean_coef2=(1.0 - ab_prev) * np.sqrt(alphas) / (1.0 - ab),
    )


def make_schedule(
    kind: str = "cosine",
    num_timesteps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    cosine_s: float = 0.008,
    max_beta: float = 0.999,
) -> Schedule:
    """A `Schedule` of `num_timesteps` steps.

    - "linear": betas = linspace(beta_start, beta_end, T) * 1000/T (the improved-DDPM
      convention, so any T follows the same curve as T = 1000), capped at `max_beta`
      (the cap only bites for T < ~20, where the scaled beta_end exceeds 1).
    - "cosine": Nichol & Dhariwal 2021, ab(t) = cos^2((t/T + s)/(1 + s) pi/2) and
      betas = min(1 - ab(t+1)/ab(t), max_beta).
    """
    if num_timesteps < 1:
        raise ValueError(f"num_timesteps must be >= 1, got {num_timesteps}")
    if not 0.0 < max_beta < 1.0:
        raise ValueError(f"max_beta must lie in (0, 1), got {max_beta}")
    n = int(num_timesteps)
    if kind == "linear":
        scale = 1000.0 / n
        betas = np.linspace(scale * beta_start, scale * beta_end, n, dtype=np.float64)
        betas = np.minimum(betas, max_beta)
    elif kind == "cosine":
        steps = np.arange(n + 1, dtype=np.float64) / n
        ab = np.cos((steps + cosine_s) / (1.0 + cosine_s) * math.pi / 2) ** 2
        betas = np.minimum(1.0 - ab[1:] / ab[:-1], max_beta)
    else:
        raise ValueError(f"unknown schedule kind {kind!r}; expected 'linear' or 'cosine'")
    return schedule_from_betas(betas)


def extract(table: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """table[t] for t int [B], reshaped [B, 1, ..., 1] to broadcast over an `ndim` array."""
    values = jnp.take(table, jnp.asarray(t, jnp.int32))
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _coef(s: Schedule, name: str, t: jax.Array, x: jax.Array) -> jax.Array:
    return extract(s.table(name), t, jnp.ndim(x))


def q_sample(s: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """x_t = sqrt(ab_t) x0 + sqrt(1 - ab_t) noise; x0, noise [B, ...], t int [B]."""
    return (
        _coef(s, "sqrt_alphas_cumprod", t, x0) * x0
        + _coef(s, "sqrt_one_minus_alphas_cumprod", t, x0) * noise
    )


def x0_from_eps(s: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """x0 = (x_t - sqrt(1 - ab) eps) / sqrt(ab), as sqrt(1/ab) x_t - sqrt(1/ab - 1) eps."""
    return (
        _coef(s, "sqrt_recip_alphas_cumprod", t, x_t) * x_t
        - _coef(s, "sqrt_recipm1_alphas_cumprod", t, x_t) * eps
    )


def eps_from_x0(s: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """eps = (x_t - sqrt(ab) x0) / sqrt(1 - ab)."""
    return (x_t - _coef(s, "sqrt_alphas_cumprod", t, x_t) * x0) / _coef(
        s, "sqrt_one_minus_alphas_cumprod", t, x_t
    )


def v_from_x0_eps(s: Schedule, x0: jax.Array, eps: jax.Array, t: jax.Array) -> jax.Array:
    """v = sqrt(ab) eps - sqrt(1 - ab) x0."""
    return (
        _coef(s, "sqrt_alphas_cumprod", t, x0) * eps
        - _coef(s, "sqrt_one_minus_alphas_cumprod", t, x0) * x0
    )


def x0_from_v(s: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """x0 = sqrt(ab) x_t - sqrt(1 - ab) v."""
    return (
        _coef(s, "sqrt_alphas_cumprod", t, x_t) * x_t
        - _coef(s, "sqrt_one_minus_alphas_cumprod", t, x_t) * v
    )


def eps_from_v(s: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """eps = sqrt(1 - ab) x_t + sqrt(ab) v."""
    return (
        _coef(s, "sqrt_one_minus_alphas_cumprod", t, x_t) * x_t
        + _coef(s, "sqrt_alphas_cumprod", t, x_t) * v
    )


def mask_from_logits(logits: jax.Array) -> jax.Array:
    """[..., K] logits → the mask estimate 2 softmax - 1 in [-1, 1]^K."""
    return 2.0 * jax.nn.softmax(logits.astype(jnp.float32), axis=-1) - 1.0


def to_x0_eps(
    s: Schedule, x_t: jax.Array, t: jax.Array, pred: jax.Array, target: Target, scale: float = 1.0
) -> tuple[jax.Array, jax.Array]:
    """(z0, eps) implied by a denoiser prediction `pred` of `target` at (x_t, t).

    z0 = scale * x0 is in the chain's units (the mask estimate times the signal scale)."""
    if target is Target.EPS:
        return x0_from_eps(s, x_t, t, pred), pred
    if target is Target.V:
        return x0_from_v(s, x_t, t, pred), eps_from_v(s, x_t, t, pred)
    if target is Target.X0:
        z0 = pred if scale == 1.0 else scale * pred
    elif target is Target.LOGITS:
        z0 = scale * mask_from_logits(pred)
    else:
        raise ValueError(f"unknown target {target!r}")
    return z0, eps_from_x0(s, x_t, t, z0)


def x0_error_scale(
    s: Schedule, t: jax.Array, target: Target, x: jax.Array, scale: float = 1.0
) -> jax.Array:
    """The squared factor that turns an error in the mask x0 into `target`'s units at fixed
    x_t (1 for x0 and logits, scale^2 ab / (1 - ab) for eps, scale^2 / (1 - ab) for v),
    shaped to broadcast with x."""
    if target in (Target.X0, Target.LOGITS):
        return jnp.ones((), jnp.float32)
    if target is Target.EPS:
        return scale**2 * _coef(s, "sqrt_recipm1_alphas_cumprod", t, x) ** -2
    if target is Target.V:
        return scale**2 * _coef(s, "sqrt_one_minus_alphas_cumprod", t, x) ** -2
    raise ValueError(f"unknown target {target!r}")


def target_from(
    s: Schedule, x0: jax.Array, eps: jax.Array, t: jax.Array, target: Target, scale: float = 1.0
) -> jax.Array:
    """The training regression target for the mask x0 and noise eps at t: eps, x0 (also for
    logits: their mask 2 softmax - 1 is regressed on x0) or v (of z0 = scale x0)."""
    if target is Target.EPS:
        return eps
    if target in (Target.X0, Target.LOGITS):
        return x0
    if target is Target.V:
        return v_from_x0_eps(s, scale * x0, eps, t)
    raise ValueError(f"unknown target {target!r}")


def q_posterior(
    s: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """q(x_{t-1} | x_t, x0): (mean [B, ...], variance [B, 1, ..], clipped log variance [B, 1, ..]).

    mean = coef1 x0 + coef2 x_t; at t = 0 the mean is x0 and the variance 0.
    """
    mean = (
        _coef(s, "posterior_mean_coef1", t, x_t) * x0
        + _coef(s, "posterior_mean_coef2", t, x_t) * x_t
    )
    return (
        mean,
        _coef(s, "posterior_variance", t, x_t),
        _coef(s, "posterior_log_variance_clipped", t, x_t),
    )
