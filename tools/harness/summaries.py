"""Each experiment's results.json figures, read from the evaluation reports (eval/<job>/
summary.json) and training records of a suite run; every figure names the report it came from.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from harness import design
from harness.design import SCREEN, SKIP_DESIGNS
from harness.paths import repo_relative

if TYPE_CHECKING:  # annotations only: the plan imports this module (through the registry)
    from harness.plan import Settings


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


# ------------------------------------------------------------------------ the experiments


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
    elif smp["kind"] == "dpmpp2m":
        name = f"DPM-Solver++(2M)-{smp['steps']}"
    else:
        name = f"DDIM-{smp['steps']}"
    return name + (f" x{smp['ensemble']}" if smp["ensemble"] > 1 else "")


def cost(s: Settings) -> dict:
    rows = {n: extract(s, n) for n in design.cost(s)}
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


def _bench_costs(s: Settings, name: str) -> dict:
    """Per skip design: parameters, FLOPs and median seconds of one denoiser evaluation and of
    one train step, and the train step's compiled memory, from bench/<name>.json."""
    bench = json.loads((s.out / "bench" / f"{name}.json").read_text())
    out = {}
    for r in bench["runs"]:
        fwd, step = r["forward"], r["train_step"]
        out[r["skip"]] = {
            "params": r["params"],
            "gflop_per_denoiser_eval": fwd["gflop"],
            "s_per_denoiser_eval": fwd["median_s"],
            "gflop_per_train_step": step["gflop"],
            "s_per_train_step": step["median_s"],
            "train_step_memory_mb": (step["memory_mb"] or {}).get("total"),
            "input": r["input"],
            "source": f"bench/{name}.json",
        }
    return {"cpu": bench.get("cpu", ""), "date": bench.get("date", ""), "designs": out}


def skips(s: Settings) -> dict:
    designs = ("unet", *SKIP_DESIGNS)
    jobs = dict(zip(designs, design.skips(s), strict=True))
    arms = {d: extract(s, job) for d, job in jobs.items()}
    bench = _bench_costs(s, "skips")
    costs = bench["designs"]
    plain = costs["unet"]

    def ratio(d: str, key: str) -> float | None:
        a, b = costs[d][key], plain[key]
        return a / b if a is not None and b else None

    return {
        "arms": arms,
        "costs": costs,
        "benchmark_cpu": bench["cpu"],
        "benchmark_date": bench["date"],
        # each design over the plain U-Net: parameters, s per denoiser evaluation and train step
        "cost_ratio_vs_unet": {
            d: {k: ratio(d, k) for k in ("params", "s_per_denoiser_eval", "s_per_train_step")}
            for d in SKIP_DESIGNS
        },
        # each design minus the plain U-Net, case by case
        "dice_leaves_paired_vs_unet": {d: paired(arms[d], arms["unet"]) for d in SKIP_DESIGNS},
        "training": {d: training(s, job) for d, job in jobs.items()},
    }


def _peer(s: Settings, peer: str, snapshot: str, taken: dict) -> dict | None:
    """A peer's snapshot: its evaluation's figures, training steps and seconds, and what made
    its probabilities (producer: model, versions); None if it was not taken or scored."""
    path = s.out / "eval" / f"peer_{peer}_{snapshot}" / "summary.json"
    if snapshot not in taken or not path.exists():
        return None
    r = extract(s, f"peer_{peer}_{snapshot}")
    r["training"] = {"steps": taken[snapshot]["step"], "train_s": taken[snapshot]["train_s"]}
    r["producer"] = _load(s, f"peer_{peer}_{snapshot}").get("producer", {})
    return r


def sota(s: Settings) -> dict:
    from harness import plan  # the plan imports this module (through the registry)

    budgets, curves = {}, {}
    for b, spec in design.sota_budgets(s).items():
        clock = plan.train_seconds(s, spec["diff"])
        msseg = {}
        for kind in ("diff", "det"):
            r = extract(s, spec[kind])
            r["training"] = {"steps": spec["steps"], "train_s": plan.train_seconds(s, spec[kind])}
            msseg["msseg_diffusion" if kind == "diff" else "msseg_deterministic"] = r
        equal = {"time": {}, "steps": {}}
        for peer in design.PEERS:
            taken = plan.peer_snapshots(s, peer)
            for kind in equal:
                equal[kind][peer] = _peer(s, peer, f"{kind}_{b}", taken)
        default = msseg["msseg_diffusion"]
        budgets[b] = {
            "steps": spec["steps"],
            "clock_s": clock,  # msseg's diffusion model's training time: the peers' budget
            "msseg": msseg,
            "equal_time": equal["time"],
            "equal_steps": equal["steps"],
            # msseg's default (diffusion) model minus each peer, case by case
            "paired_vs_equal_time": {
                p: paired(default, r) for p, r in equal["time"].items() if r is not None
            },
            "paired_vs_equal_steps": {
                p: paired(default, r) for p, r in equal["steps"].items() if r is not None
            },
        }
        for name, r in msseg.items():
            curves.setdefault(name, []).append(
                {"train_s": r["training"]["train_s"], "dice_leaves": r["dice_leaves"], "budget": b}
            )
    for peer in design.PEERS:
        taken = plan.peer_snapshots(s, peer)
        points = [(n, _peer(s, peer, n, taken)) for n in taken]
        curves[peer] = sorted(
            (
                {
                    "train_s": r["training"]["train_s"],
                    "dice_leaves": r["dice_leaves"],
                    "snapshot": n,
                }
                for n, r in points
                if r is not None
            ),
            key=lambda p: p["train_s"],
        )
    return {"budgets": budgets, "curves": curves, "peer_cap": s.peer_cap, "peers": design.PEERS}
