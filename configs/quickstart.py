"""The README's main job: the embedded mni152 set at 2 mm on a 2-core CPU, with a model worth
sampling. From a fresh clone the whole job takes 14 minutes, 9 of them training (1400 steps):
14 min 10 s wall, 534 s of training (experiments/2026-11-30_quickstart, "Rerun").

The model is shaped for CPU time (experiments/2026-11-30_train_throughput): 8 channels and no
residual block at full resolution, the capacity at depths 1-3, 2.8x cheaper per step than
16/32/64 channels with a block at every depth. The recipe is base.py's, the best of the
recipe screen (experiments/2026-11-30_recipe_screen): logits with cross-entropy + soft Dice
on the softmax, recycling, training at the 5 DDIM timesteps of the DDIM-5 sampler.
"""

import runpy
from pathlib import Path

get_base = runpy.run_path(str(Path(__file__).with_name("base.py")))["get_config"]


def get_config(arg=None):
    c = get_base(arg)
    c.data.spec = "mni152"
    c.data.spacing = (2.0, 2.0, 2.0)
    p = c.data.pipeline
    p.patch_size = (48, 48, 48)
    p.batch_size = 2
    m = c.model
    m.channels = (8, 16, 32, 64)
    m.num_res_blocks = (0, 1, 1, 1)
    m.norm_groups = 8
    m.conv_dtype = "bfloat16"  # mixed precision: bf16 convolutions, fp32 everything else
    t = c.train
    t.steps = 1400
    t.lr = 2e-3
    t.warmup_steps = 30
    t.ema_decay = 0.99
    t.entry_depths = (0, 1)
    t.entry_probs = (0.75, 0.25)
    t.log_every = 20
    t.eval_every = 0  # validate once, at the end (the 4 val scans, as evaluate.py segments)
    t.val_depths = (0,)
    t.checkpoint_every = 300
    return c
