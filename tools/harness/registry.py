"""The suite's experiments, each declared once: its question, results folder, the evaluations
it reads, and how its results.json, table and plot are made. The plan, the results and
tools/suite.py (its --experiments flag) read them from `EXPERIMENTS`, in this order (the
order of the README's tables)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

from harness import design, figures, summaries, tables

if TYPE_CHECKING:  # annotations only: the plan imports this module
    from harness.plan import Settings


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str  # --experiments value, results.json "experiment", <name>.png
    folder: str  # results folder <date>_<folder>; its title, capitalised, heads the README
    question: str
    evaluations: Callable[[Settings], list[str]]  # the eval/<job> reports it reads (design.py)
    summarise: Callable[[Settings], dict]  # its results.json figures (summaries.py)
    table: Callable[[dict], str]  # markdown table of its results.json (tables.py)
    draw: figures.Draw  # its plot's two panels (figures.py)
    opt_in: str = ""  # not run by default (its own CPU budget): what --experiments says of it
    # tools/benchmark.py flags of a timing run it reads (bench/<name>.json), run after the
    # trainings and evaluations; None: none
    benchmark: Callable[[Settings], list[str]] | None = None
    # its steps beyond msseg's trainings and evaluations (the sota experiment's peers), for
    # its README; None: none
    steps: Callable[[Settings], list[list[str]]] | None = None

    @property
    def default(self) -> bool:
        """Whether the suite runs it without --experiments."""
        return not self.opt_in


def _by_name(*experiments: Experiment) -> dict[str, Experiment]:
    return {e.name: e for e in experiments}


def _peer_steps(s: Settings) -> list[list[str]]:
    """The peers' commands (their environment, peers/peer.py) and their evaluations, as the
    run made them (each peer's training once per budget, resumed)."""
    from harness import plan  # the plan imports this module

    cmds = []
    for peer in design.PEERS:
        for budget in s.budgets:
            try:
                cmds.append(plan.peer_train_command(s, peer, budget))
            except (OSError, RuntimeError):  # msseg's arm of that budget is not trained yet
                continue
        for snapshot in plan.peer_snapshots(s, peer):
            cmds += [
                plan.peer_predict_command(s, peer, snapshot),
                plan.peer_eval_command(s, peer, snapshot),
            ]
    return cmds


EXPERIMENTS = _by_name(
    Experiment(
        name="multiscale",
        folder="multiscale_vs_single",
        question="Does supervising every decoder depth (multiscale deep supervision) make the "
        "U-Net more accurate than supervising only its full-resolution output, with the same "
        "parameters, data, seed and steps?",
        evaluations=design.multiscale,
        summarise=summaries.multiscale,
        table=tables.multiscale,
        draw=figures.multiscale,
    ),
    Experiment(
        name="lowres",
        folder="lowres_entry",
        question="A model trained with patches entering at depth 0 or 1 segments a scan at "
        "twice the model's spacing entered at depth 1; a model trained at depth 0 only gets the "
        "same scan upsampled to its spacing. Which is better on the coarse scan, and what does "
        "mixed entry cost on a full-resolution scan?",
        evaluations=design.lowres,
        summarise=summaries.lowres,
        table=tables.lowres,
        draw=figures.lowres,
    ),
    Experiment(
        name="diffusion",
        folder="diffusion_vs_deterministic",
        question="The diffusion segmenter against the same U-Net trained as a deterministic "
        "segmenter: Dice, HD95, calibration of the voxel probabilities (expected calibration "
        "error of the ensemble mean), and whether the uncertainty flags the errors (AUROC of the "
        "voxel entropy for the misclassified voxels).",
        evaluations=design.diffusion,
        summarise=summaries.diffusion,
        table=tables.diffusion,
        draw=figures.diffusion,
    ),
    Experiment(
        name="cost",
        folder="cost_vs_quality",
        question="What does each sampler cost (denoiser evaluations, wall time) and what Dice "
        "does it give: DDPM over the whole schedule, DDIM with 5/10/25/50 steps, multiscale "
        "coarse-to-fine, ensembles of 1/4/8?",
        evaluations=design.cost,
        summarise=summaries.cost,
        table=tables.cost,
        draw=figures.cost,
    ),
    Experiment(
        name="recipe",  # about 1.5 CPU hours on 2 cores
        folder="recipe_vs_deterministic",
        question="Does the config's diffusion recipe, sampled with its own DDIM steps, segment "
        "at least as well as the same U-Net trained as a deterministic segmenter with the same "
        "cross-entropy + Dice loss (leaf Dice no more than 0.5 points behind, at each of two "
        "seeds), with an ECE no worse than the deterministic model's and an entropy AUROC for "
        "the misclassified voxels of at least 0.85?",
        evaluations=design.recipe,
        summarise=summaries.recipe,
        table=tables.recipe,
        draw=figures.recipe,
        opt_in="the config's diffusion recipe vs the deterministic U-Net with the same loss, "
        "two seeds",
    ),
    Experiment(
        name="screen",  # about 1.5 CPU hours on 2 cores
        folder="recipe_changes_screen",
        question="At a reduced budget and one seed, what does each part of the diffusion recipe "
        "(logits with CE + Dice, training at the sampler's timesteps, recycling, a signal scale) "
        "add, alone and combined, against the original x0 recipe and the same U-Net trained "
        "deterministically?",
        evaluations=design.screen,
        summarise=summaries.screen,
        table=tables.screen,
        draw=figures.screen,
        opt_in="each recipe change at 40 % of the steps, one seed",
    ),
    Experiment(
        name="skips",  # about 2 CPU hours on 2 cores (1 more without the recipe's seed-0 arm)
        folder="skip_study",
        question="Plain U-Net skips, UNet 3+ full-scale skips or UNet++ nested dense skips: "
        "trained as the config's diffusion denoiser with the same data, seed and steps, which "
        "segments best (leaf Dice, HD95, case by case against the plain U-Net), and what does "
        "each cost (parameters, seconds per denoiser evaluation and per train step)? Which "
        "design pays for its cost?",
        evaluations=design.skips,
        summarise=summaries.skips,
        table=tables.skips,
        draw=figures.skips,
        opt_in="the plain U-Net against UNet 3+ and UNet++ as diffusion denoisers",
        benchmark=design.skip_benchmark,
    ),
    Experiment(
        name="sota",  # about 2.5 CPU hours on 2 cores (its budgets can be run one at a time)
        folder="sota",
        question="Against established implementations on the same data and the same clock: "
        "nnU-Net's network (MONAI DynUNet with nnU-Net's plan), a diffusion segmenter from "
        "MONAI's generative components and MONAI's plain UNet, trained on msseg's cache for "
        "msseg's training time (the main job's and the suite's) and for msseg's steps: where "
        "does msseg's default diffusion model stand (leaf, tissue and brain Dice, HD95, ECE, "
        "seconds per case, case by case)?",
        evaluations=design.sota,
        summarise=summaries.sota,
        table=tables.sota,
        draw=figures.sota,
        opt_in="msseg against nnU-Net's DynUNet, a MONAI diffusion segmenter and MONAI's UNet, "
        "at msseg's training times and steps (needs peers/setup.sh)",
        steps=_peer_steps,
    ),
)
DEFAULT_EXPERIMENTS = tuple(name for name, e in EXPERIMENTS.items() if e.default)
