"""LPIPS (Zhang et al. 2018): learned perceptual distance on ImageNet features.

The images (in [0, 1], mapped to [-1, 1]) are shifted and scaled per channel, passed
through the convolutional part of torchvision's VGG16 (taps relu1_2 .. relu5_3) or
AlexNet (relu1 .. relu5); each tap is unit-normalised along channels, the squared
difference weighted by the published linear heads (1x1, no bias), averaged over space
and summed over taps.

Weights, never downloaded at run time:
- backbone: torchvision's ImageNet file (`vgg16-397923af.pth` / `alexnet-owt-7be5be79.pth`)
  from an explicit path or `$TORCH_HOME/hub/checkpoints/` (torch.hub's cache);
- linear heads: the `lpips_models/{vgg,alex}.pth` that ship with torchmetrics (or a path).
Both are read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cameo_cli.errors import CameoError

# net: (torchvision constructor, ImageNet weights file, feature taps, tap channels)
BACKBONES = {
    "vgg": ("vgg16", "vgg16-397923af.pth", (3, 8, 15, 22, 29), (64, 128, 256, 512, 512)),
    "alex": ("alexnet", "alexnet-owt-7be5be79.pth", (1, 4, 7, 9, 11), (64, 192, 384, 256, 256)),
}
WEIGHTS_URL = "https://download.pytorch.org/models/"  # where torchvision publishes them
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPSILON = 1e-10


def default_backbone_path(net: str) -> Path:
    """Where torch.hub (and so torchvision) caches the ImageNet weights of `net`."""
    return Path(torch.hub.get_dir()) / "checkpoints" / BACKBONES[net][1]


def default_heads_path(net: str) -> Path:
    """The linear-head weights shipped in torchmetrics' package data."""
    try:
        package = resources.files("torchmetrics.functional.image")
    except ModuleNotFoundError as error:
        raise CameoError(
            "LPIPS needs its linear-head weights: install torchmetrics "
            "(pip install torchmetrics) or choose other metrics (--metrics psnr,ssim)"
        ) from error
    return Path(str(package / "lpips_models" / f"{net}.pth"))


class LPIPS(nn.Module):
    """LPIPS distance between image batches in [0, 1]: `lpips(a, b) -> [N]`."""

    def __init__(self, net: str = "vgg") -> None:
        super().__init__()
        if net not in BACKBONES:
            raise CameoError(f"LPIPS net must be one of {', '.join(BACKBONES)}, got {net!r}")
        import torchvision

        constructor, _, taps, channels = BACKBONES[net]
        self.net = net
        self.taps = taps
        self.features = getattr(torchvision.models, constructor)(weights=None).features[
            : taps[-1] + 1
        ]
        self.heads = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in channels)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    @classmethod
    def load(
        cls,
        net: str = "vgg",
        *,
        backbone_path: str | Path | None = None,
        heads_path: str | Path | None = None,
    ) -> LPIPS:
        """Build with the ImageNet backbone and the published heads read from local files."""
        model = cls(net)
        backbone_file = Path(backbone_path) if backbone_path else default_backbone_path(net)
        if not backbone_file.is_file():
            _, name, _, _ = BACKBONES[net]
            url = WEIGHTS_URL + name
            raise CameoError(
                f"LPIPS ({net}) needs torchvision's ImageNet weights '{name}', not found at "
                f"{backbone_file}: download {url} on a machine with internet and put it at "
                f"{default_backbone_path(net)} (the folder follows $TORCH_HOME), or pass its "
                "path with --lpips-weights, or choose other metrics (--metrics psnr,ssim)"
            )
        state = _load(backbone_file)
        features = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
        kept = {k: v for k, v in features.items() if int(k.split(".")[0]) <= model.taps[-1]}
        try:
            model.features.load_state_dict(kept)
        except RuntimeError as error:
            raise CameoError(f"{backbone_file}: not torchvision {net} weights ({error})") from error
        heads_file = Path(heads_path) if heads_path else default_heads_path(net)
        if not heads_file.is_file():
            raise CameoError(f"{heads_file}: LPIPS linear-head weights not found")
        heads = _load(heads_file)
        try:
            for i, head in enumerate(model.heads):
                head.weight.copy_(heads[f"lin{i}.model.1.weight"])
        except (KeyError, RuntimeError) as error:
            raise CameoError(f"{heads_file}: not LPIPS {net} linear heads ({error})") from error
        return model

    def _distances(self, first: torch.Tensor, second: torch.Tensor) -> list[torch.Tensor]:
        """Per-tap weighted squared feature differences, each [N, 1, h_l, w_l]."""
        batch = first.shape[0]
        x = (torch.cat([first, second]) * 2 - 1 - self.shift) / self.scale
        distances = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in self.taps:
                unit = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + EPSILON)
                difference = (unit[:batch] - unit[batch:]) ** 2
                distances.append(self.heads[self.taps.index(index)](difference))
        return distances

    @torch.no_grad()
    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """LPIPS [N] between `[N, 3, H, W]` batches in [0, 1]."""
        return sum(d.mean(dim=(1, 2, 3)) for d in self._distances(first, second))

    @torch.no_grad()
    def masked(self, first: torch.Tensor, second: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """LPIPS [N] averaged over the pixels of `mask` [N, H, W]: each tap's distance map is
        upsampled (bilinear) to the image, summed, and averaged inside the mask."""
        size = first.shape[-2:]
        spatial = sum(
            F.interpolate(d, size=size, mode="bilinear", align_corners=False)
            for d in self._distances(first, second)
        )
        weights = mask[:, None].to(spatial.dtype)
        return (spatial * weights).sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3)).clamp(min=1)


def _load(path: Path) -> dict[str, torch.Tensor]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a corrupt or non-tensor file: report it, never unpickle it
        raise CameoError(f"{path}: cannot read the weights ({error})") from error
