"""Model workload benchmarks (msseg.benchmark, tools/benchmark.py): a training config's
workload, XLA's memory analysis per device, compile-only runs, strict JSON output."""

import json
import subprocess
import sys
from pathlib import Path

from msseg import benchmark

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.py")


def test_config_workload_takes_the_configs_network_patch_batch_and_loss():
    w = benchmark.config_workload(TINY)
    assert w.name == "tiny" and w.patch == (16, 16, 16) and w.batch == 2
    assert w.model.channels == (8, 16) and w.loss is not None and w.schedule == "linear"
    v = benchmark.config_workload(TINY, patch=(32, 32, 16), batch=1)
    assert v.patch == (32, 32, 16) and v.batch == 1 and v.model == w.model


def test_compile_only_reports_flops_and_memory_per_device_as_strict_json():
    w = benchmark.config_workload(TINY, patch=(16, 16, 32), batch=1)
    r = benchmark.measure(w, repeats=0, passes=("forward",))
    assert "train_step" not in r and r["input"] == [1, 16, 16, 32, w.model.in_channels]
    f = r["forward"]
    assert f["seconds"] == [] and f["median_s"] is None and f["gflop_per_s"] is None
    assert f["gflop"] > 0
    mem = f["memory_mb"]
    assert mem["total"] > 0 and mem["argument"] > 0
    # the input alone is 1x16x16x32 voxels x channels float32: the arguments hold at least it
    assert mem["argument"] * 2**20 >= 16 * 16 * 32 * w.model.in_channels * 4
    json.dumps(r, allow_nan=False)  # null, not NaN, where a figure is missing
    assert "tiny" in benchmark.format_table([r])


def test_cli_benchmarks_a_config_workload_into_a_json_file(tmp_path):
    out = tmp_path / "b.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "tools" / "benchmark.py"),
            f"--workload={TINY}",
            "--patch=16",
            "--patch_batch=1",
            "--passes=forward",
            "--repeats=1",
            f"--output={out}",
        ],
        check=True,
        capture_output=True,
        cwd=ROOT,
    )
    meta = json.loads(out.read_text())
    (run,) = meta["runs"]
    assert run["workload"] == "tiny" and run["forward"]["median_s"] > 0
    assert run["forward"]["memory_mb"]["total"] > 0 and "cpu" in meta


def test_cli_compares_skip_designs_side_by_side_and_refuses_unknown_ones(tmp_path):
    out = tmp_path / "skips.json"
    cmd = [
        sys.executable,
        str(ROOT / "tools" / "benchmark.py"),
        "--workload=w1",  # three depths (with two, UNet++'s only nested node is the decoder's)
        "--patch=16",
        "--patch_batch=1",
        "--passes=forward",
        "--repeats=1",
        f"--output={out}",
    ]
    subprocess.run([*cmd, "--skip=unet,unetpp"], check=True, capture_output=True, cwd=ROOT)
    runs = json.loads(out.read_text())["runs"]
    assert [(r["workload"], r["skip"]) for r in runs] == [
        ("w1+unet", "unet"),
        ("w1+unetpp", "unetpp"),
    ]
    # the nested nodes are extra convolutions: more parameters and FLOPs than the plain U-Net
    plain, nested = runs
    assert nested["params"] > plain["params"]
    assert nested["forward"]["gflop"] > plain["forward"]["gflop"]
    bad = subprocess.run([*cmd, "--skip=unet,densenet"], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode != 0 and "densenet" in bad.stderr
