"""The experiment suite's plan: the training arms, the evaluations, and running them resumably.

Four models are trained with the same config, seed and steps, differing only where the
question needs it:

- `ms_mixed`: multiscale deep supervision, patches entering at depth 0 or 1 (p = 0.75 /
  0.25); the main model (lower-resolution entry, the samplers' costs, diffusion);
- `ms_full`: multiscale deep supervision, depth-0 entry only;
- `single`: as `ms_full` with only the depth-0 output supervised (depth weights 1, 0, ...):
  the same parameters and steps as a single-output U-Net;
- `det_mixed`: as `ms_mixed`, trained as a deterministic segmenter (no diffusion).

The `recipe` experiment (not in the default set: about 1.5 CPU hours on 2 cores) trains the
config's diffusion recipe and the same U-Net as a deterministic segmenter with the same
cross-entropy + Dice loss, at two seeds each: `recipe_diff_s<seed>` and `recipe_det_s<seed>`.
The `screen` experiment (opt-in, about 1.5 CPU hours) trains one seed of each recipe change
alone and in the combinations that led to the default, at 40 % of the steps (`SCREEN`).

Every step runs a project binary (tools/train.py, export.py, evaluate.py) as a subprocess,
with its command line logged and stored. A step whose output exists is skipped (training
resumes from its last checkpoint), so an interrupted suite reruns where it stopped.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from absl import logging

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ("multiscale", "lowres", "diffusion", "cost", "recipe", "screen")
DEFAULT_EXPERIMENTS = EXPERIMENTS[:4]  # recipe, screen: opt-in (their own CPU budgets)

# The screen's arms: flags on top of the config (whose diffusion defaults are the chosen
# recipe: logits, CE + Dice, recycling, training at DDIM-5's timesteps). Each switches the
# recipe's parts off or on; `x0` is the original recipe.
_ALL_T = "--config.diffusion.train_timesteps=all"
_NO_REC = "--config.diffusion.recycle_prob=0.0"
_DDIM10 = "--config.sampler.steps=10"
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
class Settings:
    """What the suite runs. `quick`: the tiny config, a few steps, one test case."""

    out: Path  # run folder: <arm>/ workdirs, eval/<job>/ reports, commands.log
    results: Path  # experiments/ folder the results go to
    date: str  # prefix of the experiment folders
    quick: bool = False
    data: str = "mni152"
    steps: int = 0  # 0 = the mode's default
    max_cases: int = 0  # test cases evaluated (0 = all)
    ddpm_cases: int = 1  # test cases DDPM-1000 is run on (the first ones)
    ddim_steps: tuple[int, ...] = ()  # () = (5, 10, 25, 50), or (5, 10) quick
    ensembles: tuple[int, ...] = ()  # () = (1, 4, 8), or (1, 2) quick
    experiments: tuple[str, ...] = DEFAULT_EXPERIMENTS
    seed: int = 0  # training seed of every arm (config.seed)
    readme: Path | None = None  # README whose results block is replaced
    python: str = sys.executable

    def __post_init__(self):
        bad = set(self.experiments) - set(EXPERIMENTS)
        if bad or not self.experiments:
            raise ValueError(f"experiments must be some of {EXPERIMENTS}, got {self.experiments}")
        if 10 not in self.ddim_sweep or 1 not in self.ensemble_sweep:
            raise ValueError("the sweeps must include DDIM-10 and an ensemble of 1 (the reference)")

    @property
    def ddim_sweep(self) -> tuple[int, ...]:
        return self.ddim_steps or ((5, 10) if self.quick else (5, 10, 25, 50))

    @property
    def ensemble_sweep(self) -> tuple[int, ...]:
        return self.ensembles or ((1, 2) if self.quick else (1, 4, 8))

    @property
    def screen_steps(self) -> int:
        """The screen's reduced budget: 40 % of the training steps."""
        return max(1, round(0.4 * self.train_steps))

    @property
    def recipe_seeds(self) -> tuple[int, ...]:
        """The recipe experiment's training seeds: `seed` and the next one."""
        return (self.seed, self.seed + 1)

    @property
    def config(self) -> str:
        return "configs/tiny.py" if self.quick else "configs/quickstart.py"

    @property
    def num_depths(self) -> int:
        """The depths of the config's model (the outputs a depth-weight tuple covers)."""
        import runpy  # noqa: PLC0415

        config = runpy.run_path(str(ROOT / self.config))["get_config"]()
        return len(config.model.channels)

    @property
    def train_steps(self) -> int:
        return self.steps or (3 if self.quick else 3000)

    @property
    def cases(self) -> int:
        return self.max_cases or (1 if self.quick else 0)

    def base_flags(self, seed: int | None = None, steps: int | None = None) -> list[str]:
        """Flags every arm shares (on top of the config file); `seed` and `steps` override
        `self.seed` and `train_steps`."""
        seed = self.seed if seed is None else seed
        steps = steps or self.train_steps
        flags = [
            f"--config.data.spec={self.data}",
            f"--config.train.steps={steps}",
            "--config.train.eval_every=0",
            f"--config.train.checkpoint_every={max(1, min(250, steps // 4))}",
        ]
        if self.quick:  # DDPM over 20 steps instead of 1000: the same code, CI-sized
            flags.append("--config.diffusion.num_timesteps=20")
        if seed:
            flags.append(f"--config.seed={seed}")
        return flags


def repo_relative(text: str) -> str:
    """`text` with every path under the repo made relative to it."""
    return text.replace(str(ROOT) + os.sep, "")


def shown(cmd: list[str]) -> str:
    """A command as logged and published: `python`, and paths under the repo relative to it
    (every binary runs from the repo root, so the line runs as shown from a clone)."""
    return shlex.join(["python", *(repo_relative(a) for a in cmd[1:])])


def _tuple(values) -> str:
    return "(" + "".join(f"{v}," for v in values) + ")"


def arms(s: Settings) -> dict[str, list[str]]:
    """Training flags of each arm (tools/train.py, after --config and --workdir)."""
    mixed = ["--config.train.entry_depths=(0,1,)", "--config.train.entry_probs=(0.75,0.25,)"]
    full = [
        "--config.train.entry_depths=(0,)",
        "--config.train.entry_probs=()",
        "--config.train.val_depths=(0,)",
    ]
    single = [1.0] + [0.0] * (s.num_depths - 1)
    # the recipe arms share one preprocessed cache (the others each build <workdir>/cache)
    cache = f"--config.data.cache={s.out / 'cache'}"
    recipe = {}
    if "screen" in s.experiments:
        for name, flags in SCREEN.items():
            recipe[f"screen_{name}"] = [*s.base_flags(steps=s.screen_steps), cache, *flags]
    if "recipe" in s.experiments:
        for seed in s.recipe_seeds:
            recipe[f"recipe_diff_s{seed}"] = [*s.base_flags(seed), cache]
            recipe[f"recipe_det_s{seed}"] = [*s.base_flags(seed), cache, *DETERMINISTIC]
    return {
        "ms_mixed": [*s.base_flags(), *mixed],
        "ms_full": [*s.base_flags(), *full],
        "single": [*s.base_flags(), *full, f"--config.diffusion.depth_weights={_tuple(single)}"],
        "det_mixed": [
            *s.base_flags(),
            *mixed,
            *DETERMINISTIC,
        ],
        **recipe,
    }


@dataclasses.dataclass(frozen=True)
class EvalJob:
    name: str  # report folder eval/<name>
    arm: str
    flags: tuple[str, ...]  # tools/evaluate.py flags beyond the shared ones
    experiments: tuple[str, ...]  # which experiments read it


def eval_jobs(s: Settings) -> list[EvalJob]:
    """The evaluations the chosen experiments need (each runs once, whoever reads it)."""
    jobs = [
        EvalJob("single", "single", (), ("multiscale",)),
        EvalJob("ms_full", "ms_full", (), ("multiscale", "lowres")),
        EvalJob("ms_full_input4x", "ms_full", ("--input_depth=1",), ("lowres",)),
        EvalJob(
            "ms_mixed_ddim10",
            "ms_mixed",
            ("--sampler=ddim", "--steps=10"),
            ("lowres", "diffusion", "cost"),
        ),
        EvalJob("ms_mixed_depth1", "ms_mixed", ("--depths=1",), ("lowres",)),
        EvalJob("det_mixed", "det_mixed", (), ("diffusion",)),
    ]
    for n in s.ddim_sweep:
        if n != 10:
            jobs.append(
                EvalJob(
                    f"ms_mixed_ddim{n}", "ms_mixed", ("--sampler=ddim", f"--steps={n}"), ("cost",)
                )
            )
    for e in s.ensemble_sweep:
        if e != 1:
            jobs.append(
                EvalJob(
                    f"ms_mixed_ens{e}",
                    "ms_mixed",
                    ("--sampler=ddim", "--steps=10", f"--ensemble={e}"),
                    ("diffusion", "cost"),
                )
            )
    jobs += [
        EvalJob("ms_mixed_multiscale", "ms_mixed", ("--sampler=multiscale",), ("cost",)),
        EvalJob(
            "ms_mixed_ddpm",
            "ms_mixed",
            ("--sampler=ddpm", f"--max_cases={s.ddpm_cases}"),
            ("cost",),
        ),
    ]
    if "screen" in s.experiments:
        jobs += [EvalJob(f"screen_{name}", f"screen_{name}", (), ("screen",)) for name in SCREEN]
    if "recipe" in s.experiments:
        for seed in s.recipe_seeds:
            # the config's own sampler (DDIM with its steps)
            jobs.append(EvalJob(f"recipe_diff_s{seed}", f"recipe_diff_s{seed}", (), ("recipe",)))
            jobs.append(EvalJob(f"recipe_det_s{seed}", f"recipe_det_s{seed}", (), ("recipe",)))
    return [j for j in jobs if set(j.experiments) & set(s.experiments)]


def _run(s: Settings, cmd: list[str], log_name: str) -> float:
    """Runs a project binary from the repo root; returns its wall time. Logs the command to
    commands.log and its output to logs/<log_name>.log; a failure raises with the log's tail."""
    s.out.mkdir(parents=True, exist_ok=True)
    (s.out / "logs").mkdir(exist_ok=True)
    line = shown(cmd)
    with open(s.out / "commands.log", "a") as f:
        f.write(line + "\n")
    logging.info("suite: %s", line)
    log = s.out / "logs" / f"{log_name}.log"
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env=_env())
    seconds = time.perf_counter() - start
    if proc.returncode:
        tail = log.read_text()[-3000:]
        raise RuntimeError(f"{line} failed ({proc.returncode}); end of {log}:\n{tail}")
    return seconds


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # keep freed activations in the heap (WORKSPACE.md, Precision/Allocator)
    env.setdefault("MALLOC_MMAP_THRESHOLD_", "1073741824")
    env.setdefault("MALLOC_TRIM_THRESHOLD_", "4294967296")
    return env


def train_commands(s: Settings, arm: str) -> list[list[str]]:
    workdir = s.out / arm
    return [
        [
            s.python,
            "tools/train.py",
            f"--config={s.config}",
            f"--workdir={workdir}",
            *arms(s)[arm],
        ],
        [s.python, "tools/export.py", f"--workdir={workdir}", f"--output={workdir / 'model'}"],
    ]


def eval_command(s: Settings, job: EvalJob) -> list[str]:
    flags = list(job.flags)
    if s.cases and not any(f.startswith("--max_cases=") for f in flags):
        flags.append(f"--max_cases={s.cases}")
    return [
        s.python,
        "tools/evaluate.py",
        f"--model={s.out / job.arm / 'model'}",
        f"--data={s.data}",
        "--split=test",
        f"--output={s.out / 'eval' / job.name}",
        "--overlap=0.25",
        "--batch=2",
        "--seed=0",
        "--worst=0",
        *flags,
    ]


def arm_steps(s: Settings, arm: str) -> int:
    """The training steps of an arm (the screen's are fewer)."""
    return s.screen_steps if arm.startswith("screen_") else s.train_steps


def train_arm(s: Settings, arm: str) -> None:
    """Trains (or resumes) and exports one arm; its wall times go to <arm>/suite_train.json."""
    record = s.out / arm / "suite_train.json"
    done = json.loads(record.read_text()) if record.exists() else {"train_s": [], "export_s": 0}
    steps = arm_steps(s, arm)
    if done.get("steps") == steps and (s.out / arm / "model" / "metadata.json").exists():
        logging.info("suite: %s is trained and exported (%s)", arm, record)
        return
    train_cmd, export_cmd = train_commands(s, arm)
    done["train_s"].append(round(_run(s, train_cmd, f"train_{arm}"), 1))
    done["export_s"] = round(_run(s, export_cmd, f"export_{arm}"), 1)
    done["steps"] = steps
    done["commands"] = [shown(c) for c in (train_cmd, export_cmd)]
    record.write_text(json.dumps(done, indent=1) + "\n")


def evaluate(s: Settings, job: EvalJob) -> None:
    if (s.out / "eval" / job.name / "summary.json").exists():
        logging.info("suite: evaluation %s is done", job.name)
        return
    _run(s, eval_command(s, job), f"eval_{job.name}")


def run_suite(s: Settings) -> list[Path]:
    """Trains the arms the chosen experiments need, runs their evaluations, and writes the
    results (msseg.suite.results). Returns the results.json files written."""
    from msseg import files  # noqa: PLC0415
    from msseg.suite import results  # noqa: PLC0415

    files.make_output_dir(s.out)  # InputError (a ValueError) naming it before any work
    jobs = eval_jobs(s)
    needed = {j.arm for j in jobs}
    for arm in arms(s):  # ms_mixed first: three experiments read it
        if arm in needed:
            train_arm(s, arm)
            for job in jobs:  # each arm's evaluations as soon as it is trained
                if job.arm == arm:
                    evaluate(s, job)
    return results.write_all(s, jobs)
