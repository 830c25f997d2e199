"""`cameo recipes show NAME --memory`: training state counted by hand, ddp against fsdp, the
activation estimate on fake tensors against a real measurement, a full config on fake tensors
without allocating it."""

from __future__ import annotations

import resource

import torch
from click.testing import CliRunner
from torch import nn

from cameo_cli.cli import main
from cameo_cli.config import load_recipe
from cameo_cli.registry import build_backbone
from cameo_cli.train.memory import (
    activation_bytes,
    memory_plan,
    shard_numel,
    state_bytes,
    training_model,
)


def test_state_bytes_by_hand():
    layer = nn.Linear(10, 20)  # weight [20, 10] + bias [20] = 220 parameters
    state = state_bytes(list(layer.parameters()), processes=3, ema=True)
    assert state["ddp"] == {"weights": 880, "gradients": 880, "optimizer": 1760, "ema": 880}
    # fsdp over 3: ceil(20 / 3) = 7 rows of the weight (70) and 7 of the bias: 77 parameters
    assert state["fsdp"] == {"weights": 308, "gradients": 308, "optimizer": 616, "ema": 308}
    assert state_bytes(list(layer.parameters()), 1, ema=False)["fsdp"]["ema"] == 0
    assert shard_numel((), 4) == 1 and shard_numel((7, 3, 2), 2) == 24


def test_tiny_recipe_counts_the_backbone_and_the_head():
    recipe = load_recipe("quickstart-cpu")  # tiny cat3d, space_to_depth 2: 12 channels
    plan = memory_plan(recipe, processes=2)
    backbone = build_backbone("cat3d", "tiny", in_channels=12, qk_norm=True)
    heads = backbone.layers(recipe.data.resolution)[backbone.default_layer].heads
    head = heads * 4 * heads + 4 * heads + 4 * heads + 1  # Linear(H, 4H) + Linear(4H, 1)
    assert plan.trainable == sum(p.numel() for p in backbone.parameters()) + head
    ddp, fsdp = plan.state["ddp"], plan.state["fsdp"]
    assert ddp["weights"] == 4 * plan.trainable and ddp["optimizer"] == 8 * plan.trainable
    assert ddp["ema"] == 0 and plan.frozen == 0 and plan.activations_how == "measured"
    assert 0.5 <= fsdp["weights"] / ddp["weights"] < 0.51  # halved, up to dim-0 padding
    assert plan.per_device_batch == recipe.train.batch_size // 2


def test_the_fake_estimate_bounds_the_real_measurement():
    recipe = load_recipe("quickstart-cpu")
    torch.manual_seed(0)
    measured = activation_bytes(recipe, training_model(recipe, 12, "cpu"), 1, 12, 2, False)
    estimated = activation_bytes(recipe, training_model(recipe, 12, "meta"), 1, 12, 2, True)
    # every correspondence row kept: an upper bound, close to the measured peak
    assert measured <= estimated <= 1.1 * measured
    assert measured > 12 * 16 * 16 * 4 * 4  # at least the input's latents' worth per view


def test_a_full_config_is_estimated_without_allocating_it():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    plan = memory_plan(load_recipe("cat3d-re10k"), processes=2)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert plan.trainable > 800_000_000 and plan.activations_how == "estimated"
    assert plan.frozen == 83_653_863 * 4  # SD2.1's VAE (published count), fp32
    assert grown < plan.state["ddp"]["weights"] / 2  # the 3.3 GB of weights never existed
    assert plan.activations > plan.state["ddp"]["weights"]  # 3 samples x 4 views at 512 px


def test_the_cli_prints_the_table():
    result = CliRunner().invoke(
        main, ["recipes", "show", "quickstart-cpu", "--memory", "--processes", "4"]
    )
    assert result.exit_code == 0, result.output
    assert "fsdp" in result.output and "activations" in result.output
    bad = CliRunner().invoke(
        main, ["recipes", "show", "quickstart-cpu", "--memory"] + ["--processes", "3"]
    )
    assert bad.exit_code == 2 and "does not split evenly" in bad.output
