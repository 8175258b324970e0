"""The experiment suite's plan: its settings, the arms and evaluations the chosen experiments
need, and running them resumably.

Every step runs a project binary (tools/train.py, export.py, evaluate.py) as a subprocess,
with its command line logged and stored. A step whose output exists is skipped (training
resumes from its last checkpoint), so an interrupted suite reruns where it stopped. The arms
and evaluations are in design.py, the experiments in registry.py; writing the results is
results.py's.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import runpy
import subprocess
import sys
import time
from pathlib import Path

from absl import logging

from harness import design
from harness.design import EvalJob
from harness.paths import ROOT, shown
from harness.registry import DEFAULT_EXPERIMENTS, EXPERIMENTS
from msseg import files


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
    dpm_steps: tuple[int, ...] = ()  # DPM-Solver++(2M) steps; () = (3, 5, 10), or (3,) quick
    ensembles: tuple[int, ...] = ()  # () = (1, 4, 8), or (1, 2) quick
    experiments: tuple[str, ...] = DEFAULT_EXPERIMENTS
    seed: int = 0  # training seed of every arm (config.seed)
    readme: Path | None = None  # README whose results block is replaced
    python: str = sys.executable
    # the sota experiment: its budgets (some of design.SOTA_BUDGETS, in that order), the peer
    # environment's python (peers/setup.sh; None: <repo>/.peers-venv/bin/python), and how far
    # past msseg's training time a peer may train to reach msseg's steps
    budgets: tuple[str, ...] = ("main", "suite")
    peer_python: str | None = None
    peer_cap: float = 1.25

    def __post_init__(self):
        bad = set(self.experiments) - set(EXPERIMENTS)
        if bad or not self.experiments:
            raise ValueError(
                f"experiments must be some of {tuple(EXPERIMENTS)}, got {self.experiments}"
            )
        if not self.budgets or [b for b in design.SOTA_BUDGETS if b in self.budgets] != list(
            self.budgets
        ):
            raise ValueError(f"budgets must be some of {design.SOTA_BUDGETS} in that order")
        if 10 not in self.ddim_sweep or 1 not in self.ensemble_sweep:
            raise ValueError("the sweeps must include DDIM-10 and an ensemble of 1 (the reference)")

    @property
    def ddim_sweep(self) -> tuple[int, ...]:
        return self.ddim_steps or ((5, 10) if self.quick else (5, 10, 25, 50))

    @property
    def dpm_sweep(self) -> tuple[int, ...]:
        return self.dpm_steps or ((3,) if self.quick else (3, 5, 10))

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

    @functools.cached_property
    def loaded_config(self):
        """The config file's ConfigDict (read once)."""
        return runpy.run_path(str(ROOT / self.config))["get_config"]()

    @property
    def num_depths(self) -> int:
        """The depths of the config's model (the outputs a depth-weight tuple covers)."""
        return len(self.loaded_config.model.channels)

    @property
    def main_steps(self) -> int:
        """The main job's training steps: the config's own (2 with --quick)."""
        return 2 if self.quick else int(self.loaded_config.train.steps)

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


def eval_jobs(s: Settings) -> list[EvalJob]:
    """The evaluations the chosen experiments read (each runs once, whoever reads it)."""
    read = {job for name in s.experiments for job in EXPERIMENTS[name].evaluations(s)}
    jobs = [j for j in design.all_evaluations(s) if j.name in read]
    if missing := read - {j.name for j in jobs}:
        raise ValueError(f"no evaluation(s) {sorted(missing)} in design.all_evaluations")
    return jobs


def arms(s: Settings) -> dict[str, list[str]]:
    """Training flags of the arms the chosen experiments' evaluations need (tools/train.py,
    after --config and --workdir), in training order."""
    needed = {j.arm for j in eval_jobs(s)}
    return {arm: flags for arm, flags in design.all_arms(s).items() if arm in needed}


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
    """The training steps of an arm: its --config.train.steps (the screen's are fewer)."""
    prefix = "--config.train.steps="
    return int(next(f for f in arms(s)[arm] if f.startswith(prefix)).removeprefix(prefix))


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


def benchmark_command(s: Settings, name: str) -> list[str]:
    """Experiment `name`'s timing run (tools/benchmark.py), written to bench/<name>.json."""
    flags = EXPERIMENTS[name].benchmark(s)
    return [s.python, "tools/benchmark.py", *flags, f"--output={s.out / 'bench' / f'{name}.json'}"]


def benchmarks(s: Settings) -> list[str]:
    """The chosen experiments that have a timing run."""
    return [name for name in s.experiments if EXPERIMENTS[name].benchmark is not None]


def run_benchmark(s: Settings, name: str) -> None:
    if (s.out / "bench" / f"{name}.json").exists():
        logging.info("suite: benchmark %s is done", name)
        return
    (s.out / "bench").mkdir(parents=True, exist_ok=True)
    _run(s, benchmark_command(s, name), f"bench_{name}")


def evaluate(s: Settings, job: EvalJob) -> None:
    if (s.out / "eval" / job.name / "summary.json").exists():
        logging.info("suite: evaluation %s is done", job.name)
        return
    _run(s, eval_command(s, job), f"eval_{job.name}")


# ------------------------------------------------------------------ the sota experiment's peers


def peer_python(s: Settings) -> str:
    python = s.peer_python or str(ROOT / ".peers-venv" / "bin" / "python")
    if not Path(python).exists():
        raise RuntimeError(f"no peer environment at {python}: make it with bash peers/setup.sh")
    return python


def train_seconds(s: Settings, arm: str) -> float:
    """An msseg arm's training time: the loop's wall clock (metrics.jsonl `wall_s`, compile
    and checkpoints included) at its last training row, not the final validation's row;
    summed over the runs a resumed training took. A run starts where the step or the clock
    goes back; the run before it counts up to its last row before the step the new one
    logged first (the steps it did after its last checkpoint are done again, and counted
    once)."""
    total, run = 0.0, []  # run: (step, wall_s) rows of the current run
    for line in (s.out / arm / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "loss" not in row or "wall_s" not in row:  # validation rows
            continue
        step, wall = row["step"], row["wall_s"]
        if run and (wall < run[-1][1] or step <= run[-1][0]):  # a resumed run
            total += max((w for st, w in run if st < step), default=0.0)
            run = []
        run.append((step, wall))
    return round(total + (run[-1][1] if run else 0.0), 2)


def peer_budgets(s: Settings, budget: str) -> tuple[dict[str, float], dict[str, int], float]:
    """The snapshots a peer's training takes up to `budget` (msseg's training times, msseg's
    steps, and in the first budget the curve's fractions of its time) and its cap: `peer_cap`
    x msseg's training time, so a slow peer may miss msseg's steps."""
    budgets = design.sota_budgets(s)
    upto = list(budgets)[: list(budgets).index(budget) + 1]
    clock = {b: train_seconds(s, budgets[b]["diff"]) for b in upto}
    times = {f"time_{b}": clock[b] for b in upto}
    first = upto[0]
    times.update({f"curve_{f:g}": round(f * clock[first], 2) for f in design.CURVE_FRACTIONS})
    steps = {f"steps_{b}": budgets[b]["steps"] for b in upto}
    return times, steps, round(s.peer_cap * clock[budget], 2)


def _pairs(values: dict) -> str:
    return ",".join(f"{k}:{v}" for k, v in values.items())


def peer_train_command(s: Settings, peer: str, budget: str) -> list[str]:
    config = s.loaded_config
    times, steps, cap = peer_budgets(s, budget)
    return [
        peer_python(s),
        "peers/peer.py",
        "train",
        f"--model={peer}",
        f"--cache={s.out / 'cache'}",
        f"--workdir={s.out / f'peer_{peer}'}",
        "--patch",
        *(str(n) for n in config.data.pipeline.patch_size),
        f"--batch={config.data.pipeline.batch_size}",
        f"--seed={s.seed}",
        f"--time_s={_pairs(times)}",
        f"--steps={_pairs(steps)}",
        f"--max_s={cap}",
    ]


def peer_snapshots(s: Settings, peer: str) -> dict[str, dict]:
    """The snapshots a peer's training has taken: {name: {step, train_s}}."""
    path = s.out / f"peer_{peer}" / "snapshots.json"
    return json.loads(path.read_text()) if path.exists() else {}


def peer_predict_command(s: Settings, peer: str, snapshot: str) -> list[str]:
    config = s.loaded_config
    work = s.out / f"peer_{peer}"
    cmd = [
        peer_python(s),
        "peers/peer.py",
        "predict",
        f"--workdir={work}",
        f"--snapshot={snapshot}",
        f"--cache={s.out / 'cache'}",
        "--split=test",
        f"--output={work / 'pred' / snapshot}",
        "--batch=2",
        f"--sampler_steps={config.sampler.steps}",
        "--seed=0",
    ]
    return cmd + ([f"--max_cases={s.cases}"] if s.cases else [])


def peer_eval_command(s: Settings, peer: str, snapshot: str) -> list[str]:
    cmd = [
        s.python,
        "tools/evaluate.py",
        f"--probs={s.out / f'peer_{peer}' / 'pred' / snapshot}",
        f"--data={s.data}",
        "--split=test",
        f"--output={s.out / 'eval' / f'peer_{peer}_{snapshot}'}",
        "--worst=0",
    ]
    return cmd + ([f"--max_cases={s.cases}"] if s.cases else [])


def run_peers(s: Settings, budget: str) -> None:
    """Trains each peer on to `budget` (resuming its earlier budgets' run), then predicts and
    scores every snapshot it has taken."""
    for peer in design.PEERS:
        times, steps, cap = peer_budgets(s, budget)
        taken = peer_snapshots(s, peer)
        progress = s.out / f"peer_{peer}" / "progress.json"
        stopped = json.loads(progress.read_text())["train_s"] if progress.exists() else 0.0
        if all(n in taken for n in (*times, *steps)) or stopped >= cap:
            logging.info("suite: peer %s is trained to budget %s", peer, budget)
        else:
            _run(s, peer_train_command(s, peer, budget), f"peer_train_{peer}_{budget}")
        for snapshot in peer_snapshots(s, peer):
            if not (s.out / f"peer_{peer}" / "pred" / snapshot / "probabilities.json").exists():
                _run(s, peer_predict_command(s, peer, snapshot), f"peer_predict_{peer}_{snapshot}")
            if not (s.out / "eval" / f"peer_{peer}_{snapshot}" / "summary.json").exists():
                _run(s, peer_eval_command(s, peer, snapshot), f"eval_peer_{peer}_{snapshot}")


def run_suite(s: Settings) -> list[EvalJob]:
    """Trains the arms the chosen experiments need and runs their evaluations; returns the
    evaluations (results.write_all writes the results from their reports)."""
    files.make_output_dir(s.out)  # InputError (a ValueError) naming it before any work
    jobs = eval_jobs(s)
    if "sota" in s.experiments:
        peer_python(s)  # before any work: the peers need their environment
    for arm in arms(s):
        train_arm(s, arm)
        for job in jobs:  # each arm's evaluations as soon as it is trained
            if job.arm == arm:
                evaluate(s, job)
    if "sota" in s.experiments:  # after msseg's arms: their training times are the clock
        for budget in s.budgets:
            run_peers(s, budget)
    for name in benchmarks(s):  # timed alone, after the trainings
        run_benchmark(s, name)
    return jobs
