"""Inference: load a model directory, segment volumes by sliding window, write native-space outputs.

Needs jax, numpy, nibabel and scipy (matplotlib for the QC picture), not flax, optax, orbax
or grain: the exported sampler runs alone (`model.load_model(route="exported")`).
"""
