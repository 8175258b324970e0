"""A template for FreeSurfer-labelled data (aseg protocol) at 1 mm, sized for several GPUs.

Set the dataset: `--config.data.spec=/path/to/dataset` (MSD dataset.json or nnU-Net folders
whose labels are aseg.mgz-style FreeSurfer codes). batch_size is per process.
"""

import runpy
from pathlib import Path

get_base = runpy.run_path(str(Path(__file__).with_name("base.py")))["get_config"]


def get_config(arg=None):
    c = get_base(arg)
    c.data.spec = ""  # required: the dataset folder
    c.data.protocol = "aseg"
    c.data.spacing = (1.0, 1.0, 1.0)
    p = c.data.pipeline
    p.patch_size = (128, 128, 128)
    p.batch_size = 2
    p.num_workers = 8
    p.synth_prob = 0.2
    m = c.model
    m.channels = (32, 64, 128, 256, 320)
    m.num_res_blocks = (2,)
    m.attention_depths = (4,)
    m.conv_dtype = "bfloat16"
    m.remat = True
    d = c.diffusion
    d.dice_weight = 0.5
    t = c.train
    t.steps = 100000
    t.lr = 3e-4
    t.warmup_steps = 2000
    t.entry_depths = (0, 1, 2)
    t.entry_probs = (0.6, 0.3, 0.1)
    t.log_every = 100
    t.eval_every = 5000
    t.checkpoint_every = 1000
    t.keep_best = 3
    t.val_cases = 16
    t.val_depths = (0, 1, 2)
    return c
