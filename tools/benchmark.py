"""Benchmark model workloads (FLOPs, compile time, s per denoiser evaluation and train step)."""

import json
import platform
import time

from absl import app, flags

from msseg import benchmark

FLAGS = flags.FLAGS
flags.DEFINE_list("workload", ["w1"], f"Workloads to run: {', '.join(benchmark.WORKLOADS)}.")
flags.DEFINE_list(
    "dtype",
    ["float32"],
    "Compute dtypes to compare: float32, bfloat16 (the whole model), mixed (bf16 convolutions).",
)
flags.DEFINE_list(
    "conv_impl", ["auto"], "Convolution implementations to compare (auto, xla, slices2d, onednn)."
)
flags.DEFINE_integer("repeats", 3, "Timed runs per pass, after one warm-up.")
flags.DEFINE_string("output", None, "Optional JSON file for the figures.")


def main(argv):
    del argv
    unknown = [w for w in FLAGS.workload if w not in benchmark.WORKLOADS]
    if unknown:
        raise app.UsageError(f"unknown workload(s) {unknown}; known: {list(benchmark.WORKLOADS)}")
    rows = []
    for name in FLAGS.workload:
        for dtype in FLAGS.dtype:
            for impl in FLAGS.conv_impl:
                w = benchmark.WORKLOADS[name]
                rows.append(
                    benchmark.measure(w, repeats=FLAGS.repeats, dtype=dtype, conv_impl=impl)
                )
                print(json.dumps(rows[-1]), flush=True)
    print(benchmark.format_table(rows))
    if FLAGS.output:
        meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "runs": rows}
        with open(FLAGS.output, "w") as f:
            json.dump(meta, f, indent=1)


if __name__ == "__main__":
    app.run(main)
