"""Example cameo backbone plugin (see README.md): a DiT with multi-view 3D attention.

This package imports nothing heavy: `spec` is read when cameo lists backbones, `dit` (torch,
diffusers) only when the backbone is built.
"""
