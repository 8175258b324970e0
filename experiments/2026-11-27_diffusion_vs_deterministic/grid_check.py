"""Leaf Dice of the suite's models on the test split scored on the model's own 2 mm grid (the
training-time validation code, msseg.train.validate, run on the test cases), to set beside
tools/evaluate.py's scores on each label map's native 1 mm grid. Writes grid_check.json.

  python experiments/2026-11-27_diffusion_vs_deterministic/grid_check.py runs/suite ARM...
"""

import json
import sys
import time
from pathlib import Path

import jax

from msseg.train import checkpoint, validate
from msseg.train import setup as setup_lib

HERE = Path(__file__).resolve().parent


def load_arm(wd: Path):
    """(config, cache, training setup) of the suite arm trained in workdir `wd`."""
    run = setup_lib.load_run(wd)
    return run.config, run.setup.cache, run.setup


def main(run: str, arms: list[str]) -> None:
    out = {}
    for arm in arms:
        wd = Path(run) / arm
        cfg, cache, setup = load_arm(wd)
        _, ema, step = checkpoint.restore_params(wd)
        valset = validate.load_valset(cache, "test", (0,), 2 ** (setup.model.cfg.num_depths - 1))
        segmenter = validate.make_segmenter(
            setup.model,
            setup.schedule,
            setup.sampler,
            setup.loss.target,
            setup.train.val_mode,
            setup.protocol.level_tables(),
        )
        start = time.perf_counter()
        m = validate.validate(segmenter, ema, valset, jax.random.key(0))
        out[arm] = {
            "step": step,
            "num_cases": int(valset.images.shape[0]),
            "mode": setup.train.val_mode if cfg.model.diffusion else "deterministic",
            "sampler": setup.sampler.__dict__ if cfg.model.diffusion else None,
            "dice_leaves_2mm": m["val/depth0/leaves"],
            "dice_levels_2mm": {k: v for k, v in m.items() if "/level" in k},
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(arm, f"{100 * m['val/depth0/leaves']:.1f}", flush=True)
    path = HERE / "grid_check.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **out}, indent=1, default=str) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
