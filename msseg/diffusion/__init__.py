"""Diffusion: noise schedules and DDPM quantities (`schedule`) and the samplers (`samplers`).

Submodules are imported explicitly (``from msseg.diffusion import schedule``); nothing here
imports flax or the models: the denoiser enters the samplers as a plain function.
"""
