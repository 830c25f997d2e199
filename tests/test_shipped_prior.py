"""The multi-view prior shipped for the quick start (`recipes/priors/cat3d-tiny-synthetic`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from cameo_cli.codec import load_codec
from cameo_cli.config import load_recipe
from cameo_cli.registry import backbone_from_recipe

ROOT = Path(__file__).parents[1]
PRIOR = ROOT / "recipes" / "priors" / "cat3d-tiny-synthetic"
MAX_SHIPPED_BYTES = 20 * 2**20  # every weight file cameo ships, together


def test_the_quick_start_fine_tunes_the_prior_with_cameo():
    quickstart, prior = load_recipe("quickstart-from-prior-cpu"), load_recipe("prior-cpu")
    assert quickstart.alignment.method == "cameo" and prior.alignment.method == "none"
    assert quickstart.backbone.pretrained == str(PRIOR.relative_to(ROOT) / "backbone")
    assert prior.backbone.pretrained is None  # the prior itself starts from random weights
    assert quickstart.codec == prior.codec
    assert quickstart.diffusion.min_snr_gamma == prior.diffusion.min_snr_gamma


def test_the_shipped_prior_loads_whole_and_says_how_it_was_made(monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipe's path is relative to the repository's root
    recipe = load_recipe("quickstart-from-prior-cpu")
    codec = load_codec(recipe.codec)
    backbone = backbone_from_recipe(recipe.backbone, in_channels=codec.channels)
    built = backbone.state_dict()
    with safe_open(PRIOR / "backbone" / "diffusion_pytorch_model.safetensors", "pt") as weights:
        names = list(weights.keys())
        assert len(names) > 100
        for name in names:  # the U-Net holds the prior's weights, not a random init
            assert torch.equal(built[f"model.{name}"], weights.get_tensor(name)), name
    made = json.loads((PRIOR / "PRIOR.json").read_text())
    assert "make_prior.py" in made["made_by"] and made["step"] > 0
    assert made["last_validation"]["val/psnr"] > 0


def test_shipped_weights_stay_under_20_mb():
    weights = [p for p in ROOT.glob("recipes/**/*") if p.suffix in (".safetensors", ".bin")]
    if not weights:
        pytest.fail("no shipped weights under recipes/")
    assert sum(p.stat().st_size for p in weights) <= MAX_SHIPPED_BYTES
