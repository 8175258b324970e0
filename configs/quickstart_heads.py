"""The stripper for full-head scans: configs/quickstart.py on the skull-stripped embedded set
(70 % of the patches) and on mni152-heads (30 %): the same kind of brains inside synthetic
T1-like heads (docs/labels.md, "The embedded mni152-heads set"). Same network and recipe,
3000 steps (~20 min on 2 cores).

Measured in experiments/2026-12-02_full_heads: at 1400 steps on its own it found the brain in
full-head test subjects (brain Dice 0.94) but lost leaf accuracy on skull-stripped scans (0.71
against 0.81 for configs/quickstart.py), so it is used as the stripper of a two-stage
pipeline, bounded by the same at 4 mm (configs/quickstart_heads_4mm.py; tools/strippers.sh
trains and exports both):

  python tools/sample.py --model=runs/quickstart/model --strip_model=runs/heads/model \
      --strip_bound_model=runs/heads_4mm/model ...

(full-head brain Dice 0.982, leaf 0.771, 1.3 points below the same subjects stripped with
their true mask; skull-stripped scans lose 0.2 leaf points. Without the bound: 0.969, 0.760,
2.4 and 0.2; at 1400 steps without it: 0.959, 0.745, 4.0 and 0.7.)
"""

import runpy
from pathlib import Path

get_quickstart = runpy.run_path(str(Path(__file__).with_name("quickstart.py")))["get_config"]


def get_config(arg=None):
    c = get_quickstart(arg)
    c.data.spec = "mni152,mni152-heads"
    c.data.pipeline.dataset_weights = (0.7, 0.3)
    c.train.steps = 3000  # the stripper's leaks into the neck shrink with training
    return c
