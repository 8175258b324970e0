"""Evaluate segmentations: Dice, HD95, ASSD, volume similarity per label and tree level.

  python tools/evaluate.py --pred=DIR --ref=DIR --labels=MODEL|PROTOCOL --output=REPORT
      [--images=DIR] [--hd95=pooled|max] [--worst=3]

Writes REPORT/metrics.csv, summary.json, boxplot_<metric>.png and overlay PNGs of the worst
cases, then prints mean Dice per label and level. (--model/--data/--split: not yet.)
"""

from absl import app, flags

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
flags.DEFINE_string("model", None, "Model directory to segment --data with (not yet available).")
flags.DEFINE_string("data", None, "Dataset SPEC to segment and score (with --model).")
flags.DEFINE_string("split", "test", "Split of --data to evaluate (with --model).")
flags.mark_flag_as_required("output")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if FLAGS.model is not None or FLAGS.data is not None:
        raise app.UsageError(
            "--model/--data/--split evaluation is not yet available (it needs the inference "
            "module); segment with the model first and pass --pred/--ref/--labels"
        )
    missing = [f"--{n}" for n in ("pred", "ref", "labels") if getattr(FLAGS, n) is None]
    if missing:
        raise app.UsageError(f"{', '.join(missing)} required (with --pred/--ref mode)")
    from msseg.errors import InputError  # noqa: PLC0415
    from msseg.evaluation import folders, report  # noqa: PLC0415

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
        raise SystemExit(f"evaluate: {e}") from None
    print(report.format_dice_table(result.summary))
    print(f"{result.summary['num_cases']} cases; report in {FLAGS.output}")


if __name__ == "__main__":
    app.run(main)
