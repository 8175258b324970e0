"""The sampler's settings: which chain (`SamplerKind`), how ensemble members and a DDIM (or
DPM-Solver++) chain's steps combine (`Fusion`, `StepFusion`), and `SamplerConfig`, the frozen
dataclass of config.sampler and of a model directory's sampler defaults. No jax: tools read it
for their flags before any array library loads."""

from __future__ import annotations

import dataclasses
import enum


class SamplerKind(enum.StrEnum):
    DDIM = "ddim"  # `steps` DDIM steps from T
    DDPM = "ddpm"  # every timestep, ancestral
    MULTISCALE = "multiscale"  # a chain at `coarse_depth`, refined at each finer depth
    ANCHORED = "anchored"  # a one-shot estimate, refined by a truncated chain
    DPMPP2M = "dpmpp2m"  # DPM-Solver++(2M): `steps` steps on DDIM's timesteps, second order


class Fusion(enum.StrEnum):
    """How ensemble members combine: mean probabilities, or a majority vote of their labels."""

    MEAN = "mean"
    VOTE = "vote"


class StepFusion(enum.StrEnum):
    """Which x0 estimates of a DDIM or DPM-Solver++ chain make its output: the last, or a
    (linear-weighted) mean over the steps."""

    NONE = "none"
    MEAN = "mean"
    LINEAR = "linear"


SAMPLERS = tuple(k.value for k in SamplerKind)
FUSIONS = tuple(f.value for f in Fusion)
STEP_FUSIONS = tuple(f.value for f in StepFusion)
STEP_SAMPLERS = (SamplerKind.DDIM.value, SamplerKind.DPMPP2M.value)
"""The samplers whose chain is `steps` long (on `samplers.ddim_timesteps`)."""


def choice(enum_type: type[enum.StrEnum], value, what: str):
    """`value` as a member of `enum_type`; ValueError naming `what` and the choices if none."""
    try:
        return enum_type(value)
    except ValueError:
        names = tuple(m.value for m in enum_type)
        raise ValueError(f"{what} must be one of {names}, got {value!r}") from None


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    kind: SamplerKind = SamplerKind.DDIM
    steps: int = 5  # chain steps of ddim and dpmpp2m (the same timesteps); ignored by ddpm
    eta: float = 0.0  # DDIM noise in [0, 1]; ignored by ddpm and dpmpp2m (deterministic)
    ensemble: int = 1
    fusion: Fusion = Fusion.MEAN
    coarse_depth: int = 1  # multiscale: the depth the chain starts at
    coarse_steps: int = 10
    refine_t: float = 0.4  # multiscale, anchored: truncated chains start at refine_t * T
    refine_steps: int = 4
    clip_x0: bool = True
    step_fusion: StepFusion = StepFusion.NONE  # DDIM and DPM-Solver++ chains only

    def __post_init__(self):
        object.__setattr__(self, "kind", choice(SamplerKind, self.kind, "sampler"))
        object.__setattr__(self, "fusion", choice(Fusion, self.fusion, "fusion"))
        object.__setattr__(self, "step_fusion", choice(StepFusion, self.step_fusion, "step_fusion"))
        if self.kind == SamplerKind.DDPM and self.step_fusion != StepFusion.NONE:
            raise ValueError("step fusion applies to DDIM chains, not to the ddpm sampler")
        if self.ensemble < 1:
            raise ValueError("ensemble must be >= 1")
        if not 0.0 <= self.eta <= 1.0:  # NaN fails too
            raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM), got {self.eta}")

    def denoiser_evaluations(self, num_timesteps: int) -> int:
        """Model calls per sample (ensemble members count separately)."""
        if self.kind == SamplerKind.DDPM:
            return num_timesteps
        if self.kind in (SamplerKind.DDIM, SamplerKind.DPMPP2M):
            return self.steps
        t_refine = int(round(self.refine_t * (num_timesteps - 1)))
        if self.kind == SamplerKind.ANCHORED:
            return 1 + min(self.refine_steps, t_refine + 1)
        return self.coarse_steps + self.coarse_depth * min(self.refine_steps, t_refine + 1)
