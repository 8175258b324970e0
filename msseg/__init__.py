"""msseg: multiscale 3D brain MRI segmentation with denoising diffusion models (JAX/Flax)."""

__version__ = "0.1.0"
