"""The "strip2" stripper of the second round (README): configs/quickstart_heads.py with 80 % of
the patches from mni152-heads (was 30 %) and half of them centred on the brain (was 67 %),
1400 steps as the stripper it was compared with (the config's default is 3000 since).

  python tools/train.py --config=experiments/2026-12-02_full_heads/strip2.py --workdir=OUT
"""

import runpy
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
get_heads = runpy.run_path(str(CONFIGS / "quickstart_heads.py"))["get_config"]


def get_config(arg=None):
    c = get_heads(arg)
    c.data.pipeline.dataset_weights = (0.2, 0.8)
    c.data.pipeline.foreground_ratio = 0.5
    c.train.steps = 1400
    return c
