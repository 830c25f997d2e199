"""Stand-in backbones for tests of the code around a backbone (pipeline, batches)."""

from __future__ import annotations

import torch

from cameo_cli.backbone import MultiViewBackbone, ViewConditioning


class StubBackbone(MultiViewBackbone):
    """A backbone without layers that checks every conditioning against its latents and
    records it; subclasses say what it predicts."""

    name = "stub"

    def __init__(self) -> None:
        super().__init__()
        self.conds: list[ViewConditioning] = []

    @classmethod
    def build(cls, variant="tiny", *, in_channels=3, pretrained=None, **options):
        return cls()

    def layers(self, resolution):
        return []

    def token_grid(self, layer, image_hw):
        return image_hw

    def forward(self, latents, timesteps, cond):
        cond.check(*latents.shape[:2])
        self.conds.append(cond)
        return self.predict(latents, timesteps, cond)

    def predict(self, latents: torch.Tensor, timesteps: torch.Tensor, cond: ViewConditioning):
        return torch.zeros_like(latents)
