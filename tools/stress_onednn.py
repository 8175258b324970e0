"""Stress test of the oneDNN convolution: every shape the tests cover (onednn_check.CASES and
the thin volumes), float32 and bfloat16, the forward pass, both gradients and the
backward-weights handler alone, repeated, from several Python threads at once, in poison mode
(unwritten memory reads as ~3.4e38). Prints the mismatches and a summary; exits 1 on any.

  python tools/stress_onednn.py [--threads=4] [--repeats=5] [--poison=true]
  OMP_NUM_THREADS=4 python tools/stress_onednn.py   # more oneDNN threads than cores, too
"""

import json
import os
import random
import sys
import threading
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("threads", 4, "Python threads calling the convolutions at once.")
flags.DEFINE_integer("repeats", 5, "Calls per shape, dtype and thread.")
flags.DEFINE_bool("poison", True, "Poison mode (see msseg.models.onednn.set_poison).")
flags.DEFINE_integer("seed", 0, "Shuffles each thread's order of the shapes.")


def main(argv):
    del argv
    import jax.numpy as jnp  # after absl parsed the flags
    from harness.results import machine

    from msseg.models import onednn, onednn_check

    if not onednn.available():
        sys.exit(f"stress_onednn: the oneDNN convolution is unavailable: {onednn.reason()}")
    onednn.set_poison(FLAGS.poison)
    cases = onednn_check.CASES + onednn_check.thin_cases()
    work = [(c, d) for c in cases for d in (jnp.float32, jnp.bfloat16)]
    for case, dtype in work:  # compile everything first, so the threads overlap in oneDNN
        onednn_check.check(case, dtype)
    mismatches, calls = [], [0]
    lock = threading.Lock()
    barrier = threading.Barrier(FLAGS.threads)

    def run(index):
        order = list(work)
        random.Random(FLAGS.seed * 1000 + index).shuffle(order)
        barrier.wait()
        for case, dtype in order:
            bad = onednn_check.check(case, dtype, seed=index, repeats=FLAGS.repeats)
            with lock:
                calls[0] += FLAGS.repeats
                mismatches.extend(f"thread {index}: {m}" for m in bad)

    start = time.time()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(FLAGS.threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for m in mismatches:
        print(m)
    summary = {
        "shapes": len(cases),
        "dtypes": 2,
        "python_threads": FLAGS.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "repeats": FLAGS.repeats,
        "calls": calls[0],
        "checks": calls[0] * 4,
        "mismatches": len(mismatches),
        "poison": FLAGS.poison,
        "onednn": onednn.reason(),
        "seconds": round(time.time() - start, 1),
        **machine(),
    }
    print(json.dumps(summary, indent=1))
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    app.run(main)
