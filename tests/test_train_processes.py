"""The train binary across processes: a real 2-process jax.distributed run on localhost, and a
run killed during an asynchronous checkpoint save that resumes from the last complete one."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import dataset_of, run_processes

ROOT = Path(__file__).parents[1]
pytestmark = pytest.mark.slow


def _cmd(workdir, cache, *extra):
    return [
        sys.executable,
        str(ROOT / "tools" / "train.py"),
        "--config=configs/tiny.py",
        f"--workdir={workdir}",
        f"--config.data.cache={cache}",
        f"--config.data.spec={dataset_of(cache)}",
        "--config.train.val_depths=(0,)",
        *extra,
    ]


def _env(devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def test_two_processes_train_together_and_checkpoint_their_own_data_position(
    tiny_mni_cache, tmp_path
):
    outs = run_processes(
        lambda flags: _cmd(
            tmp_path,
            tiny_mni_cache,
            "--config.train.mesh_data=4",
            "--config.train.steps=3",
            *flags,
        ),
        cwd=ROOT,
        env=_env(2),
        timeout=600,
    )
    checks = [re.search(r"'ema_params_l1': ([0-9.e+-]+)", out).group(1) for out, _ in outs]
    assert checks[0] == checks[1]  # both processes hold the same parameters
    assert "process 0 done" in outs[0][0] and "process 1 done" in outs[1][0]
    files = sorted(p.name for p in (tmp_path / "checkpoints" / "3" / "data_iter").iterdir())
    assert len([f for f in files if "process" in f]) == 2, files  # one data position each
    assert (tmp_path / "metrics.jsonl").is_file()


def test_a_kill_during_an_async_save_leaves_a_restorable_checkpoint(tiny_mni_cache, tmp_path):
    steps = ["--config.train.steps=60", "--config.train.checkpoint_every=1"]
    proc = subprocess.Popen(
        _cmd(tmp_path, tiny_mni_cache, *steps),
        cwd=ROOT,
        env=_env(2),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    ckpts = tmp_path / "checkpoints"
    deadline = time.time() + 300
    killed_during_save = False
    while time.time() < deadline and proc.poll() is None:
        names = [p.name for p in ckpts.iterdir()] if ckpts.is_dir() else []
        done = [n for n in names if n.isdigit()]
        if done and any("tmp" in n for n in names):
            proc.send_signal(signal.SIGKILL)
            killed_during_save = True
            break
        time.sleep(0.002)
    proc.wait(timeout=60)
    assert killed_during_save, "the run ended before a save could be interrupted"
    r = subprocess.run(
        _cmd(tmp_path, tiny_mni_cache, *steps),
        cwd=ROOT,
        env=_env(2),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    resumed = re.search(r"resumed from .* at step (\d+)", r.stderr)
    assert resumed and int(resumed.group(1)) >= 1
    assert "process 0 done: {'step': 60" in r.stdout
