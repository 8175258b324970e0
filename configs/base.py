"""Every config key with its default. Other configs import get_config() and override it.

Pure data: no jax calls, no msseg imports. Sections are added as the package grows
(model, diffusion, train, eval come with the issues that build them).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    c.data.spec = "mni152"  # folder (dataset.json or imagesTr/labelsTr) or "mni152"
    c.data.protocol = ""  # "" = what the dataset declares
    c.data.cache = ""  # preprocessed cache folder; "" = <workdir>/cache
    c.data.spacing = (2.0, 2.0, 2.0)  # mm
    c.data.val_fraction = 0.2  # by case-id hash when the dataset has no validation split

    # msseg.data.pipeline.PipelineConfig, key for key
    p = c.data.pipeline = ml_collections.ConfigDict()
    p.patch_size = (64, 64, 64)
    p.batch_size = 2
    p.num_depths = 4
    p.foreground_ratio = 0.67
    p.flip_lr_prob = 0.5
    p.spatial_prob = 0.2
    p.max_rotation_deg = 10.0
    p.scale_range = (0.9, 1.1)
    p.intensity_prob = 0.3
    p.gamma_range = (0.7, 1.5)
    p.bias_std = 0.3
    p.contrast_range = (0.75, 1.25)
    p.noise_std = 0.1
    p.synth_prob = 0.0
    p.num_workers = 0
    p.num_threads = 2
    p.prefetch = 4
    return c
