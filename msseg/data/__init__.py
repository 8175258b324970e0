"""Data: datasets, the embedded MNI152 set, preprocessing to a cache, and the grain patch pipeline.

Submodules are imported explicitly (``from msseg.data import preprocess``) so that worker
processes and the sampling binary load numpy/nibabel code without pulling in grain or jax.
"""
