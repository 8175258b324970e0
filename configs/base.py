"""Every config key with its default. Other configs import get_config() and override it.

Pure data: no jax calls, no msseg imports. `data.pipeline.batch_size` is per process (the
global batch is batch_size x processes).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0

    c.data = ml_collections.ConfigDict()
    # a folder (dataset.json or imagesTr/labelsTr), "mni152" or "mni152-heads" (the embedded
    # sets); several joined by commas
    c.data.spec = "mni152"
    c.data.protocol = ""  # "" = what the dataset declares
    c.data.cache = ""  # preprocessed cache folder; "" = <workdir>/cache
    c.data.spacing = (2.0, 2.0, 2.0)  # mm
    c.data.val_fraction = 0.2  # by case-id hash when the dataset has no validation split

    # msseg.data.pipeline.PipelineConfig, key for key
    p = c.data.pipeline = ml_collections.ConfigDict()
    p.patch_size = (64, 64, 64)
    p.batch_size = 2
    p.foreground_ratio = 0.67
    p.dataset_weights = ()  # patch share per dataset of a combined data.spec; () = per case
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
    p.lowres_prob = 0.0  # patches seen as a coarser scan (thick slices); 0 = none
    p.lowres_max_factor = 4.0
    p.elastic_prob = 0.0  # patches read through a smooth random displacement field; 0 = none
    p.elastic_std_vox = 2.0  # the displacement's std at its control points, in voxels
    p.elastic_grid_vox = 12.0  # spacing of the displacement's control points, in voxels
    p.fov_crop_prob = 0.0  # patches cut at one side as at a scan's field-of-view edge; 0 = none
    p.fov_crop_max_fraction = 0.4  # the cut slab's largest thickness, as a share of the patch
    p.num_workers = 0
    p.num_threads = 2
    p.prefetch = 4

    # msseg.models.unet.UNetConfig, key for key (num_classes comes from the label protocol)
    m = c.model = ml_collections.ConfigDict()
    m.image_channels = 1
    m.channels = (32, 64, 128)
    m.num_res_blocks = (2,)  # one count for every depth, or one per depth (0: none there)
    m.norm_groups = 8
    m.dropout = 0.0
    m.attention_depths = ()
    m.attention_heads = 4
    m.skip = "unet"  # "unet" | "unet3plus" | "unetpp" (UNet++ nested dense skips)
    m.dtype = "float32"  # activations (and convolutions unless conv_dtype is set)
    m.param_dtype = "float32"
    # "bfloat16": mixed precision (bf16 convolutions; fp32 params, GroupNorm and activations)
    m.conv_dtype = ml_collections.config_dict.placeholder(str)
    m.remat = False
    m.diffusion = True  # False: the deterministic segmenter baseline
    m.conv_impl = "auto"  # "auto" (fastest on the platform) | "xla" | "slices2d" | "onednn"

    # msseg.diffusion: schedule, and losses.LossConfig key for key. The defaults are the
    # recipe of experiments/2026-11-30_recipe_screen: logits with cross-entropy + soft Dice,
    # recycling, training at the sampler's DDIM timesteps (LossConfig's own defaults are the
    # original recipe: x0 target, MSE, every timestep, no recycling)
    d = c.diffusion = ml_collections.ConfigDict()
    d.schedule = "linear"  # "linear" | "cosine" (linear: lower SNR, better for binary masks)
    d.num_timesteps = 1000
    d.target = "logits"  # "eps" | "x0" | "v" | "logits" (softmax: CE and Dice act on it directly)
    d.depth_weights = ()  # () = 1/2^d normalised
    d.mse_weight = 0.0
    d.ce_weight = 1.0
    d.dice_weight = 1.0
    # noising input at partially labelled voxels: "spread" over the node's leaves, or "draw"
    # one of them per voxel (msseg.diffusion.losses.LossConfig.partial_noise)
    d.partial_noise = "spread"
    # the chain diffuses signal_scale * mask (input scaling; < 1 makes the mask harder to read
    # from x_t, so more of the drawn timesteps teach something)
    d.signal_scale = 1.0
    # the timesteps training draws: "all" (0..T-1) or "sampler" (the DDIM timesteps of
    # sampler.steps: the only ones a DDIM chain of that length visits; the multiscale
    # sampler's chains and other step counts visit others)
    d.train_timesteps = "sampler"
    # recycling: the share of examples whose x_t noises the model's own estimate (from pure
    # noise, no gradient) instead of the truth, as sampling does (x0 / logits targets)
    d.recycle_prob = 1.0

    # msseg.train.state.TrainConfig, key for key
    t = c.train = ml_collections.ConfigDict()
    t.steps = 2000
    t.lr = 2e-4
    t.warmup_steps = 100
    t.end_lr_factor = 0.05  # cosine decay to lr * end_lr_factor at the last step
    t.weight_decay = 1e-4
    t.b1 = 0.9
    t.b2 = 0.999
    t.clip_norm = 1.0
    t.ema_decay = 0.999  # warmed up as min(decay, (1 + step) / (10 + step))
    t.entry_depths = (0,)  # depths a training patch may enter at (mixed-resolution training)
    t.entry_probs = ()  # their probabilities; () = uniform
    t.mesh_data = -1  # devices on the data (batch) axis; -1 = all that mesh_space leaves
    t.mesh_space = 1  # devices splitting each volume's first spatial axis
    t.log_every = 10
    t.eval_every = 500  # validation + checkpoint; 0 = only at the end
    t.checkpoint_every = 500  # extra checkpoints without validation; 0 = none
    t.keep_best = 1  # checkpoints kept by validation Dice (the latest is always kept)
    t.init_from = ""  # workdir or checkpoints/<step> to take params from (no resume)
    t.val_cases = 0  # validation cases sampled (0 = all)
    t.val_depths = (0,)  # entry depths validated: Dice per depth
    t.val_mode = "sampler"  # "sampler" (the sampler section) | "deterministic"
    # validation segments as tools/evaluate.py does: sliding windows of the patch, Gaussian
    # blending, scored on the scans' own grids; False = whole volumes on the cache grid
    t.val_windows = True
    t.val_overlap = 0.25
    t.val_batch = 2
    t.donate = True
    t.tensorboard = True  # also write the logged scalars to <workdir>/tensorboard/ (process 0)

    # msseg.diffusion.segment.SamplerConfig, key for key
    s = c.sampler = ml_collections.ConfigDict()
    s.kind = "ddim"  # "ddim" | "dpmpp2m" | "ddpm" | "multiscale" | "anchored"
    s.steps = 5  # DDIM-5: the chain the default recipe trains for
    s.eta = 0.0
    s.ensemble = 1
    s.fusion = "mean"  # "mean" | "vote"
    s.coarse_depth = 1
    s.coarse_steps = 10
    s.refine_t = 0.4
    s.refine_steps = 4
    s.clip_x0 = True
    s.step_fusion = "none"  # DDIM: "none" (last estimate) | "mean" | "linear" (steps fused)
    return c
