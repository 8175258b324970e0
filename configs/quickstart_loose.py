"""The quickstart model for the second stage of strip-then-segment: configs/quickstart.py on the
skull-stripped embedded set (70 % of the patches) and on mni152-loose (30 %): synthetic T1-like
heads cut down to the brain and a random band of up to ~10 mm around it (docs/labels.md), as a
generous skull stripping leaves a scan, so that what the stripper leaves around the brain is
labelled background. Same network, recipe and 1400 steps.

  python tools/train.py --config=configs/quickstart_loose.py --workdir=runs/loose
  python tools/export.py --workdir=runs/loose --output=runs/loose/model
  python tools/sample.py --model=runs/loose/model --strip_model=runs/heads/model ...
"""

import runpy
from pathlib import Path

get_quickstart = runpy.run_path(str(Path(__file__).with_name("quickstart.py")))["get_config"]


def get_config(arg=None):
    c = get_quickstart(arg)
    c.data.spec = "mni152,mni152-loose"
    c.data.pipeline.dataset_weights = (0.7, 0.3)
    return c
