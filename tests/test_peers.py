"""The sota experiment: scoring another implementation's probabilities exactly as msseg's own
(evaluate.py --probs), the peers' budgets and commands, and (slow, when the peer environment
of peers/setup.sh exists) the quick sota experiment with the real peers."""

import dataclasses
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.append(str(ROOT / "tools"))  # the suite's package, tools/harness
PEER_PYTHON = ROOT / ".peers-venv" / "bin" / "python"


def _write_probs(folder: Path, cache: Path, *, shape_of=None, protocol=None, noise=0.0) -> list:
    """The cache's test labels as probabilities (one-hot, optionally mixed with uniform noise),
    as peers/peer.py predict writes them."""
    manifest = json.loads((cache / "manifest.json").read_text())
    k = len(manifest["protocol"]["leaves"])
    folder.mkdir(parents=True)
    cases = sorted(n for n, c in manifest["cases"].items() if c["split"] == "test")
    for name in cases:
        label = np.load(cache / manifest["cases"][name]["files"]["label"])
        probs = np.eye(k, dtype=np.float32)[label]
        probs = (1 - noise) * probs + noise / k
        if shape_of is not None:
            probs = probs[tuple(slice(0, n) for n in shape_of)]
        np.savez(folder / f"{name}.npz", probs=probs.astype(np.float16), seconds=1.5, windows=4)
    info = {
        "preprocess": manifest["config"],
        "protocol": protocol or manifest["protocol"]["name"],
        "network_evals_per_window": 5,
        "sampler": {"kind": "ddim", "steps": 5},
        "overlap": 0.25,
        "producer": {"model": "reference labels"},
    }
    (folder / "probabilities.json").write_text(json.dumps(info))
    return cases


def test_probabilities_are_scored_on_each_image_grid_like_msseg_segmentations(
    tmp_path, tiny_mni_cache
):
    from msseg.inference import probabilities

    cache = Path(tiny_mni_cache)
    data = json.loads((cache / "manifest.json").read_text())["root"]
    cases = _write_probs(tmp_path / "probs", cache, noise=0.3)
    result = probabilities.evaluate_probabilities(tmp_path / "probs", data, "test", tmp_path / "r")
    s = result.summary
    assert s["num_cases"] == len(cases) and set(s["case_dice"]) == set(cases)
    # the reference labels, placed back on the image grid (the cache is on the source grid)
    assert all(d == pytest.approx(1.0) for d in s["case_dice"].values())
    assert s["route"] == "probabilities" and s["producer"] == {"model": "reference labels"}
    seg = s["segmentation"]
    assert seg["denoiser_evals_per_window"] == 5 and seg["denoiser_evals_per_case"] == 20
    # the inference's seconds plus the placement on the image grid
    assert seg["median_seconds_per_case"] >= 1.5
    # every decision is right: a confidence of 0.7 + 0.3 / K is overconfident by nothing
    k = 7
    calib = s["calibration"]
    assert calib["error_rate"] == 0.0
    assert calib["ece"] == pytest.approx(1 - (0.7 + 0.3 / k), abs=0.02)
    # the records are reused by a rerun with the same maps
    again = probabilities.evaluate_probabilities(tmp_path / "probs", data, "test", tmp_path / "r")
    assert again.summary["case_dice"] == s["case_dice"]


def test_probabilities_of_the_wrong_grid_or_protocol_name_the_file(tmp_path, tiny_mni_cache):
    from msseg.errors import InputError
    from msseg.inference import probabilities

    cache = Path(tiny_mni_cache)
    data = json.loads((cache / "manifest.json").read_text())["root"]
    cases = _write_probs(tmp_path / "cut", cache, shape_of=(5, 5, 5))
    with pytest.raises(InputError, match=rf"{cases[0]}\.npz.*shape \(5, 5, 5, 7\)"):
        probabilities.evaluate_probabilities(tmp_path / "cut", data, "test", tmp_path / "r1")
    _write_probs(tmp_path / "other", cache, protocol="aseg")
    with pytest.raises(InputError, match=r"probabilities\.json.*protocol 'aseg'"):
        probabilities.evaluate_probabilities(tmp_path / "other", data, "test", tmp_path / "r2")


def _metrics(workdir: Path, rows: list[tuple[int, float]]) -> None:
    """metrics.jsonl of (step, wall_s) training rows, then the final validation's row."""
    workdir.mkdir(parents=True)
    lines = [{"step": step, "wall_s": wall, "loss": 1.0} for step, wall in rows]
    lines.append({"step": rows[-1][0], "wall_s": rows[-1][1] + 40.0, "val_dice": 0.8})
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))


def test_the_peers_train_to_msseg_clock_and_steps_budget_after_budget(tmp_path):
    from harness import plan
    from harness.design import CURVE_FRACTIONS, PEERS

    s = plan.Settings(
        out=tmp_path, results=tmp_path, date="d", experiments=("sota",), peer_python=sys.executable
    )
    # msseg's arms at both budgets; the suite budget's are the recipe arms (one training)
    assert list(plan.arms(s)) == [
        "recipe_diff_s0",
        "recipe_det_s0",
        "sota_diff_main",
        "sota_det_main",
    ]
    assert plan.arms(s)["sota_diff_main"][1] == "--config.train.steps=1400"
    main_only = dataclasses.replace(s, budgets=("main",))
    assert list(plan.arms(main_only)) == ["sota_diff_main", "sota_det_main"]
    with pytest.raises(ValueError, match="budgets"):
        dataclasses.replace(s, budgets=("suite", "main"))
    # the clock: the loop's wall time at the last training row (not the validation's),
    # summed over a resumed run's clocks. The first run was stopped at step 300, after its
    # checkpoint at 250: its steps from 260 on are done again by the second run and counted
    # once. The restart shows where the step goes back, even if the clock does not.
    first = [(20, 10.0), (240, 92.0), (260, 100.0), (300, 120.0)]
    _metrics(tmp_path / "sota_diff_main", [*first, (260, 130.0), (1400, 448.0)])
    _metrics(tmp_path / "recipe_diff_s0", [(20, 12.0), (3000, 1000.0)])
    assert plan.train_seconds(s, "sota_diff_main") == 540.0
    assert plan.train_seconds(s, "recipe_diff_s0") == 1000.0
    times, steps, cap = plan.peer_budgets(s, "main")
    curve = {f"curve_{f:g}": round(f * 540.0, 2) for f in CURVE_FRACTIONS}
    assert times == {"time_main": 540.0, **curve} and steps == {"steps_main": 1400}
    assert cap == 1.25 * 540.0
    times, steps, cap = plan.peer_budgets(s, "suite")
    assert times == {"time_main": 540.0, "time_suite": 1000.0, **curve}
    assert steps == {"steps_main": 1400, "steps_suite": 3000} and cap == 1250.0
    cmd = plan.peer_train_command(s, PEERS[0], "suite")
    assert cmd[:4] == [sys.executable, "peers/peer.py", "train", f"--model={PEERS[0]}"]
    assert "--patch" in cmd and cmd[cmd.index("--patch") + 1 : cmd.index("--patch") + 4] == [
        "48",
        "48",
        "48",
    ]
    assert "--max_s=1250.0" in cmd and "--steps=steps_main:1400,steps_suite:3000" in cmd
    assert f"--cache={tmp_path / 'cache'}" in cmd
    predict = plan.peer_predict_command(s, PEERS[1], "time_main")
    assert "--sampler_steps=5" in predict  # msseg's DDIM steps (configs/quickstart.py)
    score = plan.peer_eval_command(s, PEERS[1], "time_main")
    assert score[1] == "tools/evaluate.py"
    assert f"--probs={tmp_path / f'peer_{PEERS[1]}' / 'pred' / 'time_main'}" in score


def test_the_sota_experiment_refuses_to_start_without_the_peer_environment(tmp_path):
    from harness import plan

    s = plan.Settings(
        out=tmp_path / "run",
        results=tmp_path,
        date="d",
        experiments=("sota",),
        peer_python=str(tmp_path / "none" / "python"),
    )
    with pytest.raises(RuntimeError, match="peers/setup.sh"):
        plan.run_suite(s)
    assert not (tmp_path / "run" / "logs").exists()  # nothing trained


@pytest.mark.slow
@pytest.mark.skipif(not PEER_PYTHON.exists(), reason="no peer environment (bash peers/setup.sh)")
def test_quick_sota_experiment_trains_and_scores_every_peer(tmp_path, tiny_mni_cache):
    from test_suite import _numbers, _suite

    data = Path(json.loads((Path(tiny_mni_cache) / "manifest.json").read_text())["root"])
    out, results = tmp_path / "run", tmp_path / "experiments"
    readme = tmp_path / "README.md"
    shared = "<!-- suite:begin -->\nother experiments\n<!-- suite:end -->\n"
    readme.write_text("<!-- suite:sota:begin -->\n<!-- suite:sota:end -->\n" + shared)
    _suite(out, results, readme, data, "--experiments=sota", "--budgets=main")
    res = json.loads((results / "2000-01-01_sota" / "results.json").read_text())
    main = res["budgets"]["main"]
    assert list(res["budgets"]) == ["main"] and main["steps"] == 2
    assert main["clock_s"] > 0
    for peer in ("dynunet", "monai_diffusion", "monai_unet"):
        snaps = json.loads((out / f"peer_{peer}" / "snapshots.json").read_text())
        r = main["equal_time"][peer]
        assert r is not None and r["training"]["train_s"] >= main["clock_s"]
        assert r["training"] == {
            "steps": snaps["time_main"]["step"],
            "train_s": snaps["time_main"]["train_s"],
        }
        assert main["equal_steps"][peer]["training"]["steps"] == 2
        assert r["producer"]["versions"]["monai"]
        assert main["paired_vs_equal_time"][peer]["n"] == 1
        assert len(res["curves"][peer]) == len(snaps)
    assert main["equal_time"]["monai_diffusion"]["denoiser_evals_per_window"] == 2
    folder = results / "2000-01-01_sota"
    text = (folder / "README.md").read_text()
    assert "peers/peer.py train --model=dynunet" in text and "--probs=" in text
    assert (folder / "sota.png").stat().st_size > 1000
    # the table goes to the sota block at the top; the shared block is left as it was
    text = readme.read_text()
    assert text.endswith(shared)
    block = text.split("<!-- suite:sota:begin -->")[1].split("<!-- suite:sota:end -->")[0]
    rows = [line for line in block.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == 2 + 2 * 3
    allowed = _numbers(res)
    for line in rows:  # every figure from steps on is one of results.json's
        for cell in line.split("|")[4:-1]:
            for num in re.findall(r"(?<![\w.-])\d+\.\d+|(?<=\| )\d+(?= \|)", cell):
                assert num in allowed, (line, num)
