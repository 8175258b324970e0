"""Preprocess dataset SPECs (folders or `mni152`, comma-separated) into one cache for training."""

import math
import sys

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data",
    None,
    "Dataset SPEC: a folder (dataset.json or imagesTr/labelsTr), 'mni152' or 'mni152-heads'; "
    "several SPECs "
    "joined by commas go into one cache (same protocol, unique case ids).",
)
flags.DEFINE_string("output", None, "Cache folder to write (arrays + manifest.json).")
flags.DEFINE_list(
    "spacing",
    None,
    "Target spacing in mm: one value or three (x,y,z). "
    "Default: 2 mm for mni152, else the median spacing of the datasets' labelled images.",
)
flags.DEFINE_string(
    "protocol", None, "Label protocol (mni-tissue, aseg); default: from dataset.json."
)
flags.DEFINE_string(
    "cache_dir",
    None,
    "Where the embedded mni152 set is built (default: $MSSEG_CACHE or ~/.cache/msseg).",
)
flags.DEFINE_integer("workers", None, "Worker processes (default: one per CPU core).")
flags.DEFINE_float(
    "val_fraction",
    0.2,
    "Share of training cases sent to validation by case-id hash "
    "when the dataset has no validation split.",
)
flags.DEFINE_float("margin_mm", 10.0, "Margin kept around the head box when cropping.")
flags.mark_flags_as_required(["data", "output"])


def _spacing() -> tuple[float, float, float] | None:
    """--spacing as three sizes in mm; exits with one line if it cannot be one."""
    if not FLAGS.spacing:
        return None
    text = ",".join(FLAGS.spacing)
    try:
        values = [float(s) for s in FLAGS.spacing]
    except ValueError:
        values = []
    if len(values) not in (1, 3) or not all(math.isfinite(v) and v > 0 for v in values):
        sys.exit(
            f"preprocess.py: --spacing={text}: expected one or three finite voxel sizes > 0 (mm)"
        )
    return tuple(values * 3 if len(values) == 1 else values)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    spacing = _spacing()  # flag checks first, before the imports and any file is touched
    if not (math.isfinite(FLAGS.margin_mm) and FLAGS.margin_mm >= 0):
        sys.exit(f"preprocess.py: --margin_mm={FLAGS.margin_mm}: expected a finite size >= 0 (mm)")
    from msseg.data import preprocess
    from msseg.errors import InputError

    try:
        manifest = preprocess.run(
            FLAGS.data,
            FLAGS.output,
            spacing=spacing,
            protocol=FLAGS.protocol,
            cache=FLAGS.cache_dir,
            workers=FLAGS.workers,
            val_fraction=FLAGS.val_fraction,
            margin_mm=FLAGS.margin_mm,
        )
    except (InputError, ValueError) as e:  # InputError: a file; ValueError: a setting
        sys.exit(f"preprocess.py: {e}")
    print(preprocess.summarize(manifest))


if __name__ == "__main__":
    app.run(main)
