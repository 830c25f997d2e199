"""cameo: correspondence-attention alignment (CAMEO) for multi-view diffusion models."""

__version__ = "0.1.0"
