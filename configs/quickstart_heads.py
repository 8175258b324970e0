"""The quickstart model trained for full-head scans: configs/quickstart.py on the skull-stripped
embedded set (70 % of the patches) and on mni152-heads (30 %): the same kind of brains inside
synthetic T1-like heads (docs/labels.md, "The embedded mni152-heads set"). Same network, recipe
and 1400 steps.

Measured in experiments/2026-12-02_full_heads: on its own it finds the brain in full-head test
subjects (brain Dice 0.94) but at this budget loses leaf accuracy on skull-stripped scans (0.71
against 0.81 for configs/quickstart.py). Best used as the stripper of a two-stage pipeline:

  python tools/train.py --config=configs/quickstart_heads.py --workdir=runs/heads
  python tools/export.py --workdir=runs/heads --output=runs/heads/model
  python tools/sample.py --model=runs/quickstart/model --strip_model=runs/heads/model ...

(full-head brain Dice 0.96, leaf 0.745; skull-stripped scans lose 0.7 leaf points).
"""

import runpy
from pathlib import Path

get_quickstart = runpy.run_path(str(Path(__file__).with_name("quickstart.py")))["get_config"]


def get_config(arg=None):
    c = get_quickstart(arg)
    c.data.spec = "mni152,mni152-heads"
    c.data.pipeline.dataset_weights = (0.7, 0.3)
    return c
