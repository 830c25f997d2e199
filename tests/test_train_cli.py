"""`cameo train` on bad input: one-line errors with exit code 2, before any training."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cameo_cli.cli import main


def _train(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def _assert_error(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_unknown_backbone(tmp_path):
    result = _train("--backbone", "no-such-net", "--output", str(tmp_path / "run"))
    _assert_error(result, "unknown backbone 'no-such-net'", "cat3d")


def test_layer_out_of_range_for_the_full_config_fails_before_building(tmp_path):
    result = _train("--backbone", "hunyuan-dit", "--layer", "40", "--output", str(tmp_path / "r"))
    _assert_error(result, "layer 40 is outside backbone 'hunyuan-dit'", "0-39")


def test_layer_out_of_range_for_the_tiny_config(synthetic_dataset, tmp_path):
    args = ["--recipe", "quickstart-cpu", "--dataset", str(synthetic_dataset), "--layer", "16"]
    result = _train(*args, "--output", str(tmp_path / "run"))
    _assert_error(result, "layer 16 is outside backbone 'cat3d'", "valid: 0-15")
    assert not (tmp_path / "run").exists()


def test_paper_command_without_a_dataset_says_what_is_missing(tmp_path, monkeypatch):
    # The user's brief: `cameo train --backbone hunyuan-dit --layer 32` (paper recipe).
    monkeypatch.chdir(tmp_path)
    result = _train("--backbone", "hunyuan-dit", "--layer", "32")
    _assert_error(result, "data/re10k", "cameo prepare")


def test_dataset_without_geometry_with_cameo(tmp_path):
    from rich.console import Console

    from cameo_cli.data.shards import prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource

    dataset = tmp_path / "flat"
    source = SyntheticSource(scenes=1, resolution=32, frames=4, seed=0, geometry="none")
    prepare_dataset(source, dataset, scenes_per_shard=1, console=Console(quiet=True))
    args = ["--recipe", "quickstart-cpu", "--dataset", str(dataset)]
    result = _train(*args, "--output", str(tmp_path / "run"))
    _assert_error(result, "no point maps", "cameo prepare synthetic", "--align none")


def test_existing_output_needs_overwrite_or_resume(synthetic_dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("keep me\n")
    args = ["--recipe", "quickstart-cpu", "--dataset", str(synthetic_dataset)]
    result = _train(*args, "--output", str(run))
    _assert_error(result, "exists", "--overwrite", "--resume")
    assert (run / "config.yaml").read_text() == "keep me\n"
    _assert_error(_train("--output", str(run), "--resume", "latest"), "with checkpoints")


@pytest.mark.parametrize("layer", ["x", "1.5"])
def test_layer_must_be_a_number_or_auto(layer):
    result = _train("--layer", layer)
    assert (
        result.exit_code == 2
        and "a layer number >= 0, a list of them or ranges (3,8-10)" in result.output
    )


def test_layer_auto_reads_the_diagnose_recommendation(tmp_path, monkeypatch):
    from cameo_cli.config import load_recipe
    from cameo_cli.errors import CameoError
    from cameo_cli.layers import write_recommended_layer
    from cameo_cli.registry import build_backbone
    from cameo_cli.train.plan import resolve_layer

    monkeypatch.setenv("CAMEO_HOME", str(tmp_path))
    recipe = load_recipe("quickstart-cpu", ["alignment.layer=auto"])
    backbone = build_backbone("cat3d", "tiny", in_channels=3)
    with pytest.raises(CameoError, match="run cameo diagnose"):
        resolve_layer(recipe, backbone)
    write_recommended_layer("cat3d", "tiny", {"layer": 12})
    assert resolve_layer(recipe, backbone) == 12
    write_recommended_layer("cat3d", "tiny", {"layer": 0})  # a per-view layer
    with pytest.raises(CameoError, match="attends within each view only"):
        resolve_layer(recipe, backbone)
    top = [{"layer": 12}, {"layer": 10}, {"layer": 8}]
    write_recommended_layer("cat3d", "tiny", {"layer": 12, "top": top})
    two = load_recipe("quickstart-cpu", ["alignment.layer=auto:2"])
    assert resolve_layer(two, backbone) == [12, 10]
    assert resolve_layer(recipe, backbone) == 12


@pytest.mark.parametrize("choice", ["auto:0", "auto:x", "autox", "best"])
def test_layer_auto_k_is_checked(choice, tmp_path):
    from cameo_cli.config import load_recipe
    from cameo_cli.errors import CameoError

    with pytest.raises(CameoError, match="'auto', 'auto:K' .K >= 1. or null"):
        load_recipe("quickstart-cpu", [f"alignment.layer={choice}"])
    result = _train("--recipe", "quickstart-cpu", "--layer", choice, "--output", str(tmp_path))
    assert result.exit_code == 2, result.output


def test_latent_caching_is_refused_not_ignored(synthetic_dataset, tmp_path):
    args = ["--recipe", "quickstart-cpu", "--dataset", str(synthetic_dataset)]
    result = _train(*args, "--set", "codec.cache_latents=true", "--output", str(tmp_path / "r"))
    _assert_error(result, "codec.cache_latents")
