"""sid2video: SiD2 pixel-space diffusion for video and images, in JAX."""

__version__ = "0.1.0"
