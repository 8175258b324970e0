"""Evaluation of segmentations: per-mask metrics in mm, per-label/level reports, plots."""
