"""The embedded mni152 benchmark at 2 mm, sized for one GPU (bf16 convolutions)."""

import runpy
from pathlib import Path

get_base = runpy.run_path(str(Path(__file__).with_name("base.py")))["get_config"]


def get_config(arg=None):
    c = get_base(arg)
    c.data.spec = "mni152"
    c.data.spacing = (2.0, 2.0, 2.0)
    p = c.data.pipeline
    p.patch_size = (96, 96, 96)
    p.batch_size = 4
    p.num_workers = 4
    m = c.model
    m.channels = (32, 64, 128, 256)
    m.num_res_blocks = (2,)
    m.attention_depths = (3,)
    m.conv_dtype = "bfloat16"
    d = c.diffusion
    d.dice_weight = 0.5
    t = c.train
    t.steps = 20000
    t.lr = 5e-4
    t.warmup_steps = 500
    t.entry_depths = (0, 1)
    t.entry_probs = (0.75, 0.25)
    t.log_every = 50
    t.eval_every = 2000
    t.checkpoint_every = 1000
    t.keep_best = 2
    return c
