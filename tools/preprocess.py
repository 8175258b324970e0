"""Preprocess dataset SPECs (folders or `mni152`, comma-separated) into one cache for training."""

from absl import app, flags

from msseg.data import preprocess
from msseg.errors import InputError

FLAGS = flags.FLAGS
flags.DEFINE_string(
    "data",
    None,
    "Dataset SPEC: a folder (dataset.json or imagesTr/labelsTr) or 'mni152'; several SPECs "
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


def main(argv):
    del argv
    spacing = None
    if FLAGS.spacing:
        values = [float(s) for s in FLAGS.spacing]
        if len(values) not in (1, 3):
            raise app.UsageError("--spacing takes one value or three")
        spacing = tuple(values * 3 if len(values) == 1 else values)
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
    except InputError as e:
        raise SystemExit(f"preprocess: {e}") from None
    print(preprocess.summarize(manifest))


if __name__ == "__main__":
    app.run(main)
