"""A tiny config for tests and smoke runs: 16³ patches at 4 mm, a 2-depth 8/16-channel U-Net."""

import runpy
from pathlib import Path

get_base = runpy.run_path(str(Path(__file__).with_name("base.py")))["get_config"]


def get_config(arg=None):
    c = get_base(arg)
    c.data.spacing = (4.0, 4.0, 4.0)
    p = c.data.pipeline
    p.patch_size = (16, 16, 16)
    p.batch_size = 2
    p.num_threads = 1
    p.prefetch = 2
    m = c.model
    m.channels = (8, 16)
    m.num_res_blocks = (1,)
    m.norm_groups = 4
    c.diffusion.num_timesteps = 100
    t = c.train
    t.steps = 4
    t.warmup_steps = 1
    t.lr = 1e-3
    t.log_every = 1
    t.eval_every = 0
    t.checkpoint_every = 2
    t.val_depths = (0,)
    c.sampler.steps = 2
    return c
