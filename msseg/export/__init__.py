"""Export: a training run's checkpoint → a self-contained model directory (`format`, `exporter`).

Import submodules explicitly: `format` (reading, checking and writing the directory) needs
only jax and numpy; `exporter` (building the artifacts) needs the flax model.
"""
