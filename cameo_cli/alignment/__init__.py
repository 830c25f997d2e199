"""Alignment losses on a probed attention layer: CAMEO and its projection head."""

from cameo_cli.alignment.cameo_loss import CameoLoss

__all__ = ["CameoLoss"]
