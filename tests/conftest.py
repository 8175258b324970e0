"""Shared test setup: 8 fake CPU devices, parsed absl flags, and a tiny preprocessed cache."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402
from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()  # grain workers read absl flags


def dataset_of(cache) -> str:
    """The raw dataset folder a preprocessed cache was built from (its data.spec): training
    on the cache with data.spec = this keeps it current instead of rebuilding it from the
    full embedded set."""
    import json
    from pathlib import Path

    return json.loads((Path(cache) / "manifest.json").read_text())["root"]


def tiny_export_config(cache, steps: int = 3):
    """configs/tiny.py on a tiny cache, `steps` steps, entering at depths 0 and 1, validated at
    depth 0, the batch over 2 of the fake devices: a run to export and sample from."""
    import runpy
    from pathlib import Path

    c = runpy.run_path(str(Path(__file__).parents[1] / "configs" / "tiny.py"))["get_config"]()
    c.data.cache = str(cache)
    c.data.spec = dataset_of(cache)
    c.train.steps = steps
    c.train.checkpoint_every = steps
    c.train.entry_depths = (0, 1)
    c.train.val_depths = (0,)
    c.train.mesh_data = 2
    return c


@pytest.fixture(scope="session")
def tiny_mni_cache(tmp_path_factory):
    """A small embedded set (2 train / 1 val / 1 test at 4 mm) preprocessed at 4 mm."""
    from msseg.data import datasets, mni152, preprocess
    from msseg.data.prepare import PreprocessConfig

    root = tmp_path_factory.mktemp("mni")
    cfg = mni152.SynthConfig(counts=(3, 1, 1), spacing=4.0)
    folder = mni152.build(cfg, cache=root / "cache", workers=2)
    dataset = datasets.resolve(folder)
    out = root / "prep"
    preprocess.preprocess_dataset(dataset, out, PreprocessConfig(spacing=(4.0, 4.0, 4.0)))
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory, tiny_mni_cache):
    """(workdir, model dir, raw dataset folder) of a tiny model trained 3 steps and exported.
    Tests copy the model directory before changing anything in it."""
    import json
    from pathlib import Path

    from msseg.export import exporter
    from msseg.train.loop import train

    root = tmp_path_factory.mktemp("export")
    workdir = root / "run"
    train(tiny_export_config(tiny_mni_cache), workdir)
    model_dir = exporter.export_model(workdir, root / "model")
    manifest = json.loads((Path(tiny_mni_cache) / "manifest.json").read_text())
    return workdir, model_dir, Path(manifest["root"])


def run_processes(make_cmd, n: int = 2, *, cwd, env, timeout: int = 900) -> list[tuple[str, str]]:
    """Runs `make_cmd(coordinator_flags)` as processes 0..n-1 of one jax.distributed run on
    localhost (a free port); asserts each exits 0; returns each one's (stdout, stderr)."""
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = [
        subprocess.Popen(
            make_cmd(
                [
                    f"--coordinator_address=localhost:{port}",
                    f"--num_processes={n}",
                    f"--process_id={i}",
                ]
            ),
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(n)
    ]
    outs = [p.communicate(timeout=timeout) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err[-3000:]
    return outs
