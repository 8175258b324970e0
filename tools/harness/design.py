"""The suite's training arms and evaluations, in the order they run, and which evaluations each
experiment reads.

The default experiments share four models, trained with the same config, seed and steps,
differing only where the question needs it:

- `ms_mixed`: multiscale deep supervision, patches entering at depth 0 or 1 (p = 0.75 /
  0.25); the main model (lower-resolution entry, the samplers' costs, diffusion);
- `ms_full`: multiscale deep supervision, depth-0 entry only;
- `single`: as `ms_full` with only the depth-0 output supervised (depth weights 1, 0, ...):
  the same parameters and steps as a single-output U-Net;
- `det_mixed`: as `ms_mixed`, trained as a deterministic segmenter (no diffusion).

The `recipe` experiment trains the config's diffusion recipe and the same U-Net as a
deterministic segmenter with the same cross-entropy + Dice loss, at two seeds each:
`recipe_diff_s<seed>` and `recipe_det_s<seed>`. The `screen` experiment trains one seed of each
recipe change alone and in the combinations that led to the default, at 40 % of the steps
(`SCREEN`). The `skips` experiment trains the config's recipe with each other skip design
(`SKIP_DESIGNS`: `skips_<design>`) and compares them with the plain U-Net, which is the
recipe experiment's `recipe_diff_s<seed>` (the same flags: one training serves both).

The `sota` experiment compares msseg with established implementations run in their own
environment (peers/): msseg's diffusion and deterministic models at the main job's steps
(`sota_diff_main`, `sota_det_main`) and at the suite's (the recipe arms at the suite's seed),
and each peer (`PEERS`) in one training resumed budget after budget, its snapshots taken at
msseg's training times (equal wall-clock), at msseg's steps (equal optimiser steps, if reached
within `peer_cap` x msseg's time) and at fractions of the first budget's time (the curve).

An evaluation runs once, whichever experiments read it; the plan runs only the evaluations
the chosen experiments read, and trains only the arms those evaluate.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the plan imports this module
    from harness.plan import Settings

# The screen's arms: flags on top of the config (whose diffusion defaults are the chosen
# recipe: logits, CE + Dice, recycling, training at DDIM-5's timesteps). Each switches the
# recipe's parts off or on; `x0` is the original recipe.
_ALL_T = "--config.diffusion.train_timesteps=all"
_NO_REC = "--config.diffusion.recycle_prob=0.0"
_DDIM10 = "--config.sampler.steps=10"
# the skip study's designs beside the plain U-Net (model.skip), trained as the recipe arm
SKIP_DESIGNS = ("unet3plus", "unetpp")
# the sota experiment's peers (peers/peer.py --model): nnU-Net's network as MONAI ships it, a
# diffusion segmenter from MONAI's generative components, MONAI's plain U-Net
PEERS = ("dynunet", "monai_diffusion", "monai_unet")
# the sota experiment's budgets, in the order they are run
SOTA_BUDGETS = ("main", "suite")
# the peers' snapshots for the Dice-vs-wall-clock curve: fractions of the first budget's time
CURVE_FRACTIONS = (0.5,)
DETERMINISTIC = ["--config.model.diffusion=False", "--config.train.val_mode=deterministic"]
SCREEN = {
    "det": DETERMINISTIC,
    "x0": [
        "--config.diffusion.target=x0",
        "--config.diffusion.mse_weight=1.0",
        "--config.diffusion.ce_weight=0.0",
        "--config.diffusion.dice_weight=0.0",
        _ALL_T,
        _NO_REC,
        _DDIM10,
    ],
    "logits": [_ALL_T, _NO_REC, _DDIM10],
    "logits_fs": [_NO_REC, _DDIM10],
    "logits_rec": [_ALL_T, _DDIM10],
    "logits_rec_fs": [_DDIM10],
    "recipe": [],
    "recipe_b03": ["--config.diffusion.signal_scale=0.3"],
}


@dataclasses.dataclass(frozen=True)
class EvalJob:
    name: str  # report folder eval/<name>
    arm: str
    flags: tuple[str, ...]  # tools/evaluate.py flags beyond the shared ones


def _tuple(values) -> str:
    return "(" + "".join(f"{v}," for v in values) + ")"


def all_arms(s: Settings) -> dict[str, list[str]]:
    """Training flags of every arm (tools/train.py, after --config and --workdir), in the order
    they are trained (ms_mixed first: three experiments read it)."""
    mixed = ["--config.train.entry_depths=(0,1,)", "--config.train.entry_probs=(0.75,0.25,)"]
    full = [
        "--config.train.entry_depths=(0,)",
        "--config.train.entry_probs=()",
        "--config.train.val_depths=(0,)",
    ]
    single = [1.0] + [0.0] * (s.num_depths - 1)
    # the recipe and screen arms share one preprocessed cache (the others each build
    # <workdir>/cache)
    cache = f"--config.data.cache={s.out / 'cache'}"
    arms = {
        "ms_mixed": [*s.base_flags(), *mixed],
        "ms_full": [*s.base_flags(), *full],
        "single": [*s.base_flags(), *full, f"--config.diffusion.depth_weights={_tuple(single)}"],
        "det_mixed": [*s.base_flags(), *mixed, *DETERMINISTIC],
    }
    for name, flags in SCREEN.items():
        arms[f"screen_{name}"] = [*s.base_flags(steps=s.screen_steps), cache, *flags]
    for seed in s.recipe_seeds:
        arms[f"recipe_diff_s{seed}"] = [*s.base_flags(seed), cache]
        arms[f"recipe_det_s{seed}"] = [*s.base_flags(seed), cache, *DETERMINISTIC]
    for skip in SKIP_DESIGNS:
        arms[f"skips_{skip}"] = [*s.base_flags(), cache, f"--config.model.skip={skip}"]
    # the main job's budget (the suite's is the recipe arms'), on the shared cache
    arms["sota_diff_main"] = [*s.base_flags(steps=s.main_steps), cache]
    arms["sota_det_main"] = [*s.base_flags(steps=s.main_steps), cache, *DETERMINISTIC]
    return arms


def all_evaluations(s: Settings) -> list[EvalJob]:
    """Every evaluation; an arm's run in this order as soon as it is trained."""
    jobs = [
        EvalJob("single", "single", ()),
        EvalJob("ms_full", "ms_full", ()),
        EvalJob("ms_full_input4x", "ms_full", ("--input_depth=1",)),
        EvalJob("ms_mixed_ddim10", "ms_mixed", ("--sampler=ddim", "--steps=10")),
        EvalJob("ms_mixed_depth1", "ms_mixed", ("--depths=1",)),
        EvalJob("det_mixed", "det_mixed", ()),
    ]
    for n in s.ddim_sweep:
        if n != 10:
            jobs.append(
                EvalJob(f"ms_mixed_ddim{n}", "ms_mixed", ("--sampler=ddim", f"--steps={n}"))
            )
    for n in s.dpm_sweep:
        flags = ("--sampler=dpmpp2m", f"--steps={n}")
        jobs.append(EvalJob(f"ms_mixed_dpm{n}", "ms_mixed", flags))
    for e in s.ensemble_sweep:
        if e != 1:
            flags = ("--sampler=ddim", "--steps=10", f"--ensemble={e}")
            jobs.append(EvalJob(f"ms_mixed_ens{e}", "ms_mixed", flags))
    jobs += [
        EvalJob("ms_mixed_multiscale", "ms_mixed", ("--sampler=multiscale",)),
        EvalJob("ms_mixed_ddpm", "ms_mixed", ("--sampler=ddpm", f"--max_cases={s.ddpm_cases}")),
    ]
    jobs += [EvalJob(f"screen_{name}", f"screen_{name}", ()) for name in SCREEN]
    for seed in s.recipe_seeds:
        # the config's own sampler (DDIM with its steps)
        jobs.append(EvalJob(f"recipe_diff_s{seed}", f"recipe_diff_s{seed}", ()))
        jobs.append(EvalJob(f"recipe_det_s{seed}", f"recipe_det_s{seed}", ()))
    jobs += [EvalJob(f"skips_{skip}", f"skips_{skip}", ()) for skip in SKIP_DESIGNS]
    jobs += [EvalJob(f"sota_{kind}_main", f"sota_{kind}_main", ()) for kind in ("diff", "det")]
    return jobs


def sota_budgets(s: Settings) -> dict[str, dict]:
    """msseg's training budgets the settings choose (`s.budgets`, of `SOTA_BUDGETS`): the main
    job's (the config's own steps) and the suite's; each with the diffusion arm whose
    training time is the peers' clock and the deterministic arm of the same steps."""
    every = {
        "main": {"steps": s.main_steps, "diff": "sota_diff_main", "det": "sota_det_main"},
        "suite": {
            "steps": s.train_steps,
            "diff": f"recipe_diff_s{s.seed}",
            "det": f"recipe_det_s{s.seed}",
        },
    }
    return {b: every[b] for b in s.budgets}


def skip_benchmark(s: Settings) -> list[str]:
    """tools/benchmark.py flags that time one denoiser evaluation and one train step of the
    config's workload (its patch and batch) with each skip design, side by side in one process
    (the trainings' wall times share the machine with whatever else runs)."""
    return [
        f"--workload={s.config}",
        f"--skip=unet,{','.join(SKIP_DESIGNS)}",
        f"--repeats={1 if s.quick else 5}",
    ]


# ------------------------------------------------------------ the evaluations each one reads


def multiscale(s: Settings) -> list[str]:
    return ["single", "ms_full"]


def lowres(s: Settings) -> list[str]:
    return ["ms_full", "ms_full_input4x", "ms_mixed_ddim10", "ms_mixed_depth1"]


def diffusion(s: Settings) -> list[str]:
    """The deterministic model and the diffusion ensembles (DDIM-10 alone is the ensemble of 1)."""
    ensembles = [f"ms_mixed_ens{e}" for e in s.ensemble_sweep if e != 1]
    return ["ms_mixed_ddim10", "det_mixed", *ensembles]


def cost(s: Settings) -> list[str]:
    """Every sampler setting of the main model."""
    names = [f"ms_mixed_ddim{n}" for n in sorted(s.ddim_sweep)]
    names += [f"ms_mixed_dpm{n}" for n in sorted(s.dpm_sweep)]
    names += [f"ms_mixed_ens{e}" for e in sorted(s.ensemble_sweep) if e != 1]
    return [*names, "ms_mixed_multiscale", "ms_mixed_ddpm"]


def recipe(s: Settings) -> list[str]:
    return [f"recipe_{kind}_s{seed}" for seed in s.recipe_seeds for kind in ("diff", "det")]


def screen(s: Settings) -> list[str]:
    return [f"screen_{name}" for name in SCREEN]


def sota(s: Settings) -> list[str]:
    """msseg's arms at both budgets (the peers' evaluations are the plan's: they need
    msseg's training times first)."""
    return [arm for b in sota_budgets(s).values() for arm in (b["diff"], b["det"])]


def skips(s: Settings) -> list[str]:
    """The plain U-Net (the recipe arm at the suite's seed), then each other skip design."""
    return [f"recipe_diff_s{s.seed}", *(f"skips_{skip}" for skip in SKIP_DESIGNS)]
