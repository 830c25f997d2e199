"""The backbone contract: what every adapter (built-in or plugin) implements.

An adapter wraps a diffusers model (U-Net or DiT) whose self-attention layers are hooked
by cameo's processors. All adapters share one forward signature:

    prediction = backbone(latents [B, F, C, h, w], timesteps [B] (float), cond) -> [B, F, C, h, w]

Layers are numbered by the adapter (`layer_paths`, an ordered list of module paths); the
probe and the perturbation address them by that index.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from cameo_cli.attention.hooks import LayerHook, ProbeResult
from cameo_cli.errors import CameoError


@dataclass
class ViewConditioning:
    """Everything but the noisy latents that a multi-view backbone is conditioned on."""

    intrinsics: torch.Tensor  # [B, F, 3, 3] pixel intrinsics of an image of `image_size`
    world_to_camera: torch.Tensor  # [B, F, 4, 4] OpenCV convention
    ref_mask: torch.Tensor  # [B, F] bool, True for reference (clean, given) views
    image_size: tuple[int, int]  # (H, W) in pixels that `intrinsics` refer to
    drop_camera: torch.Tensor | None = None  # [B] bool: zero the camera channels (CFG)
    ref_images: torch.Tensor | None = None  # [B, F, 3, H, W] in [-1, 1]; for geometric priors
    point_map: torch.Tensor | None = None  # [B, F, 3, H, W] world frame; for geometric priors
    point_valid: torch.Tensor | None = None  # [B, F, H, W] bool


@dataclass(frozen=True)
class LayerInfo:
    """One self-attention layer as the adapter numbers it."""

    index: int
    path: str
    grid: tuple[int, int]  # tokens per view (h, w) at the queried resolution
    heads: int
    head_dim: int
    multiview: bool
    default: bool


class ProbeHandle:
    """Filled by `MultiViewBackbone.probe` after the forward pass."""

    def __init__(self) -> None:
        self._result: ProbeResult | None = None

    @property
    def result(self) -> ProbeResult:
        if self._result is None:
            raise RuntimeError("the probed layer was not run: call the backbone inside `probe`")
        return self._result


class MultiViewBackbone(nn.Module, ABC):
    """Base class of every adapter. Subclasses set `hooks` (one per layer, in order)."""

    name: str = ""
    default_layer: int = 0

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[LayerHook] = []

    # -- construction -------------------------------------------------------------------
    @classmethod
    @abstractmethod
    def build(
        cls,
        variant: str = "tiny",
        *,
        in_channels: int = 4,
        pretrained: str | None = None,
        **options: object,
    ) -> MultiViewBackbone:
        """Build the `tiny` or `full` config; `pretrained` is a local diffusers folder."""

    @abstractmethod
    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: ViewConditioning
    ) -> torch.Tensor:
        """Predict for every view: [B, F, C, h, w] -> [B, F, C, h, w]."""

    @abstractmethod
    def layers(self, resolution: int) -> list[LayerInfo]:
        """The layer table for square inputs of `resolution` pixels (image space)."""

    # -- layers ---------------------------------------------------------------------------
    @property
    def layer_paths(self) -> list[str]:
        return [hook.path for hook in self.hooks]

    @property
    def multiview_layers(self) -> frozenset[int]:
        return frozenset(hook.index for hook in self.hooks if hook.multiview)

    def check_layer(self, layer: int) -> int:
        """Return `layer` if it exists, else raise a CameoError listing every layer."""
        if not 0 <= layer < len(self.hooks):
            names = ", ".join(f"{h.index}={h.path}" for h in self.hooks)
            raise CameoError(
                f"layer {layer} is outside backbone '{self.name}' "
                f"(valid: 0-{len(self.hooks) - 1}): {names}"
            )
        return layer

    def set_num_views(self, num_views: int) -> None:
        """Tell every processor how many consecutive batch items form one sample."""
        for hook in self.hooks:
            hook.num_views = num_views

    # -- probe and perturbation ---------------------------------------------------------
    @contextmanager
    def probe(self, layer: int, grid: tuple[int, int]) -> Iterator[ProbeHandle]:
        """Capture q and k of `layer` (token grid `grid` per view) during forward passes."""
        hook = self.hooks[self.check_layer(layer)]
        handle = ProbeHandle()
        hook.captured.clear()
        hook.recording = True
        try:
            yield handle
        finally:
            hook.recording = False
            if hook.captured:
                q, k, scale = hook.captured[-1]
                handle._result = ProbeResult(q=q, k=k, scale=scale, grid=grid)
            hook.captured.clear()

    @contextmanager
    def perturb(self, layers: Iterable[int]) -> Iterator[None]:
        """Replace the attention of `layers` by the identity (output = V), as in PAG."""
        chosen = [self.hooks[self.check_layer(i)] for i in layers]
        for hook in chosen:
            hook.identity = True
        try:
            yield
        finally:
            for hook in chosen:
                hook.identity = False
