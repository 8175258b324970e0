"""The experiment suite's results: per experiment a results.json, plots and a README, plus the
README's results tables, all built from the evaluation reports (summary.json) of the run.

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
from pathlib import Path

from absl import logging

from msseg.suite import figures
from msseg.suite.plan import (
    DEFAULT_EXPERIMENTS,
    EXPERIMENTS,
    ROOT,
    SCREEN,
    EvalJob,
    Settings,
    eval_command,
    repo_relative,
    shown,
    train_commands,
)

FOLDERS = {
    "multiscale": "multiscale_vs_single",
    "lowres": "lowres_entry",
    "diffusion": "diffusion_vs_deterministic",
    "cost": "cost_vs_quality",
    "recipe": "recipe_vs_deterministic",
    "screen": "recipe_changes_screen",
}
QUESTIONS = {
    "multiscale": "Does supervising every decoder depth (multiscale deep supervision) make the "
    "U-Net more accurate than supervising only its full-resolution output, with the same "
    "parameters, data, seed and steps?",
    "lowres": "A model trained with patches entering at depth 0 or 1 segments a scan at twice "
    "the model's spacing entered at depth 1; a model trained at depth 0 only gets the same "
    "scan upsampled to its spacing. Which is better on the coarse scan, and what does mixed "
    "entry cost on a full-resolution scan?",
    "diffusion": "The diffusion segmenter against the same U-Net trained as a deterministic "
    "segmenter: Dice, HD95, calibration of the voxel probabilities (expected calibration "
    "error of the ensemble mean), and whether the uncertainty flags the errors (AUROC of the "
    "voxel entropy for the misclassified voxels).",
    "cost": "What does each sampler cost (denoiser evaluations, wall time) and what Dice does "
    "it give: DDPM over the whole schedule, DDIM with 5/10/25/50 steps, multiscale "
    "coarse-to-fine, ensembles of 1/4/8?",
    "recipe": "Does the config's diffusion recipe, sampled with its own DDIM steps, segment at "
    "least as well as the same U-Net trained as a deterministic segmenter with the same "
    "cross-entropy + Dice loss (leaf Dice no more than 0.5 points behind, at each of two "
    "seeds), with an ECE no worse than the deterministic model's and an entropy AUROC for "
    "the misclassified voxels of at least 0.85?",
    "screen": "At a reduced budget and one seed, what does each part of the diffusion recipe "
    "(logits with CE + Dice, training at the sampler's timesteps, recycling, a signal scale) "
    "add, alone and combined, against the original x0 recipe and the same U-Net trained "
    "deterministically?",
}
BEGIN, END = "<!-- suite:begin -->", "<!-- suite:end -->"
READING = "## Reading"


def _load(s: Settings, job: str) -> dict:
    return json.loads((s.out / "eval" / job / "summary.json").read_text())


def extract(s: Settings, job: str) -> dict:
    """The figures the suite reports from eval/<job>/summary.json (one entry depth)."""
    summ = _load(s, job)
    levels = summ["levels"]
    finest = max(levels, key=int)
    calib, seg = summ["calibration"], summ["segmentation"]
    return {
        "source": f"eval/{job}/summary.json",
        "num_cases": summ["num_cases"],
        "levels": {lv: levels[lv]["labels"] for lv in levels},
        "dice": {lv: levels[lv]["dice"]["mean"] for lv in levels},
        "dice_std": {lv: levels[lv]["dice"]["std"] for lv in levels},
        "hd95": {lv: levels[lv]["hd95"]["mean"] for lv in levels},
        "dice_leaves": levels[finest]["dice"]["mean"],
        "hd95_leaves": levels[finest]["hd95"]["mean"],
        "labels": {
            k: {"dice": v["dice"]["mean"], "hd95": v["hd95"]["mean"]}
            for k, v in summ["labels"].items()
        },
        "case_dice": summ["case_dice"],
        "ece": calib["ece"],
        "auroc_entropy_error": calib["auroc_entropy_error"],
        "error_rate": calib["error_rate"],
        "reliability": calib["reliability"],
        "median_seconds_per_case": seg["median_seconds_per_case"],
        "denoiser_evals_per_window": seg["denoiser_evals_per_window"],
        "denoiser_evals_per_case": seg["denoiser_evals_per_case"],
        "sampler": summ["sampler"],
        "entry_depth": summ["entry_depths"][0],
        "input_depth": summ.get("input_depth", 0),
    }


def training(s: Settings, arm: str) -> dict:
    """Steps, wall time and final validation Dice of an arm (its workdir's records)."""
    workdir = s.out / arm
    record = json.loads((workdir / "suite_train.json").read_text())
    val = {}
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if any(k.startswith("val/") for k in row):
            val = {k: v for k, v in row.items() if k.endswith("/leaves")}
    cfg = json.loads((workdir / "config.json").read_text())
    return {
        "steps": record["steps"],
        "train_wall_s": round(sum(record["train_s"]), 1),
        "final_validation_dice_leaves": val,
        "spacing_mm": cfg["data"]["spacing"],
        # as published (paths relative to the repo), also for records of older runs
        "commands": [repo_relative(c) for c in record["commands"]],
    }


def paired(a: dict, b: dict) -> dict:
    """Leaf Dice of `a` minus `b` case by case, over the cases both scored: the mean, the
    sample standard deviation, the extremes and how many cases `a` wins. The arms are scored
    on the same test cases, so the spread of these differences, not that of the case Dice,
    says whether a gap between two arms is more than case-to-case variation."""
    cases = sorted(set(a["case_dice"]) & set(b["case_dice"]))
    diffs = [a["case_dice"][c] - b["case_dice"][c] for c in cases]
    n = len(diffs)
    mean = sum(diffs) / n if n else None
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5 if n > 1 else None
    return {
        "n": n,
        "mean": mean,
        "sd": sd,
        "min": min(diffs, default=None),
        "max": max(diffs, default=None),
        "wins": sum(d > 0 for d in diffs),
    }


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _level_names(r: dict) -> list[str]:
    """Column names of the tree levels: the label for a single one, the labels joined for up
    to three, "leaves" for the finest."""
    ordered = sorted(r["levels"].items(), key=lambda kv: int(kv[0]))
    names = []
    for i, (lv, labels) in enumerate(ordered):
        if i == len(ordered) - 1 and i > 0:
            names.append("leaves")
        elif len(labels) <= 3:
            names.append("/".join(labels))
        else:
            names.append(f"level {lv}")
    return names


# ------------------------------------------------------------------------- experiments


def multiscale(s: Settings) -> dict:
    arms = {"multiscale": extract(s, "ms_full"), "single_output": extract(s, "single")}
    return {
        "arms": arms,
        "training": {"multiscale": training(s, "ms_full"), "single_output": training(s, "single")},
        "dice_leaves_difference": arms["multiscale"]["dice_leaves"]
        - arms["single_output"]["dice_leaves"],
        "dice_leaves_paired": paired(arms["multiscale"], arms["single_output"]),
    }


def lowres(s: Settings) -> dict:
    spacing = training(s, "ms_mixed")["spacing_mm"][0]
    mixed, upsampled = extract(s, "ms_mixed_depth1"), extract(s, "ms_full_input4x")
    return {
        "model_spacing_mm": spacing,
        "coarse_spacing_mm": 2 * spacing,
        "arms": {
            "mixed_entry": {
                "full_res": extract(s, "ms_mixed_ddim10"),
                "coarse_at_depth1": mixed,
            },
            "full_res_only": {
                "full_res": extract(s, "ms_full"),
                "coarse_upsampled": upsampled,
            },
        },
        # on the coarse scan: entered at depth 1 by the mixed model minus upsampled for the other
        "coarse_dice_leaves_paired": paired(mixed, upsampled),
        "training": {
            "mixed_entry": training(s, "ms_mixed"),
            "full_res_only": training(s, "ms_full"),
        },
    }


def diffusion(s: Settings) -> dict:
    arms = {"deterministic": extract(s, "det_mixed")}
    for e in s.ensemble_sweep:
        arms[f"diffusion_ensemble{e}"] = extract(
            s, "ms_mixed_ddim10" if e == 1 else f"ms_mixed_ens{e}"
        )
    det = arms["deterministic"]
    return {
        "arms": arms,
        # each diffusion ensemble minus the deterministic model
        "dice_leaves_paired": {k: paired(r, det) for k, r in arms.items() if r is not det},
        "training": {
            "diffusion": training(s, "ms_mixed"),
            "deterministic": training(s, "det_mixed"),
        },
    }


def _setting(r: dict) -> str:
    smp = r["sampler"]
    if smp["kind"] == "ddpm":
        name = f"DDPM-{r['denoiser_evals_per_window']}"
    elif smp["kind"] == "multiscale":
        name = f"multiscale ({smp['coarse_steps']} coarse + {smp['refine_steps']} refine)"
    else:
        name = f"DDIM-{smp['steps']}"
    return name + (f" x{smp['ensemble']}" if smp["ensemble"] > 1 else "")


def cost(s: Settings) -> dict:
    names = [f"ms_mixed_ddim{n}" for n in sorted(s.ddim_sweep)]
    names += [f"ms_mixed_ens{e}" for e in sorted(s.ensemble_sweep) if e != 1]
    names += ["ms_mixed_multiscale", "ms_mixed_ddpm"]
    rows = {n: extract(s, n) for n in names}
    subset = list(rows["ms_mixed_ddpm"]["case_dice"])
    ref = rows["ms_mixed_ddim10"]  # Settings keeps DDIM-10 in every sweep
    out = []
    for n, r in sorted(rows.items(), key=lambda kv: kv[1]["denoiser_evals_per_case"]):
        out.append(
            {
                "setting": _setting(r),
                "job": n,
                "denoiser_evals_per_window": r["denoiser_evals_per_window"],
                "denoiser_evals_per_case": r["denoiser_evals_per_case"],
                "median_seconds_per_case": r["median_seconds_per_case"],
                "dice_leaves": r["dice_leaves"],
                "num_cases": r["num_cases"],
                # on the cases the DDPM chain ran on, to compare with it
                "dice_leaves_ddpm_cases": sum(r["case_dice"][c] for c in subset) / len(subset),
                # minus DDIM-10 case by case
                "dice_leaves_paired_vs_ddim10": paired(r, ref),
                "source": r["source"],
            }
        )
    return {"ddpm_cases": subset, "settings": out, "training": {"model": training(s, "ms_mixed")}}


# the recipe experiment's bar: leaf Dice within this of the deterministic model's, at every
# seed; ECE no worse than its; entropy AUROC for the errors at least this
RECIPE_DICE_MARGIN = 0.005
RECIPE_MIN_AUROC = 0.85


def recipe(s: Settings) -> dict:
    seeds = {}
    for seed in s.recipe_seeds:
        diff, det = extract(s, f"recipe_diff_s{seed}"), extract(s, f"recipe_det_s{seed}")
        p = paired(diff, det)
        seeds[str(seed)] = {
            "arms": {"diffusion": diff, "deterministic": det},
            # diffusion minus deterministic, case by case
            "dice_leaves_paired": p,
            "dice_within_margin": diff["dice_leaves"] >= det["dice_leaves"] - RECIPE_DICE_MARGIN,
            "ece_no_worse": diff["ece"] <= det["ece"],
            "auroc_at_least": (diff["auroc_entropy_error"] or 0) >= RECIPE_MIN_AUROC,
            "training": {
                "diffusion": training(s, f"recipe_diff_s{seed}"),
                "deterministic": training(s, f"recipe_det_s{seed}"),
            },
        }
    met = all(
        r["dice_within_margin"] and r["ece_no_worse"] and r["auroc_at_least"]
        for r in seeds.values()
    )
    return {
        "dice_margin": RECIPE_DICE_MARGIN,
        "min_auroc": RECIPE_MIN_AUROC,
        "seeds": seeds,
        "met": met,
    }


def screen(s: Settings) -> dict:
    arms = {name: extract(s, f"screen_{name}") for name in SCREEN}
    det = arms["det"]
    return {
        "steps": s.screen_steps,
        "flags": SCREEN,
        "arms": arms,
        # each arm minus the deterministic U-Net, case by case
        "dice_leaves_paired_vs_det": {n: paired(r, det) for n, r in arms.items() if n != "det"},
        "training": {n: training(s, f"screen_{n}") for n in SCREEN},
    }


BUILDERS = {
    "multiscale": multiscale,
    "lowres": lowres,
    "diffusion": diffusion,
    "cost": cost,
    "recipe": recipe,
    "screen": screen,
}


# ------------------------------------------------------------------------- tables


def _arm_row(head: list[str], r: dict, tail: list[str]) -> str:
    """A table row: `head`, then an evaluation's denoiser evaluations per window, leaf Dice,
    leaf HD95, ECE and entropy AUROC, then `tail`."""
    cells = [
        str(r["denoiser_evals_per_window"]),
        _pct(r["dice_leaves"]),
        _num(r["hd95_leaves"], 2),
        _num(r["ece"]),
        _num(r["auroc_entropy_error"]),
    ]
    return "| " + " | ".join([*head, *cells, *tail]) + " |"


def table(name: str, res: dict) -> str:
    """The markdown table of one experiment's results.json."""
    if name == "multiscale":
        first = res["arms"]["multiscale"]
        levels = _level_names(first)
        head = "| model | " + " | ".join(f"Dice {lv}" for lv in levels) + " | HD95 leaves (mm) |"
        lines = [head, "|---" * (len(levels) + 2) + "|"]
        for arm, r in res["arms"].items():
            dice = " | ".join(_pct(r["dice"][k]) for k in sorted(r["dice"], key=int))
            lines.append(f"| {arm.replace('_', ' ')} | {dice} | {_num(r['hd95_leaves'], 2)} |")
        diff = 100 * res["dice_leaves_difference"]
        verdict = (
            "at least as accurate as"
            if diff >= 0
            else f"**less accurate** than (by {_pct(-res['dice_leaves_difference'])} points)"
        )
        p = res["dice_leaves_paired"]
        spread = f", case by case {100 * p['sd']:.1f} s.d." if p["sd"] is not None else ""
        lines += [
            "",
            f"At the leaves the multiscale model is {verdict} the single-output one "
            f"({diff:+.1f} Dice points{spread}; better on {p['wins']} of {p['n']} test cases).",
        ]
        return "\n".join(lines)
    if name == "lowres":
        c = res["coarse_spacing_mm"]
        first = res["arms"]["mixed_entry"]["full_res"]
        levels = _level_names(first)
        head = "| model | input | " + " | ".join(f"Dice {lv}" for lv in levels) + " |"
        lines = [head, "|---" * (len(levels) + 2) + "|"]
        inputs = {
            "full_res": f"{res['model_spacing_mm']:g} mm",
            "coarse_at_depth1": f"{c:g} mm, entered at depth 1",
            "coarse_upsampled": f"{c:g} mm, upsampled",
        }
        for arm, runs in res["arms"].items():
            for key, r in runs.items():
                dice = " | ".join(_pct(r["dice"][k]) for k in sorted(r["dice"], key=int))
                lines.append(f"| {arm.replace('_', ' ')} | {inputs[key]} | {dice} |")
        return "\n".join(lines)
    if name == "screen":
        lines = [
            "| arm | denoiser evals / window | Dice leaves | HD95 leaves (mm) | ECE "
            "| entropy AUROC for errors | minus det, case by case |",
            "|---|---|---|---|---|---|---|",
        ]
        for arm, r in res["arms"].items():
            p = res["dice_leaves_paired_vs_det"].get(arm)
            vs = "—" if p is None else f"{_pct(p['mean'])} ({p['wins']}/{p['n']} ahead)"
            lines.append(_arm_row([arm], r, [vs]))
        return "\n".join(lines)
    if name == "recipe":
        lines = [
            "| seed | model | denoiser evals / window | Dice leaves | HD95 leaves (mm) | ECE "
            "| entropy AUROC for errors | s / case (median) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for seed, runs in res["seeds"].items():
            for arm, r in runs["arms"].items():
                lines.append(_arm_row([seed, arm], r, [_num(r["median_seconds_per_case"], 1)]))
        lines.append("")
        for seed, runs in res["seeds"].items():
            p = runs["dice_leaves_paired"]
            spread = f" ± {_pct(p['sd'])} s.d." if p["sd"] is not None else ""
            lines.append(
                f"- seed {seed}: diffusion minus deterministic {_pct(p['mean'])}{spread} "
                f"Dice points case by case, ahead on {p['wins']} of {p['n']} cases; Dice "
                f"{'within' if runs['dice_within_margin'] else '**not** within'} "
                f"{_pct(res['dice_margin'])} points, ECE "
                f"{'no worse' if runs['ece_no_worse'] else '**worse**'}, AUROC "
                f"{'at least' if runs['auroc_at_least'] else '**under**'} {res['min_auroc']}."
            )
        verdict = "met at every seed" if res["met"] else "**not met** at every seed"
        lines.append(f"- The bar is {verdict}.")
        return "\n".join(lines)
    if name == "diffusion":
        lines = [
            "| model | Dice leaves | HD95 leaves (mm) | ECE | entropy AUROC for errors |",
            "|---|---|---|---|---|",
        ]
        for arm, r in res["arms"].items():
            cells = [
                arm.replace("_", " "),
                _pct(r["dice_leaves"]),
                _num(r["hd95_leaves"], 2),
                _num(r["ece"]),
                _num(r["auroc_entropy_error"]),
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)
    lines = [
        "| sampler | denoiser evals / window | evals / case | s / case (median) | Dice leaves "
        f"| Dice leaves on {len(res['ddpm_cases'])} DDPM case(s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in res["settings"]:
        cells = [
            r["setting"],
            str(r["denoiser_evals_per_window"]),
            f"{r['denoiser_evals_per_case']:g}",
            _num(r["median_seconds_per_case"], 1),
            f"{_pct(r['dice_leaves'])} (n={r['num_cases']})",
            _pct(r["dice_leaves_ddpm_cases"]),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------- writing


def machine() -> dict:
    from importlib import metadata  # noqa: PLC0415

    cpu = ""
    if os.path.exists("/proc/cpuinfo"):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
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
    for flag, value in (("ddim_steps", s.ddim_steps), ("ensembles", s.ensembles)):
        if value:
            cmd.append(f"--{flag}={','.join(map(str, value))}")
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


def _atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def _readme(
    s: Settings, name: str, res: dict, mach: dict, jobs: list[EvalJob], plots: list[str], old: str
) -> str:
    runs = [j for j in jobs if name in j.experiments]
    arms = list(dict.fromkeys(j.arm for j in runs))
    cmds = [shown(c) for a in arms for c in train_commands(s, a)]
    cmds += [shown(eval_command(s, j)) for j in runs]
    parts = [
        f"# {FOLDERS[name].replace('_', ' ').capitalize()}",
        "",
        f"**Question.** {QUESTIONS[name]}",
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
        table(name, res),
        "",
        *[f"![{p}]({p})" for p in plots],
        "",
    ]
    text = "\n".join(parts)
    if READING in old:  # a hand-written reading survives a rerun
        text += "\n" + old[old.index(READING) :]
    return text


def write_all(s: Settings, jobs: list[EvalJob]) -> list[Path]:
    """Writes every chosen experiment's folder, the suite folder and the README block."""
    mach = machine()
    written, sections = [], []
    for name in s.experiments:
        res = BUILDERS[name](s)
        folder = s.results / f"{s.date}_{FOLDERS[name]}"
        folder.mkdir(parents=True, exist_ok=True)
        res = {
            "experiment": name,
            "question": QUESTIONS[name],
            "run": _repo_relative(s.out),
            "machine": mach,
            "evaluated": evaluated(s, [j for j in jobs if name in j.experiments]),
            **res,
        }
        _atomic(folder / "results.json", json.dumps(res, indent=1, allow_nan=False) + "\n")
        plots = figures.plot(name, res, folder)
        old = (folder / "README.md").read_text() if (folder / "README.md").exists() else ""
        _atomic(folder / "README.md", _readme(s, name, res, mach, jobs, plots, old))
        written.append(folder / "results.json")
        logging.info("suite: wrote %s", folder)
    # the tables of every experiment with results (also those of an earlier, partial run),
    # read back from their results.json
    for name in EXPERIMENTS:
        folder = s.results / f"{s.date}_{FOLDERS[name]}"
        if not (folder / "results.json").exists():
            continue
        res = json.loads((folder / "results.json").read_text())
        rel = os.path.relpath(folder, s.readme.parent) if s.readme else str(folder)
        title = FOLDERS[name].replace("_", " ").capitalize()
        link = f"[{rel}/results.json]({rel}/results.json)"
        sections.append(f"**{title}** ({link})\n\n{table(name, res)}")
    block = "\n\n".join(sections)
    suite = s.results / f"{s.date}_suite"
    suite.mkdir(parents=True, exist_ok=True)
    _atomic(suite / "table.md", block + "\n")
    commands = (s.out / "commands.log").read_text() if (s.out / "commands.log").exists() else ""
    _atomic(
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
    if s.readme is not None:
        text = s.readme.read_text()
        if BEGIN not in text or END not in text:
            raise ValueError(f"{s.readme}: no {BEGIN} ... {END} block to put the results in")
        head, rest = text.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        _atomic(s.readme, f"{head}{BEGIN}\n{block}\n{END}{tail}")
    return written
