"""Where a quickstart training step's time goes: the compiled train step alone (one batch
reused), its FLOPs, the input pipeline alone, per entry depth, for config variants side by side.

    python experiments/2026-11-30_train_throughput/profile_step.py --cache=CACHE \
        --variant="name:key=value;key=value" --variant=... [--steps=20] [--trace] \
        [--output=F.json]

Each variant is the quickstart config with `--config.`-style overrides (python literals).
"""

from __future__ import annotations

import ast
import collections
import glob
import gzip
import json
import platform
import re
import tempfile
import time

import jax
import numpy as np
from absl import app, flags

from msseg.data import pipeline
from msseg.diffusion import losses
from msseg.train import loop, sharding, step
from msseg.train import setup as setup_lib
from msseg.train import state as state_lib

_CACHE = flags.DEFINE_string("cache", None, "preprocessed cache", required=True)
_CONFIG = flags.DEFINE_string("config", "configs/quickstart.py", "base config")
_VARIANT = flags.DEFINE_multi_string("variant", ["base:"], "name:key=value;key=value")
_STEPS = flags.DEFINE_integer("steps", 20, "timed steps per depth")
_OUTPUT = flags.DEFINE_string("output", "", "JSON output")
_TRACE = flags.DEFINE_bool(
    "trace", False, "also trace 5 depth-0 steps (jax.profiler) and sum the time per XLA op kind"
)


def _trace(train_step, st, batch, key) -> tuple:
    """5 traced steps at entry depth 0 → (state, {op kind: ms of thread time per step}).
    `ffi_call` is the oneDNN convolutions; thread time, so the sum exceeds the wall time."""
    folder = tempfile.mkdtemp()
    jax.profiler.start_trace(folder, create_perfetto_trace=True)
    for _ in range(5):
        st, _ = train_step(st, batch, key, 0)
        jax.block_until_ready(st)
    jax.profiler.stop_trace()
    path = glob.glob(f"{folder}/**/*.trace.json.gz", recursive=True)[-1]
    kinds = collections.Counter()
    for e in json.load(gzip.open(path))["traceEvents"]:
        name = e.get("name", "")
        if e.get("ph") != "X" or "dur" not in e or name.startswith(("$", "Thunk", "Pjit")):
            continue
        kinds[re.sub(r"\.\d+$", "", name)] += e["dur"] / 5 / 1000
    return st, {k: round(v, 2) for k, v in kinds.most_common(20)}


def _config(overrides: str):
    import runpy

    c = runpy.run_path(_CONFIG.value)["get_config"]()
    for item in filter(None, overrides.split(";")):
        key, value = item.split("=", 1)
        node = c
        *path, last = key.split(".")
        for p in path:
            node = node[p]
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
        node[last] = value
    return c


def _cpu() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def measure(name: str, overrides: str) -> dict:
    c = _config(overrides)
    setup = setup_lib.build_setup(c, _CACHE.value)
    tcfg, pcfg = setup.train, setup.pipeline
    mesh = sharding.make_mesh(tcfg.mesh_data, tcfg.mesh_space)
    tx = state_lib.make_optimizer(tcfg)
    st = jax.jit(loop.init_fn(setup, tx))(jax.random.key(0))
    space = losses.LabelSpace.from_protocol(
        setup.protocol, setup_lib.used_ids(_CACHE.value, setup.protocol)
    )
    rep = sharding.replicated(mesh)
    ssh = jax.tree.map(lambda _: rep, st)
    bsh = {k: sharding.batch_sharding(mesh) for k in ("image", "label")}
    fn = step.make_train_step(setup.model, setup.schedule, setup.loss, tx, tcfg, space)
    train_step = step.jit_train_step(fn, ssh, bsh, donate=True)
    it = iter(pipeline.make_dataset(_CACHE.value, "train", pcfg, seed=0))
    t0 = time.perf_counter()
    batches = [next(it) for _ in range(_STEPS.value)]
    data_s = (time.perf_counter() - t0) / _STEPS.value
    batch = sharding.shard_batch({k: batches[0][k] for k in ("image", "label")}, mesh)
    key = jax.random.key(1)
    row = {"variant": name, "overrides": overrides, "data_s_per_batch": round(data_s, 4)}
    for depth in tcfg.entry_depths:
        lowered = train_step.lower(st, batch, key, depth)
        t0 = time.perf_counter()
        compiled = lowered.compile()
        compile_s = time.perf_counter() - t0
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        st, m = train_step(st, batch, key, depth)
        jax.block_until_ready(st)
        times = []
        for _ in range(_STEPS.value):
            t0 = time.perf_counter()
            st, m = train_step(st, batch, key, depth)
            jax.block_until_ready(st)
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        row[f"depth{depth}"] = {
            "compile_s": round(compile_s, 1),
            "s_per_step": round(med, 4),
            "gflop": round(float(cost.get("flops", float("nan"))) / 1e9, 2),
            "loss": float(m["loss"]),
        }
    if _TRACE.value:
        st, row["trace_ms_per_step_depth0"] = _trace(train_step, st, batch, key)
    p = tcfg.entry_probs or [1.0] * len(tcfg.entry_depths)
    p = np.asarray(p) / np.sum(p)
    row["expected_s_per_step"] = round(
        float(
            sum(
                pi * row[f"depth{d}"]["s_per_step"]
                for pi, d in zip(p, tcfg.entry_depths, strict=True)
            )
        ),
        4,
    )
    row["params"] = int(sum(x.size for x in jax.tree.leaves(st.params)))
    return row


def main(argv):
    del argv
    rows = []
    for v in _VARIANT.value:
        name, _, overrides = v.partition(":")
        row = measure(name, overrides)
        print(json.dumps(row), flush=True)
        rows.append(row)
    out = {
        "cpu": _cpu(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "jax": jax.__version__,
        "rows": rows,
    }
    if _OUTPUT.value:
        with open(_OUTPUT.value, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    app.run(main)
