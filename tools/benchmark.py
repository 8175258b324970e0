"""Benchmarks: model workloads (W1 or a training config: FLOPs, memory per device, s per
denoiser evaluation and train step, per conv_impl and dtype), or the sampling throughput of a
model (--model or --config).

  python tools/benchmark.py [--workload=w1] [--conv_impl=onednn,xla] [--dtype=float32,mixed]
  python tools/benchmark.py --workload=configs/aseg_1mm.py [--patch=256,256,256 --patch_batch=1]
      [--passes=forward] [--repeats=0]   # repeats=0: compile and analyse only
  python tools/benchmark.py --workload=configs/quickstart.py --skip=unet,unet3plus,unetpp
  python tools/benchmark.py --model=MODEL|--config=configs/X.py --output=FILE.json
      [--samplers=ddim,ddpm,multiscale] [--steps=5,10] [--ensembles=1,4] [--sizes=48,96]
      [--devices=1,8] [--space=1,4] [--window=whole] [--compile_only]
      [--compare=exported|local|xla|onednn|slices2d]

Sampling throughput: compile time, s per denoiser evaluation, volumes/min and voxels/s, peak
memory and the compiled chain's memory per device per sampler x steps x ensemble x volume
size x devices x space (--compile_only: the memory alone); --compare reruns the grid with a
baseline (the other route, or the local route with that convolution) in the same process
and prints speed-ups.
"""

import dataclasses
import itertools
import json
import os
import platform
import sys
import time

from absl import app, flags

from msseg import benchmark
from msseg.diffusion.sampler_config import STEP_SAMPLERS
from msseg.models.unet import SKIPS

FLAGS = flags.FLAGS
flags.DEFINE_list(
    "workload",
    ["w1"],
    f"Workloads to run: {', '.join(benchmark.WORKLOADS)}, or a training config's path (.py): "
    "its network, loss, training patch and batch.",
)
flags.DEFINE_list("patch", None, "Workload input size (voxels per axis), e.g. a whole volume.")
flags.DEFINE_integer("patch_batch", None, "Workload batch (default: the config's, or 1).")
flags.DEFINE_list("passes", ["forward", "train_step"], "Workload passes: forward, train_step.")
flags.DEFINE_list(
    "skip",
    None,
    "Skip designs to compare on each workload (model.skip: unet, unet3plus, unetpp); default: "
    "the workload's own.",
)
flags.DEFINE_list(
    "dtype",
    ["float32"],
    "Compute dtypes to compare: float32, bfloat16 (the whole model), mixed (bf16 convolutions).",
)
flags.DEFINE_list(
    "conv_impl", ["auto"], "Convolution implementations to compare (auto, xla, slices2d, onednn)."
)
flags.DEFINE_integer(
    "repeats", 3, "Timed runs per pass, after one warm-up; 0: compile and analyse only."
)
flags.DEFINE_string("output", None, "Optional JSON file for the figures.")
flags.DEFINE_string("model", None, "Sampling throughput of this model directory.")
flags.DEFINE_string("config", None, "Sampling throughput of this training config (random params).")
flags.DEFINE_string("route", "auto", "Model route: auto, exported, local.")
flags.DEFINE_list("samplers", ["ddim"], "Samplers: ddim, dpmpp2m, ddpm, multiscale, anchored.")
flags.DEFINE_list("steps", ["10"], "DDIM / DPM-Solver++ steps to try.")
flags.DEFINE_list("ensembles", ["1"], "Ensemble sizes to try.")
flags.DEFINE_list("sizes", ["64"], "Cubic volume sizes (voxels per side, at the model's spacing).")
flags.DEFINE_integer("batch", 1, "Windows per device per compiled call.")
flags.DEFINE_list(
    "devices",
    ["1"],
    "Sampling: local devices the windows are sharded over (the data axis), one row each.",
)
flags.DEFINE_list(
    "space",
    ["1"],
    "Sampling: devices each window is split over along its first axis (local route, XLA "
    "convolutions), one row each.",
)
flags.DEFINE_string(
    "window", None, "Sampling: window X,Y,Z voxels or 'whole' (default: the model's patch)."
)
flags.DEFINE_bool(
    "compile_only",
    False,
    "Sampling: compile each setting and report its chain's memory per device, without running.",
)
flags.DEFINE_string(
    "compare",
    None,
    "Baseline: exported, local, or a conv_impl (xla, onednn, slices2d) for the local route.",
)


def _load(route: str, conv_impl: str = "auto"):
    from msseg.inference import model as model_lib

    if any(int(s) > 1 for s in FLAGS.space):  # GSPMD splits XLA's convolution along space
        route = "local" if route == "auto" else route
        conv_impl = "xla" if conv_impl == "auto" else conv_impl

    if FLAGS.model:
        return model_lib.load_model(FLAGS.model, route=route, conv_impl=conv_impl)
    import runpy

    from msseg.train import setup as setup_lib

    config = runpy.run_path(FLAGS.config)["get_config"]().to_dict()
    return setup_lib.random_model(config, conv_impl=conv_impl)


def _grid(model) -> list[dict]:
    from msseg.inference import cli, throughput

    rows = []
    for sampler in FLAGS.samplers:
        steps = [int(s) for s in FLAGS.steps] if sampler in STEP_SAMPLERS else [0]
        for n in steps:
            for ens in (int(e) for e in FLAGS.ensembles):
                for size, devices, space in itertools.product(
                    (int(s) for s in FLAGS.sizes),
                    (int(d) for d in FLAGS.devices),
                    (int(s) for s in FLAGS.space),
                ):
                    row = throughput.measure(
                        model,
                        sampler=sampler,
                        steps=n or 1,
                        ensemble=ens,
                        size=size,
                        repeats=FLAGS.repeats,
                        batch=FLAGS.batch,
                        devices=devices,
                        space=space,
                        window=cli.window(FLAGS),
                        run=not FLAGS.compile_only,
                    )
                    print(json.dumps(row), flush=True)
                    rows.append(row)
    return rows


def sampling_main() -> None:
    from msseg.inference import throughput

    rows = _grid(_load(FLAGS.route))
    base = None
    if FLAGS.compare:
        if FLAGS.compare in ("exported", "local"):
            base = _grid(_load(FLAGS.compare))
        else:
            base = _grid(_load("local", FLAGS.compare))
    print(throughput.format_table(rows, base))
    if FLAGS.output:
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.machine(),
            "model": FLAGS.model,
            "config": FLAGS.config,
            "runs": rows,
            "baseline": base,
            "compare": FLAGS.compare,
        }
        _write(meta)


def _write(meta: dict) -> None:
    """--output, written whole or not at all (a suite skips a benchmark whose file exists)."""
    from msseg import files

    files.write_text(FLAGS.output, json.dumps(meta, indent=1) + "\n")


def _workloads(patch):
    """The workloads of --workload, each once per --skip design."""
    for name in FLAGS.workload:
        if name.endswith(".py"):
            w = benchmark.config_workload(name, patch=patch, batch=FLAGS.patch_batch)
        else:
            w = benchmark.WORKLOADS[name]
            if patch or FLAGS.patch_batch:
                w = dataclasses.replace(
                    w, patch=patch or w.patch, batch=FLAGS.patch_batch or w.batch
                )
        if not FLAGS.skip:
            yield w
        for skip in FLAGS.skip or ():
            model = dataclasses.replace(w.model, skip=skip)
            yield dataclasses.replace(w, name=f"{w.name}+{skip}", model=model)


def main(argv):
    del argv
    if FLAGS.output:  # before hours of measuring: a result that cannot be written is lost
        from msseg import files
        from msseg.errors import InputError

        try:
            files.check_output_file(FLAGS.output)
        except InputError as e:
            sys.exit(f"{os.path.basename(__file__)}: {e}")
    if FLAGS.model or FLAGS.config:
        return sampling_main()
    unknown = [w for w in FLAGS.workload if w not in benchmark.WORKLOADS and not w.endswith(".py")]
    if unknown:
        raise app.UsageError(f"unknown workload(s) {unknown}; known: {list(benchmark.WORKLOADS)}")
    bad = sorted(set(FLAGS.passes) - {"forward", "train_step"})
    if bad:
        raise app.UsageError(f"unknown passes {bad}; known: forward, train_step")
    patch = tuple(int(v) for v in FLAGS.patch) if FLAGS.patch else None
    if patch and len(patch) == 1:
        patch = patch * 3
    bad = sorted(set(FLAGS.skip or ()) - set(SKIPS))
    if bad:
        raise app.UsageError(f"unknown skip design(s) {bad}; known: {', '.join(SKIPS)}")
    rows = []
    for w in _workloads(patch):
        for dtype in FLAGS.dtype:
            for impl in FLAGS.conv_impl:
                rows.append(
                    benchmark.measure(
                        w,
                        repeats=FLAGS.repeats,
                        dtype=dtype,
                        conv_impl=impl,
                        passes=tuple(FLAGS.passes),
                    )
                )
                print(json.dumps(rows[-1]), flush=True)
    print(benchmark.format_table(rows))
    if FLAGS.output:
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.machine(),
            "cpu": benchmark.cpu_model(),
            "runs": rows,
        }
        _write(meta)


if __name__ == "__main__":
    app.run(main)
