"""Per-op time of one W1 denoiser evaluation: jax.profiler trace of XLA:CPU, summed by op kind.

  python experiments/2026-11-26_w1_gn_serial/profile.py [mixed|float32] [TRACE_DIR]

Prints the median wall time of 3 evaluations, then the time per fusion kind (ffi_call = the
oneDNN convolutions; ynn_fusion = reductions and small dots; multiply_convert_fusion = the
GroupNorm/SiLU passes) averaged over 2 traced evaluations.
"""

import collections
import dataclasses
import glob
import gzip
import json
import re
import shutil
import sys
import time

import jax
import jax.numpy as jnp

from msseg import benchmark
from msseg.models.unet import MultiscaleUNet

mode = sys.argv[1] if len(sys.argv) > 1 else "mixed"
trace_dir = sys.argv[2] if len(sys.argv) > 2 else f"/tmp/w1_trace_{mode}"
cfg = dataclasses.replace(benchmark.WORKLOADS["w1"].model, conv_impl="onednn")
if mode == "mixed":
    cfg = dataclasses.replace(cfg, conv_dtype="bfloat16")
model = MultiscaleUNet(cfg)
key = jax.random.key(0)
x = jax.random.normal(key, (1, 64, 64, 64, cfg.in_channels))
t = jnp.full((1,), 500, jnp.int32)
params = jax.jit(model.init)(key, x, t)
f = jax.jit(lambda p, x, t: model.apply(p, x, t)[0])
for _ in range(3):
    jax.block_until_ready(f(params, x, t))
times = []
for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(f(params, x, t))
    times.append(time.perf_counter() - start)
print(f"{mode}: median {sorted(times)[1]:.3f} s")
shutil.rmtree(trace_dir, ignore_errors=True)
with jax.profiler.trace(trace_dir):
    for _ in range(2):
        jax.block_until_ready(f(params, x, t))
events = json.load(gzip.open(glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)[0]))
total, count = collections.Counter(), collections.Counter()
for e in events["traceEvents"]:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith(("$", "end:")) or "Thunk" in name:
        continue
    kind = re.sub(r"\.\d+$", "", name)
    total[kind] += e["dur"]
    count[kind] += 1
for kind, us in total.most_common(12):
    print(f"{us / 2e3:9.1f} ms  x{count[kind] // 2:4d}  {kind}")
