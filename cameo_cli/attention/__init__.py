"""Multi-view 3D self-attention: processors, the layer probe and identity perturbation."""

from cameo_cli.attention.hooks import LayerHook, ProbeResult
from cameo_cli.attention.processor import (
    MultiViewAttnProcessor,
    add_qk_norm,
    install_processors,
    multiview_attention,
)

__all__ = [
    "LayerHook",
    "MultiViewAttnProcessor",
    "ProbeResult",
    "add_qk_norm",
    "install_processors",
    "multiview_attention",
]
