"""tools/suite.py --quick: the whole experiment suite at CI size, its results and README tables."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tools"))  # the suite's package, tools/harness
FOLDERS = ("multiscale_vs_single", "lowres_entry", "diffusion_vs_deterministic", "cost_vs_quality")


def _suite(out: Path, results: Path, readme: Path, data: Path, *extra: str):
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "suite.py"),
        f"--out={out}",
        "--quick",
        f"--data={data}",
        f"--results={results}",
        "--date=2000-01-01",
        f"--readme={readme}",
        *extra,
    ]
    # one CPU device per process, as on a user's machine (conftest sets 8 for the tests)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=1800, cwd=out.parent, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _renderings(value) -> set[str]:
    """The ways a number of results.json may be printed in a table."""
    out = set()
    if isinstance(value, bool) or not isinstance(value, int | float):
        return out
    for v in (value, 100 * value):
        out |= {f"{v:.0f}", f"{v:.1f}", f"{v:.2f}", f"{v:.3f}"}
    return out


def _numbers(obj) -> set[str]:
    if isinstance(obj, dict):
        return set().union(*(_numbers(v) for v in obj.values())) if obj else set()
    if isinstance(obj, list):
        return set().union(*(_numbers(v) for v in obj)) if obj else set()
    return _renderings(obj)


def _quick_experiment(tmp_path: Path, cache, name: str) -> tuple[Path, Path, Path]:
    """Runs one opt-in experiment of the quick suite; returns (out, results, readme)."""
    data = Path(json.loads((Path(cache) / "manifest.json").read_text())["root"])
    out, results = tmp_path / "run", tmp_path / "experiments"
    readme = tmp_path / "README.md"
    readme.write_text("<!-- suite:begin -->\n<!-- suite:end -->\n")
    _suite(out, results, readme, data, f"--experiments={name}")
    return out, results, readme


def _table_numbers_from(readme: Path, res: dict, first: int, last: int | None = None) -> list:
    """The README table's rows, after checking that every number in their cells first..last
    is one of results.json's."""
    allowed = _numbers(res)
    section = readme.read_text().split("<!-- suite:begin -->")[1]
    table = [line for line in section.splitlines() if line.startswith("| ")][1:]
    for line in table:
        for cell in line.split("|")[first:last]:
            for num in re.findall(r"(?<![\w.-])\d+\.\d+|(?<=\| )\d+(?= \|)", cell):
                assert num in allowed, (line, num)
    return table


def test_paired_differences_use_only_the_cases_both_arms_scored():
    from harness.summaries import paired

    a = {"case_dice": {"c1": 0.80, "c2": 0.70, "c3": 0.90, "only_a": 0.1}}
    b = {"case_dice": {"c1": 0.75, "c2": 0.72, "c3": 0.84}}
    p = paired(a, b)
    assert p["n"] == 3 and p["wins"] == 2
    assert p["mean"] == pytest.approx((0.05 - 0.02 + 0.06) / 3)
    assert p["sd"] == pytest.approx(0.04358898943540674)  # sample s.d. of (.05, -.02, .06)
    assert (p["min"], p["max"]) == (pytest.approx(-0.02), pytest.approx(0.06))
    one = paired({"case_dice": {"c1": 0.8}}, b)
    assert one["n"] == 1 and one["sd"] is None


def test_published_commands_name_repo_paths_relative_to_the_repo():
    from harness.paths import ROOT as repo
    from harness.paths import shown

    cmd = [sys.executable, "tools/train.py", f"--workdir={repo / 'runs' / 'a'}", "--out=/else/x"]
    assert shown(cmd) == "python tools/train.py --workdir=runs/a --out=/else/x"


def test_a_training_seed_reaches_every_arm_and_the_published_command(tmp_path):
    from harness.plan import Settings, arms
    from harness.results import suite_command

    base = Settings(out=tmp_path, results=tmp_path, date="d")
    seeded = Settings(out=tmp_path, results=tmp_path, date="d", seed=1)
    assert not any("--config.seed" in f for flags in arms(base).values() for f in flags)
    for flags in arms(seeded).values():
        assert flags.count("--config.seed=1") == 1
    assert "--seed=1" in suite_command(seeded) and "--seed" not in suite_command(base)


@pytest.mark.slow
def test_quick_suite_writes_every_experiment_and_a_traceable_readme_table(tmp_path, tiny_mni_cache):
    data = Path(json.loads((Path(tiny_mni_cache) / "manifest.json").read_text())["root"])
    out, results = tmp_path / "run", tmp_path / "experiments"
    readme = tmp_path / "README.md"
    readme.write_text("# x\n\n## Results\n<!-- suite:begin -->\nold\n<!-- suite:end -->\n\nend\n")
    _suite(out, results, readme, data)

    text = readme.read_text()
    assert "old" not in text and text.endswith("<!-- suite:end -->\n\nend\n")
    block = text.split("<!-- suite:begin -->")[1].split("<!-- suite:end -->")[0]
    sections = block.strip().split("\n\n**")
    assert len(sections) == 4
    for folder, section in zip(FOLDERS, sections, strict=True):
        exp = results / f"2000-01-01_{folder}"
        res = json.loads((exp / "results.json").read_text())
        assert (exp / f"{res['experiment']}.png").stat().st_size > 1000
        assert f"{folder}/results.json" in section
        table = [line for line in section.splitlines() if line.startswith("| ")][1:]
        assert table
        allowed = _numbers(res)
        # every figure in the README table is a number of the results.json it links
        for line in table:
            for cell in line.split("|")[2:]:
                for num in re.findall(r"(?<![\w.-])\d+\.\d+|(?<=\| )\d+(?= \|)", cell):
                    assert num in allowed, (folder, line, num)
        # ... and every results.json figure names the evaluation report it came from
        for source in re.findall(r'"source": "([^"]+)"', (exp / "results.json").read_text()):
            summary = json.loads((out / source).read_text())
            assert summary["split"] == "test" and summary["num_cases"] == 1
        assert "**Question.**" in (exp / "README.md").read_text()
        # the machine line says when the evaluations (and their wall times) ran
        first, last = res["evaluated"]
        assert f"finished between {first} and {last}" in (exp / "README.md").read_text()

    diffusion = json.loads(
        (results / "2000-01-01_diffusion_vs_deterministic/results.json").read_text()
    )
    assert set(diffusion["arms"]) == {"deterministic", "diffusion_ensemble1", "diffusion_ensemble2"}
    for arm in diffusion["arms"].values():
        assert 0 <= arm["ece"] <= 1 and sum(arm["reliability"]["count"]) > 0
    ms = json.loads((results / "2000-01-01_multiscale_vs_single/results.json").read_text())
    assert ms["dice_leaves_paired"]["n"] == 1
    assert ms["dice_leaves_paired"]["mean"] == pytest.approx(ms["dice_leaves_difference"])
    assert set(diffusion["dice_leaves_paired"]) == {"diffusion_ensemble1", "diffusion_ensemble2"}
    lowres = json.loads((results / "2000-01-01_lowres_entry/results.json").read_text())
    runs = lowres["arms"]
    assert runs["mixed_entry"]["coarse_at_depth1"]["entry_depth"] == 1
    assert runs["full_res_only"]["coarse_upsampled"]["input_depth"] == 1
    assert runs["full_res_only"]["coarse_upsampled"]["entry_depth"] == 0
    cost = json.loads((results / "2000-01-01_cost_vs_quality/results.json").read_text())
    settings = {r["setting"]: r for r in cost["settings"]}
    assert settings["DDPM-20"]["denoiser_evals_per_window"] == 20  # quick: a 20-step schedule
    assert (
        settings["DDIM-5"]["denoiser_evals_per_case"]
        < settings["DDIM-10"]["denoiser_evals_per_case"]
    )
    # DPM-Solver++(2M): one denoiser call per step, like DDIM
    assert settings["DPM-Solver++(2M)-3"]["denoiser_evals_per_window"] == 3
    single = json.loads((out / "single" / "config.json").read_text())
    assert single["diffusion"]["depth_weights"] == [1.0, 0.0]

    # a rerun resumes: nothing is trained or evaluated again, a hand-written reading survives
    n_commands = len((out / "commands.log").read_text().splitlines())
    note = results / "2000-01-01_multiscale_vs_single" / "README.md"
    note.write_text(note.read_text() + "\n## Reading\nhand-written\n")
    _suite(out, results, readme, data, "--experiments=multiscale")
    assert len((out / "commands.log").read_text().splitlines()) == n_commands
    assert note.read_text().endswith("## Reading\nhand-written\n")


def test_the_recipe_experiment_trains_each_recipe_at_two_seeds_on_one_cache(tmp_path):
    from harness.plan import Settings, arms, eval_jobs
    from harness.registry import DEFAULT_EXPERIMENTS
    from harness.results import suite_command

    s = Settings(out=tmp_path, results=tmp_path, date="d", seed=3, experiments=("recipe",))
    a = arms(s)
    recipe = {k: v for k, v in a.items() if k.startswith("recipe_")}
    assert set(recipe) == {"recipe_diff_s3", "recipe_det_s3", "recipe_diff_s4", "recipe_det_s4"}
    for name, flags in recipe.items():
        seed = int(name[-1])
        assert flags.count(f"--config.seed={seed}") == 1
        assert f"--config.data.cache={tmp_path / 'cache'}" in flags
        assert ("--config.model.diffusion=False" in flags) == ("_det_" in name)
    # the deterministic arm differs from the diffusion arm only by being deterministic
    extra = set(a["recipe_det_s3"]) - set(a["recipe_diff_s3"])
    assert extra == {"--config.model.diffusion=False", "--config.train.val_mode=deterministic"}
    assert {j.arm for j in eval_jobs(s)} == set(recipe)
    assert "--experiments=recipe" in suite_command(s)
    default = Settings(out=tmp_path, results=tmp_path, date="d")
    assert default.experiments == DEFAULT_EXPERIMENTS and "recipe" not in DEFAULT_EXPERIMENTS
    assert not any(k.startswith("recipe_") for k in arms(default))


@pytest.mark.slow
def test_quick_recipe_experiment_writes_its_verdict_from_the_evaluations(tmp_path, tiny_mni_cache):
    out, results, readme = _quick_experiment(tmp_path, tiny_mni_cache, "recipe")
    exp = results / "2000-01-01_recipe_vs_deterministic"
    res = json.loads((exp / "results.json").read_text())
    assert set(res["seeds"]) == {"0", "1"}
    for seed, runs in res["seeds"].items():
        diff, det = runs["arms"]["diffusion"], runs["arms"]["deterministic"]
        assert diff["sampler"]["kind"] == "ddim" and det["denoiser_evals_per_window"] == 1
        for arm, r in runs["arms"].items():
            summary = json.loads((out / r["source"]).read_text())
            short = {"diffusion": "diff", "deterministic": "det"}[arm]
            assert summary["model"].endswith(f"recipe_{short}_s{seed}/model")
        assert runs["dice_within_margin"] == (
            diff["dice_leaves"] >= det["dice_leaves"] - res["dice_margin"]
        )
        assert runs["ece_no_worse"] == (diff["ece"] <= det["ece"])
    met = all(r["dice_within_margin"] and r["ece_no_worse"] and r["auroc_at_least"]
              for r in res["seeds"].values())  # fmt: skip
    assert res["met"] == met
    assert (exp / "recipe.png").stat().st_size > 1000
    # one shared cache, built once
    assert (out / "cache" / "manifest.json").exists()
    assert not (out / "recipe_diff_s0" / "cache").exists()
    assert len(_table_numbers_from(readme, res, first=3)) == 4  # 2 seeds x 2 arms


def test_the_screen_switches_each_recipe_part_at_a_reduced_budget(tmp_path):
    from harness.design import SCREEN
    from harness.plan import Settings, arm_steps, arms, eval_jobs

    s = Settings(out=tmp_path, results=tmp_path, date="d", steps=1000, experiments=("screen",))
    a = arms(s)
    assert {k for k in a if k.startswith("screen_")} == {f"screen_{n}" for n in SCREEN}
    assert s.screen_steps == 400 and arm_steps(s, "screen_x0") == 400
    for name in SCREEN:
        flags = a[f"screen_{name}"]
        assert [f for f in flags if f.startswith("--config.train.steps=")] == [
            "--config.train.steps=400"
        ]
    assert a["screen_recipe"] == a["screen_det"][: len(a["screen_recipe"])]  # the config alone
    assert "--config.diffusion.target=x0" in a["screen_x0"]
    assert {j.arm for j in eval_jobs(s)} == {f"screen_{n}" for n in SCREEN}


def test_the_skip_study_shares_the_plain_arm_with_the_recipe_and_times_every_design(tmp_path):
    from harness.design import SKIP_DESIGNS
    from harness.plan import Settings, arms, benchmark_command, benchmarks, eval_jobs

    s = Settings(out=tmp_path, results=tmp_path, date="d", seed=2, experiments=("skips",))
    a = arms(s)
    assert list(a) == ["recipe_diff_s2", "skips_unet3plus", "skips_unetpp"]
    for skip in SKIP_DESIGNS:  # the recipe arm and one more flag: the skip design
        assert a[f"skips_{skip}"] == [*a["recipe_diff_s2"], f"--config.model.skip={skip}"]
    # with the recipe experiment, one training serves both
    both = dataclasses.replace(s, experiments=("recipe", "skips"))
    assert arms(both)["recipe_diff_s2"] == a["recipe_diff_s2"]
    assert [j.arm for j in eval_jobs(s)] == list(a)
    assert benchmarks(s) == ["skips"] and benchmarks(both) == ["skips"]
    cmd = benchmark_command(s, "skips")
    assert "--skip=unet,unet3plus,unetpp" in cmd and "--workload=configs/quickstart.py" in cmd
    assert cmd[-1] == f"--output={tmp_path / 'bench' / 'skips.json'}"


@pytest.mark.slow
def test_quick_skip_study_reads_its_costs_and_accuracy_from_the_run(tmp_path, tiny_mni_cache):
    out, results, readme = _quick_experiment(tmp_path, tiny_mni_cache, "skips")
    res = json.loads((results / "2000-01-01_skip_study" / "results.json").read_text())
    assert list(res["arms"]) == ["unet", "unet3plus", "unetpp"]
    bench = json.loads((out / "bench" / "skips.json").read_text())
    by_skip = {r["skip"]: r for r in bench["runs"]}
    for design, r in res["arms"].items():
        arm = "recipe_diff_s0" if design == "unet" else f"skips_{design}"
        summary = json.loads((out / r["source"]).read_text())
        assert summary["model"].endswith(f"{arm}/model")
        config = json.loads((out / arm / "config.json").read_text())
        assert config["model"]["skip"] == design
        c = res["costs"][design]
        assert c["params"] == by_skip[design]["params"]
        assert c["s_per_train_step"] == by_skip[design]["train_step"]["median_s"] > 0
    assert set(res["dice_leaves_paired_vs_unet"]) == {"unet3plus", "unetpp"}
    folder = results / "2000-01-01_skip_study"
    assert "tools/benchmark.py" in (folder / "README.md").read_text()
    assert (folder / "skips.png").stat().st_size > 1000
    assert len(_table_numbers_from(readme, res, first=2, last=-2)) == 3


@pytest.mark.slow
def test_quick_screen_writes_each_arm_against_the_deterministic_one(tmp_path, tiny_mni_cache):
    from harness.design import SCREEN

    out, results, readme = _quick_experiment(tmp_path, tiny_mni_cache, "screen")
    res = json.loads((results / "2000-01-01_recipe_changes_screen" / "results.json").read_text())
    assert res["steps"] == 1 and set(res["arms"]) == set(SCREEN)
    assert set(res["dice_leaves_paired_vs_det"]) == set(SCREEN) - {"det"}
    for name, r in res["arms"].items():
        config = json.loads((out / f"screen_{name}" / "config.json").read_text())
        assert res["training"][name]["steps"] == 1 and config["train"]["steps"] == 1
        if name != "det":  # the config's own DDIM steps for the recipe, else DDIM-10
            own = config["sampler"]["steps"] if name.startswith("recipe") else 10
            assert r["sampler"]["steps"] == own == config["sampler"]["steps"]
    x0 = json.loads((out / "screen_x0" / "config.json").read_text())["diffusion"]
    assert (x0["target"], x0["recycle_prob"], x0["train_timesteps"]) == ("x0", 0.0, "all")
    b03 = json.loads((out / "screen_recipe_b03" / "config.json").read_text())["diffusion"]
    assert b03["signal_scale"] == 0.3 and b03["recycle_prob"] == 1.0
    assert len(_table_numbers_from(readme, res, first=2, last=-2)) == len(SCREEN)
