"""Open the pieces a training run is built from: the recipe's backbone and its dataset.

The supervised layer and what the dataset must hold are resolved in `plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from cameo_cli.backbone import MultiViewBackbone
from cameo_cli.config import Recipe
from cameo_cli.data.records import HELD_OUT_SPLIT, TRAIN_SPLIT
from cameo_cli.errors import CameoError

PREPARE_HINT = (
    "prepare one with point maps: `cameo prepare synthetic --out DIR` (rendered depth), "
    "`cameo prepare dtu ... --geometry depth` or `cameo prepare re10k ... --geometry vggt "
    "--vggt-weights DIR`; or train the baseline with --align none"
)


def build_training_backbone(recipe: Recipe, in_channels: int) -> MultiViewBackbone:
    """The recipe's backbone (unknown names are reported with the registered ones)."""
    from cameo_cli.registry import backbone_from_recipe

    config = recipe.backbone
    backbone = backbone_from_recipe(config, in_channels=in_channels)
    if config.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    return backbone


def open_dataset(
    recipe: Recipe, *, needs_geometry: bool, split: str | None, root: str | None = None
) -> Dataset:
    """The recipe's prepared dataset (or the one at `root`, sampled as the recipe says);
    with CAMEO it must hold point maps."""
    from cameo_cli.data.dataset import dataset_from_recipe

    data = recipe.data
    if not (root or data.dataset):
        raise CameoError(
            "no dataset: pass --dataset DIR or --set data.dataset=DIR "
            "(a folder written by `cameo prepare`, e.g. `cameo prepare synthetic --out DIR`)"
        )
    root = Path(root or data.dataset).expanduser()
    if not (root / "index.json").is_file():
        raise CameoError(
            f"{root}: not a prepared dataset (no index.json); create it with `cameo prepare`"
        )
    dataset = dataset_from_recipe(root, recipe, seed=recipe.train.seed, split=split)
    if needs_geometry and not dataset.has_geometry:
        raise CameoError(
            f"{root}: the dataset has no point maps, which --align cameo needs; {PREPARE_HINT}"
        )
    return dataset


@dataclass(frozen=True)
class HeldOut:
    """What validation scores: a dataset and, for meta.json, where its scenes come from."""

    dataset: Dataset
    folder: str
    split: str

    @property
    def on_training_scenes(self) -> bool:
        return self.split == TRAIN_SPLIT


def open_validation_dataset(recipe: Recipe, training: Dataset) -> HeldOut:
    """The held-out scenes of `data.validation` (a prepared folder; None: the training
    folder): its `test` split, a CameoError naming the folder when it has none. The value
    `train` opts in to validating on `training` (the training scenes)."""
    from cameo_cli.data.shards import load_index

    choice = recipe.data.validation
    if choice == TRAIN_SPLIT:
        return HeldOut(training, str(recipe.data.dataset), TRAIN_SPLIT)
    folder = choice or recipe.data.dataset
    root = Path(folder).expanduser()
    if (root / "index.json").is_file():
        scenes = load_index(root)["scenes"].values()
        if not any(meta.get("split") == HELD_OUT_SPLIT for meta in scenes):
            raise CameoError(
                f"{root}: no held-out scenes for validation (no split '{HELD_OUT_SPLIT}' in "
                "index.json); prepare some (`cameo prepare synthetic --test-scenes N`, "
                "`cameo prepare re10k --split test`), name a prepared held-out folder with "
                "data.validation=DIR, or validate on training scenes with data.validation=train"
            )
    dataset = open_dataset(recipe, needs_geometry=False, split=HELD_OUT_SPLIT, root=folder)
    return HeldOut(dataset, str(folder), HELD_OUT_SPLIT)
