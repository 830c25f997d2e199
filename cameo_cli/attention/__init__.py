"""Multi-view 3D self-attention: processors, the layer probe and identity perturbation."""

from cameo_cli.attention.hooks import LayerHook, ProbeResult
from cameo_cli.attention.processor import (
    MultiViewAttnProcessor,
    install_processors,
    multiview_attention,
)

__all__ = [
    "LayerHook",
    "MultiViewAttnProcessor",
    "ProbeResult",
    "install_processors",
    "multiview_attention",
]
