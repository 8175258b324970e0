"""Writes the experiment suite's results: per experiment a results.json, plot and README, plus
the suite's table.md and suite.json and the README block of results tables, all built from the
evaluation reports (summary.json) of the run.

Every figure in a table is read from a results.json written here, and every results.json
entry names the summary.json it came from (relative to the run folder).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
from importlib import metadata
from pathlib import Path

from absl import logging

from harness import design, figures
from harness.design import EvalJob
from harness.paths import ROOT, repo_relative, shown
from harness.plan import Settings, benchmark_command, eval_command, train_commands
from harness.registry import DEFAULT_EXPERIMENTS, EXPERIMENTS, Experiment
from msseg import benchmark, files

BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
READING = "## Reading"


def machine() -> dict:
    """The machine, software versions, commit and time results are written with."""
    cpu = benchmark.cpu_model()
    mem = 0.0
    if os.path.exists("/proc/meminfo"):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) / 2**20
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": metadata.version("jax"),
        "commit": commit,
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def suite_command(s: Settings) -> str:
    """The tools/suite.py command line of these settings (non-default flags only)."""
    cmd = ["python", "tools/suite.py", f"--out={_repo_relative(s.out)}"]
    if s.quick:
        cmd.append("--quick")
    if s.data != "mni152":
        cmd.append(f"--data={s.data}")
    for flag, value in (("steps", s.steps), ("max_cases", s.max_cases)):
        if value:
            cmd.append(f"--{flag}={value}")
    if s.seed:
        cmd.append(f"--seed={s.seed}")
    if s.ddpm_cases != 1:
        cmd.append(f"--ddpm_cases={s.ddpm_cases}")
    for flag, value in (
        ("ddim_steps", s.ddim_steps),
        ("dpm_steps", s.dpm_steps),
        ("ensembles", s.ensembles),
    ):
        if value:
            cmd.append(f"--{flag}={','.join(map(str, value))}")
    if "sota" in s.experiments and tuple(s.budgets) != design.SOTA_BUDGETS:
        cmd.append(f"--budgets={','.join(s.budgets)}")
    if tuple(s.experiments) != DEFAULT_EXPERIMENTS:
        cmd.append(f"--experiments={','.join(s.experiments)}")
    return shlex.join(cmd)


def _repo_relative(path: Path) -> str:
    return os.path.relpath(path, ROOT) if path.is_relative_to(ROOT) else str(path)


def evaluated(s: Settings, jobs: list[EvalJob]) -> list[str]:
    """When the evaluations' reports were written (first, last; UTC): the time their wall
    times were measured, which may be long before the results are written."""
    stamps = sorted(
        (s.out / "eval" / j.name / "summary.json").stat().st_mtime
        for j in jobs
        if (s.out / "eval" / j.name / "summary.json").exists()
    )
    if not stamps:
        return []
    return [
        datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
        for t in (stamps[0], stamps[-1])
    ]


def _read_by(s: Settings, exp: Experiment, jobs: list[EvalJob]) -> list[EvalJob]:
    """The evaluations of `jobs` that `exp` reads."""
    names = set(exp.evaluations(s))
    return [j for j in jobs if j.name in names]


def _title(exp: Experiment) -> str:
    return exp.folder.replace("_", " ").capitalize()


def _readme(
    s: Settings,
    exp: Experiment,
    res: dict,
    mach: dict,
    jobs: list[EvalJob],
    plots: list[str],
    old: str,
) -> str:
    runs = _read_by(s, exp, jobs)
    arms = list(dict.fromkeys(j.arm for j in runs))
    cmds = [shown(c) for a in arms for c in train_commands(s, a)]
    cmds += [shown(eval_command(s, j)) for j in runs]
    if exp.benchmark is not None:
        cmds.append(shown(benchmark_command(s, exp.name)))
    if exp.steps is not None:
        cmds += [shown(c) for c in exp.steps(s)]
    parts = [
        f"# {_title(exp)}",
        "",
        f"**Question.** {exp.question}",
        "",
        "**Command** (the whole suite; this experiment's steps are below):",
        "```bash",
        suite_command(s),
        "```",
        "<details><summary>steps</summary>\n\n```bash\n" + "\n".join(cmds) + "\n```\n</details>",
        "",
        f"**Config.** `{s.config}` with the arm's flags above; {s.train_steps} training steps "
        f"per arm; test split of `{s.data}`"
        + (f" (first {s.cases} case(s))" if s.cases else "")
        + "; windows overlap 0.25; seed 0; scored on each label map's own grid.",
        "",
        f"**Machine.** {mach['cpu']}, {mach['cores']} cores, {mach['memory_gib']} GiB, "
        f"{mach['platform']}, python {mach['python']}, jax {mach['jax']}, commit "
        f"{mach['commit']}, written {mach['date']}"
        + (
            f"; its evaluations finished between {res['evaluated'][0]} and {res['evaluated'][1]}."
            if res.get("evaluated")
            else "."
        ),
        "",
        "**Result** (Dice x 100, mean over the test cases; from `results.json`):",
        "",
        exp.table(res),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    text = "\n".join(parts)
    if READING in old:  # a hand-written reading survives a rerun
        text += "\n" + old[old.index(READING) :]
    return text


def own_markers(name: str) -> tuple[str, str]:
    """The README markers of experiment `name`'s own block (its table alone, e.g. at the top
    of the results), instead of the shared suite block."""
    return f"<!-- suite:{name}:begin -->", f"<!-- suite:{name}:end -->"


def _replace_block(path: Path, text: str, begin: str, end: str, block: str) -> str:
    if begin not in text or end not in text:
        raise ValueError(f"{path}: no {begin} ... {end} block to put the results in")
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{begin}\n{block}\n{end}{tail}"


def write_all(s: Settings, jobs: list[EvalJob]) -> list[Path]:
    """Writes every chosen experiment's folder, the suite folder and the README block."""
    mach = machine()
    written = []
    for name in s.experiments:
        exp = EXPERIMENTS[name]
        res = exp.summarise(s)
        folder = s.results / f"{s.date}_{exp.folder}"
        folder.mkdir(parents=True, exist_ok=True)
        res = {
            "experiment": name,
            "question": exp.question,
            "run": _repo_relative(s.out),
            "machine": mach,
            "evaluated": evaluated(s, _read_by(s, exp, jobs)),
            **res,
        }
        files.write_text(folder / "results.json", json.dumps(res, indent=1, allow_nan=False) + "\n")
        plots = figures.plot(name, exp.draw, res, folder)
        old = (folder / "README.md").read_text() if (folder / "README.md").exists() else ""
        files.write_text(folder / "README.md", _readme(s, exp, res, mach, jobs, plots, old))
        written.append(folder / "results.json")
        logging.info("suite: wrote %s", folder)
    # the tables of every experiment with results (also those of an earlier, partial run),
    # read back from their results.json; an experiment with its own block in the README
    # (`own_markers`) goes there, the others to the shared block
    readme = s.readme.read_text() if s.readme is not None else None
    shared, own = [], {}
    for exp in EXPERIMENTS.values():
        folder = s.results / f"{s.date}_{exp.folder}"
        if not (folder / "results.json").exists():
            continue
        res = json.loads((folder / "results.json").read_text())
        rel = os.path.relpath(folder, s.readme.parent) if s.readme else str(folder)
        link = f"[{rel}/results.json]({rel}/results.json)"
        section = f"**{_title(exp)}** ({link})\n\n{exp.table(res)}"
        begin, _ = own_markers(exp.name)
        if readme is not None and begin in readme:
            own[exp.name] = section
        else:
            shared.append((exp.name, section))
    block = "\n\n".join([sec for _, sec in shared] + list(own.values()))
    suite = s.results / f"{s.date}_suite"
    suite.mkdir(parents=True, exist_ok=True)
    files.write_text(suite / "table.md", block + "\n")
    commands = (s.out / "commands.log").read_text() if (s.out / "commands.log").exists() else ""
    files.write_text(
        suite / "suite.json",
        json.dumps(
            {
                "command": suite_command(s),
                "machine": mach,
                "experiments": list(s.experiments),
                "commands": [repo_relative(c) for c in commands.splitlines()],
            },
            indent=1,
        )
        + "\n",
    )
    if readme is not None:
        for name, section in own.items():
            readme = _replace_block(s.readme, readme, *own_markers(name), section)
        # the shared block only when this run wrote one of its experiments
        if any(name in s.experiments for name, _ in shared):
            readme = _replace_block(
                s.readme, readme, BEGIN, END, "\n\n".join(sec for _, sec in shared)
            )
        files.write_text(s.readme, readme)
    return written
