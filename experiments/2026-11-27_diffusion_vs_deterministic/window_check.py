"""Where do the diffusion model's points go between validation (whole volume, 2 mm grid) and
tools/evaluate.py (sliding windows, native 1 mm grid)? On the first test cases, scored on the
2 mm grid against the cached reference: the exported model through the windows of
msseg.inference.predict, with the default and the XLA convolution, and the training-time
whole-volume segmenter. Prints the leaf Dice of each and writes window_check.json.

  python experiments/2026-11-27_diffusion_vs_deterministic/window_check.py runs/suite N ARM...
"""

import json
import sys
from pathlib import Path

import jax
import numpy as np
from grid_check import load_arm  # this folder's script

from msseg.data.pipeline import CaseSource
from msseg.diffusion import segment as seg
from msseg.inference import model as model_lib
from msseg.inference import predict
from msseg.train import checkpoint, validate

HERE = Path(__file__).resolve().parent


def main(run: str, n: int, arms: list[str]) -> None:
    out = {}
    for arm in arms:
        wd = Path(run) / arm
        _, cache, setup = load_arm(wd)
        source = CaseSource(cache, "test")
        cases = [source[i] for i in range(n)]
        protocol = setup.protocol
        tree = protocol.level_tables()
        row = {}
        for conv in ("auto", "xla"):
            model = model_lib.load_model(wd / "model", "local", conv)
            opts = predict.Options(model_lib.sampler_config(model), 0, 0.25, 2)
            segm = predict.Segmenter(model, opts)
            scores = []
            for i, c in enumerate(cases):
                probs, _, _ = segm.segment_array(c["image"], jax.random.key(i))
                pred = np.asarray(seg.tree_labels(probs[None], tree))
                scores.append(_leaves(pred, c["label"][None], protocol))
            row[f"windows_{conv}"] = float(np.mean(scores))
        _, ema, _ = checkpoint.restore_params(wd)
        segmenter = validate.make_segmenter(
            setup.model, setup.schedule, setup.sampler, setup.loss.target, "sampler", tree
        )
        scores = []
        for i, c in enumerate(cases):
            shape = tuple(-(-s // 4) * 4 for s in c["image"].shape)
            img = np.full((1, *shape, 1), c["pad_value"], np.float32)
            sx, sy, sz = c["image"].shape
            img[0, :sx, :sy, :sz, 0] = c["image"]
            pred = np.asarray(segmenter(ema, img, jax.random.key(i), 0))[:, :sx, :sy, :sz]
            scores.append(_leaves(pred, c["label"][None], protocol))
        row["whole_volume"] = float(np.mean(scores))
        out[arm] = row
        print(arm, {k: round(100 * v, 1) for k, v in row.items()}, flush=True)
    (HERE / "window_check.json").write_text(json.dumps({"cases": n, **out}, indent=1) + "\n")


def _leaves(pred, ref, protocol) -> float:
    s = validate.dice_scores(pred, ref, protocol)
    k = protocol.num_leaves
    return float(np.mean([s[name] for name in protocol.id_names()[1:k]]))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3:])
