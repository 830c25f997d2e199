"""The one multi-view batch type: what the loader yields and every job consumes.

A dataset item (`MultiViewDataset.__getitem__` / `get_views`) is a dict of one sample's F
views; `ViewBatch.collate(items)` stacks B of them (the training DataLoader's `collate_fn`)
and `ViewBatch.from_item(item)` makes a batch of one. `ViewBatch.to(device)` moves every
tensor; accelerate's `send_to_device` and the DataLoader's `pin_memory` call `.to` and
`.pin_memory` on objects that have them, so a ViewBatch passes through both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import torch

from cameo_cli.config import CHOICES
from cameo_cli.errors import CameoError

_PER_VIEW = ("images", "intrinsics", "world_to_camera", "ref_mask", "frames")
_OPTIONAL = ("point_map", "point_valid", "object_mask")


@dataclass
class ViewBatch:
    """B samples of F views each (all samples of one batch have the same F and H x W)."""

    images: torch.Tensor  # [B, F, 3, H, W] float in [-1, 1]
    intrinsics: torch.Tensor  # [B, F, 3, 3] pixel intrinsics of an H x W image
    world_to_camera: torch.Tensor  # [B, F, 4, 4] OpenCV convention
    ref_mask: torch.Tensor  # [B, F] bool, True for reference (clean, given) views
    scenes: list[str]  # [B] scene names
    frames: torch.Tensor  # [B, F] long, frame indices within each scene
    point_map: torch.Tensor | None = None  # [B, F, 3, H, W] world frame
    point_valid: torch.Tensor | None = None  # [B, F, H, W] bool
    object_mask: torch.Tensor | None = None  # [B, F, H, W] bool (DTU's object masks)
    domain: torch.Tensor | None = None  # [B] long, `domain_index` of the recipe's data.domain

    def __post_init__(self) -> None:
        if self.images.dim() != 5 or self.images.shape[2] != 3:
            raise ValueError(f"images must be [B, F, 3, H, W], got {tuple(self.images.shape)}")
        b, f = self.images.shape[:2]
        h, w = self.image_size
        expected = {
            "intrinsics": (b, f, 3, 3),
            "world_to_camera": (b, f, 4, 4),
            "ref_mask": (b, f),
            "frames": (b, f),
            "point_map": (b, f, 3, h, w),
            "point_valid": (b, f, h, w),
            "object_mask": (b, f, h, w),
            "domain": (b,),
        }
        for name, shape in expected.items():
            tensor = getattr(self, name)
            if tensor is not None and tuple(tensor.shape) != shape:
                raise ValueError(f"{name} is {tuple(tensor.shape)}, expected {shape}")
        if len(self.scenes) != b:
            raise ValueError(f"{len(self.scenes)} scene names for a batch of {b}")

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) in pixels."""
        return (self.images.shape[-2], self.images.shape[-1])

    @property
    def num_views(self) -> int:
        return self.images.shape[1]

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    def with_domain(self, name: str) -> ViewBatch:
        """A copy whose every sample belongs to domain `name` (a recipe's `data.domain`)."""
        index = torch.full((self.batch_size,), domain_index(name), dtype=torch.long)
        return replace(self, domain=index.to(self.images.device))

    def _map(self, move: Callable[[torch.Tensor], torch.Tensor]) -> ViewBatch:
        moved = {
            field.name: move(value)
            for field in fields(self)
            if isinstance(value := getattr(self, field.name), torch.Tensor)
        }
        return replace(self, **moved)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ViewBatch:
        """A copy with every tensor on `device` (dtypes unchanged)."""
        return self._map(lambda tensor: tensor.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> ViewBatch:
        """A copy with every tensor in pinned memory (the DataLoader's `pin_memory=True`)."""
        return self._map(torch.Tensor.pin_memory)

    @classmethod
    def collate(cls, items: Sequence[dict]) -> ViewBatch:
        """Stack dataset items (dicts of one sample's views) into one batch."""
        if not items:
            raise ValueError("cannot collate an empty list of items")
        stacked = {name: torch.stack([item[name] for item in items]) for name in _PER_VIEW}
        for name in _OPTIONAL:
            if all(name in item for item in items):
                stacked[name] = torch.stack([item[name] for item in items])
        return cls(scenes=[item["scene"] for item in items], **stacked)

    @classmethod
    def from_item(cls, item: dict) -> ViewBatch:
        """A batch of one sample (a `get_views` result)."""
        return cls.collate([item])


def domain_index(name: str) -> int:
    """The index of domain `name` among the official domains (re10k 0, co3d 1, others 2)."""
    domains = CHOICES["data.domain"]
    if name not in domains:
        raise CameoError(f"unknown domain {name!r} (expected one of {', '.join(domains)})")
    return domains.index(name)
