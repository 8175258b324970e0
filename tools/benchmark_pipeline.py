"""Benchmark the grain patch pipeline: patches/s per worker count, side by side in one run."""

import dataclasses
import json
import os
import platform
import sys
import time

from absl import app, flags

from msseg.data import pipeline

FLAGS = flags.FLAGS
flags.DEFINE_string("cache", None, "Preprocessed cache (tools/preprocess.py --output).")
flags.DEFINE_string("split", "train", "Split to stream.")
flags.DEFINE_list("workers", ["0", "2"], "Worker counts to compare.")
flags.DEFINE_integer("patch", 64, "Cubic patch size.")
flags.DEFINE_integer("batch_size", 2, "Patches per batch.")
flags.DEFINE_integer("batches", 40, "Batches timed per setting (after the first).")
flags.DEFINE_integer("repeats", 2, "Alternating rounds over the settings (machines are noisy).")
flags.DEFINE_string("output", None, "Optional JSON file for the figures.")
flags.mark_flags_as_required(["cache"])


def main(argv):
    del argv
    if FLAGS.output:  # before hours of measuring: a result that cannot be written is lost
        from msseg import files
        from msseg.errors import InputError

        try:
            files.check_output_file(FLAGS.output)
        except InputError as e:
            sys.exit(f"{os.path.basename(__file__)}: {e}")
    base = pipeline.PipelineConfig(patch_size=(FLAGS.patch,) * 3, batch_size=FLAGS.batch_size)
    rows = []
    for _ in range(FLAGS.repeats):
        for workers in (int(w) for w in FLAGS.workers):
            cfg = dataclasses.replace(base, num_workers=workers)
            rows.append(
                pipeline.measure_throughput(FLAGS.cache, FLAGS.split, cfg, batches=FLAGS.batches)
            )
            print(json.dumps(rows[-1]), flush=True)
    print(f"{'workers':>7s} {'patches/s (median)':>19s} {'first batch s':>14s}")
    for workers in sorted({r["num_workers"] for r in rows}):
        mine = [r for r in rows if r["num_workers"] == workers]
        rates = sorted(r["patches_per_s"] for r in mine)
        print(f"{workers:7d} {rates[len(rates) // 2]:19.1f} {mine[0]['first_batch_s']:14.2f}")
    if FLAGS.output:
        meta = {
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.processor() or platform.machine(),
        }
        with open(FLAGS.output, "w") as f:
            json.dump({**meta, "config": dataclasses.asdict(base), "runs": rows}, f, indent=1)


if __name__ == "__main__":
    app.run(main)
