"""Evaluate segmentations: Dice, HD95, ASSD, volume similarity per label and tree level.

  python tools/evaluate.py --pred=DIR --ref=DIR --labels=MODEL|PROTOCOL --output=REPORT
      [--images=DIR] [--hd95=pooled|max] [--worst=3]

  python tools/evaluate.py --model=MODEL --data=SPEC --split=test --output=REPORT
      [--sampler=ddim|ddpm|multiscale|anchored] [--steps=N] [--ensemble=N] [--seed=S]
      [--step_fusion=none|mean|linear] [--depths=0,1] [--progress=auto|on|off]

  python tools/evaluate.py --probs=DIR --data=SPEC --split=test --output=REPORT

Writes REPORT/metrics.csv, summary.json, boxplot_<metric>.png and overlay PNGs of the worst
cases, then prints mean Dice per label and level. With --model, the split's cases are
segmented first (as sample.py does; outputs, colour tables included, under REPORT/samples/),
each case's log line ending in the ETA of the cases left, and recorded under REPORT/cases/: a
rerun with the same settings segments only the cases not recorded yet (--overwrite: all).
With --probs, another implementation's probabilities on msseg's preprocessed grid (DIR/<case
id>.npz and DIR/probabilities.json, as peers/peer.py writes them) are placed on each image's
grid and scored exactly like msseg's own segmentations, calibration included.
With jax.distributed (the flags train.py takes, msseg/cluster.py) the cases are split across
the processes, and process 0 writes the report once all are scored.
"""

import sys

from absl import app, flags, logging

from msseg import cluster
from msseg.inference import cli

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "pred", None, "Folder of predicted label maps (<name>_seg.nii.gz or <name>.nii.gz)."
)
flags.DEFINE_string("ref", None, "Folder of reference label maps (<name>.nii.gz).")
flags.DEFINE_string(
    "labels", None, "Label protocol: a model directory (its labels.json) or a protocol name."
)
flags.DEFINE_string(
    "images", None, "Optional folder of images (<name>[_0000].nii.gz) for overlays."
)
flags.DEFINE_enum(
    "hd95",
    "pooled",
    ["pooled", "max"],
    "HD95: 95th percentile of the pooled symmetric surface distances, or the max of the two "
    "directed 95th percentiles.",
)
flags.DEFINE_integer("worst", 3, "Overlay PNGs for this many lowest-Dice cases.")
flags.DEFINE_string("output", None, "Report folder to write.")
flags.DEFINE_string("model", None, "Model directory to segment --data with.")
flags.DEFINE_string("data", None, "Dataset SPEC to segment and score (with --model or --probs).")
flags.DEFINE_string(
    "probs",
    None,
    "Folder of another implementation's probabilities on msseg's preprocessed grid "
    "(<case id>.npz, probabilities.json) to score on --data.",
)
flags.DEFINE_string("split", "test", "Split of --data to evaluate (with --model).")
cli.define_sampling_flags()
flags.DEFINE_list("depths", ["0"], "Entry depths to segment at (rows carry the depth if several).")
flags.DEFINE_integer(
    "input_depth",
    0,
    "Simulate a low-resolution scan: resample each input to the model's spacing x "
    "2^input_depth first (then to the entry depth's grid; with --model).",
)
flags.DEFINE_integer("max_cases", 0, "Evaluate only the first N cases (0 = all).")
flags.DEFINE_bool(
    "overwrite",
    False,
    "Segment every case again (with --model), also those a run with the same settings "
    "recorded in REPORT/cases/.",
)
cluster.define_flags()
flags.mark_flag_as_required("output")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cluster.initialize(FLAGS)
    if FLAGS.probs is not None:
        if FLAGS.model is not None or FLAGS.data is None:
            raise app.UsageError("--probs goes with --data (and not --model)")
        _make_output_dir()
        return _probs_mode()
    model_mode = FLAGS.model is not None or FLAGS.data is not None
    if model_mode and (FLAGS.model is None or FLAGS.data is None):
        raise app.UsageError("--model and --data go together")
    missing = [f"--{n}" for n in ("pred", "ref", "labels") if getattr(FLAGS, n) is None]
    if missing and not model_mode:
        raise app.UsageError(f"{', '.join(missing)} required (with --pred/--ref mode)")
    _make_output_dir()  # before loading anything: a report that cannot be written costs nothing
    if model_mode:
        return _model_mode()
    from msseg.errors import InputError
    from msseg.evaluation import folders, report

    try:
        protocol = folders.load_protocol(FLAGS.labels)
        result = folders.evaluate_folders(
            FLAGS.pred,
            FLAGS.ref,
            protocol,
            FLAGS.output,
            images_dir=FLAGS.images,
            hd95_mode=FLAGS.hd95,
            worst=FLAGS.worst,
        )
    except InputError as e:
        sys.exit(f"evaluate.py: {e}")
    print(report.format_dice_table(result.summary))
    print(f"{result.summary['num_cases']} cases; report in {FLAGS.output}")


def _make_output_dir() -> None:
    from msseg.errors import InputError
    from msseg.files import make_output_dir

    try:
        make_output_dir(FLAGS.output)
    except InputError as e:
        sys.exit(f"evaluate.py: {e}")


def _model_mode():
    from msseg.errors import InputError
    from msseg.inference import evaluate, predict

    try:
        model, cfg = cli.open_model(FLAGS)
        strip, bound = cli.open_strip_models(FLAGS)
        opts = predict.Options(
            cfg,
            FLAGS.seed,
            FLAGS.overlap,
            FLAGS.batch,
            input_depth=FLAGS.input_depth,
            tta=FLAGS.tta,
            postprocess=FLAGS.postprocess,
            strip_model=strip,
            strip_open_mm=FLAGS.strip_open_mm,
            strip_bound_model=bound,
            devices=FLAGS.devices,
            space=FLAGS.space,
            window=cli.window(FLAGS),
        )
        logging.info("evaluate: %s", predict.mesh_text(opts))
        result = evaluate.evaluate_model(
            model,
            FLAGS.data,
            FLAGS.split,
            FLAGS.output,
            opts,
            depths=tuple(int(d) for d in FLAGS.depths),
            hd95_mode=FLAGS.hd95,
            worst=FLAGS.worst,
            max_cases=FLAGS.max_cases,
            progress=cli.show_progress(FLAGS),
            overwrite=FLAGS.overwrite,
        )
    except (InputError, FileNotFoundError, ValueError) as e:
        sys.exit(f"evaluate.py: {e}")
    _print_result(result)


def _print_result(result) -> None:
    from msseg.evaluation import report

    if result is None:  # another process writes the report
        print(
            f"evaluate.py: this process's cases are scored; the first process writes {FLAGS.output}"
        )
        return
    print(report.format_dice_table(result.summary))
    _print_calibration(result.summary["calibration"])
    print(f"{result.summary['num_cases']} cases; report in {FLAGS.output}")


def _probs_mode():
    from msseg.errors import InputError
    from msseg.inference import probabilities

    try:
        result = probabilities.evaluate_probabilities(
            FLAGS.probs,
            FLAGS.data,
            FLAGS.split,
            FLAGS.output,
            hd95_mode=FLAGS.hd95,
            worst=FLAGS.worst,
            max_cases=FLAGS.max_cases,
            overwrite=FLAGS.overwrite,
        )
    except (InputError, FileNotFoundError, ValueError) as e:
        sys.exit(f"evaluate.py: {e}")
    _print_result(result)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _print_calibration(calib: dict) -> None:
    parts = calib.items() if "ece" not in calib else [(None, calib)]
    for depth, c in parts:
        at = "" if depth is None else f" (depth {depth})"
        print(
            f"calibration{at}: ECE {_fmt(c['ece'])}, entropy AUROC for errors "
            f"{_fmt(c['auroc_entropy_error'])}, error rate {_fmt(c['error_rate'])} "
            f"over {c['voxels']} voxels ({c['region']})"
        )


if __name__ == "__main__":
    app.run(main)
