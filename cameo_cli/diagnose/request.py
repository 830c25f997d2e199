"""What `cameo diagnose` is asked to do and the model it diagnoses (shared by the job and
the perturbation study)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from cameo_cli.backbone import MultiViewBackbone
from cameo_cli.match_precision import Radii

if TYPE_CHECKING:
    from cameo_cli.attention.hooks import MatchScorer
    from cameo_cli.config import Recipe
    from cameo_cli.data.dataset import MultiViewDataset

ViewSet = tuple[str, list[int], int]  # (scene, frames, number of reference views)


@dataclass
class DiagnoseRequest:
    """Everything `cameo diagnose` needs; see the CLI for the meaning of each field."""

    backbone: str
    dataset: Path
    out: Path
    checkpoint: Path | None = None
    run: Path | None = None
    variant: str = "tiny"
    pretrained: Path | None = None
    recipe: str | None = None
    layers: str = "all"
    timesteps: tuple[int, ...] = (500,)
    scenes: int = 4
    perturb: bool = False
    sample_steps: int | None = None
    radii: Radii = field(default_factory=Radii)
    epsilon: float = 1.5
    protocol: str = "views"  # "views" (view sets, all pairs) or "probe3d" (image pairs)
    seed: int = 0
    lpips_weights: Path | None = None
    device: str | None = None
    overwrite: bool = False
    save_recommendation: bool = True
    top_k: int = 1  # how many layers to recommend (for `cameo train --layer auto:K`)


@dataclass
class DiagnosedModel:
    """A backbone to diagnose with what it was trained with."""

    backbone: MultiViewBackbone
    codec: torch.nn.Module
    recipe: Recipe
    variant: str
    match_scorer: MatchScorer | None = None  # the method's own matches (a trained head)
    supervised_layer: int | None = None
    step: int | None = None
    source: str = "fresh"


@dataclass
class Diagnosis:
    """One diagnosis under way: what was asked, the model, and the dataset with the view
    sets scored on it."""

    request: DiagnoseRequest
    model: DiagnosedModel
    dataset: MultiViewDataset
    views: list[ViewSet]
