"""The bounding stripper for full-head scans: configs/quickstart_heads.py on a 4 mm grid. Its
48^3 patch spans 192 mm, about a whole head, so it does not take the neck for brain the way the
2 mm stripper (96 mm windows) sometimes does; its boundary is coarser. Used as
--strip_bound_model beside --strip_model=<quickstart_heads model>: the 2 mm brain is kept
within 2 mm of this model's (experiments/2026-12-02_full_heads, "Third round").

  python tools/train.py --config=configs/quickstart_heads_4mm.py --workdir=runs/heads_4mm
  python tools/export.py --workdir=runs/heads_4mm --output=runs/heads_4mm/model
  python tools/sample.py --model=runs/quickstart/model --strip_model=runs/heads/model \
      --strip_bound_model=runs/heads_4mm/model ...

(tools/strippers.sh runs both trainings.) Alone as the stripper: full-head brain Dice 0.975,
leaf 2.1 points below the twins; bounding the 2 mm stripper: 0.982 and 1.3.
"""

import runpy
from pathlib import Path

get_heads = runpy.run_path(str(Path(__file__).with_name("quickstart_heads.py")))["get_config"]


def get_config(arg=None):
    c = get_heads(arg)
    c.data.spacing = (4.0, 4.0, 4.0)
    return c
