"""`backbone.options`: each backbone's own options dataclass, checked like `alignment.options`,
and the one recipe-driven builder used by training, diagnose and the layer table."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from cameo_cli.config import load_recipe
from cameo_cli.diagnose.job import load_model
from cameo_cli.diagnose.request import DiagnoseRequest
from cameo_cli.errors import CameoError
from cameo_cli.train.setup import build_training_backbone

ARCHIVE = Path(__file__).parent / "data" / "run-and-export-main-94f680a.tar.xz"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_recipe_sets_mvgenmasters_prior_drop(tmp_path: Path):
    recipe_file = write(
        tmp_path / "r.yaml",
        "extends: quickstart-cpu\n"
        "backbone:\n  name: mvgenmaster\n  options:\n    prior_drop: 0.4\n"
        "    num_frequencies: 2\n",
    )
    recipe = load_recipe(recipe_file)
    assert recipe.backbone.options == {"prior_drop": 0.4, "num_frequencies": 2}
    backbone = build_training_backbone(recipe, in_channels=12)
    assert backbone.prior_drop == 0.4 and backbone.num_frequencies == 2
    assert backbone.position_channels() == 3 + 6 * 2 + 1  # the release's Fourier layout
    assert backbone.depth_mid_times == 4.0  # the default where the recipe is silent
    assert backbone.options["prior_drop"] == 0.4  # recorded for cameo_backbone.json


def test_a_wrong_backbone_option_gets_the_closest_name_with_file_and_line(tmp_path: Path):
    recipe_file = write(
        tmp_path / "r.yaml",
        "backbone:\n  name: mvgenmaster\n  options:\n    prior_dorp: 0.3\n",
    )
    with pytest.raises(CameoError) as error:
        load_recipe(recipe_file)
    assert str(error.value) == (
        f"{recipe_file}:4: unknown key 'backbone.options.prior_dorp' "
        "(did you mean 'backbone.options.prior_drop'?)"
    )
    with pytest.raises(CameoError, match=r"^--set backbone.options.view_postions=distinct: .*"):
        load_recipe(
            "quickstart-cpu",
            ["backbone.name=hunyuan-dit", "backbone.options.view_postions=distinct"],
        )
    with pytest.raises(CameoError, match=r"r2.yaml:4: backbone.options.prior_drop: expected"):
        load_recipe(
            write(
                tmp_path / "r2.yaml",
                "backbone:\n  name: mvgenmaster\n  options:\n    prior_drop: often\n",
            )
        )
    with pytest.raises(CameoError, match="is set by 'backbone.qk_norm'"):
        load_recipe("quickstart-cpu", ["backbone.options.qk_norm=false"])
    with pytest.raises(CameoError, match="moved to 'backbone.options.camera_encoder'"):
        load_recipe("quickstart-cpu", ["backbone.camera_encoder=official"])


def test_an_option_of_another_backbone_is_refused(tmp_path: Path):
    """Hunyuan-DiT has no camera_encoder: CAT3D's option is not valid for it."""
    with pytest.raises(CameoError, match="unknown key 'backbone.options.camera_encoder'"):
        load_recipe(
            "quickstart-cpu",
            ["backbone.name=hunyuan-dit", "backbone.options.camera_encoder=official"],
        )


def test_a_config_yaml_of_the_old_schema_moves_its_keys_into_options(tmp_path: Path):
    """main 94f680a wrote `camera_encoder`, `domain_embeddings` and `view_positions` at the
    top of `backbone:`; such a file (here the fixture's, with values set) still loads."""
    with tarfile.open(ARCHIVE, "r:xz") as archive:
        text = archive.extractfile("run/config.yaml").read().decode()
    assert "  camera_encoder: null\n  domain_embeddings: null\n" in text
    old = text.replace("camera_encoder: null", "camera_encoder: official").replace(
        "domain_embeddings: null", "domain_embeddings: 3"
    )
    recipe = load_recipe(write(tmp_path / "config.yaml", old))
    assert recipe.backbone.options == {"camera_encoder": "official", "domain_embeddings": 3}
    assert load_recipe(write(tmp_path / "nulls.yaml", text)).backbone.options == {}
    both = old.replace(
        "  domain_embeddings: 3\n", "  domain_embeddings: 3\n  options: {domain_embeddings: 2}\n"
    )
    with pytest.raises(CameoError, match="domain_embeddings: moved to 'backbone.options"):
        load_recipe(write(tmp_path / "both.yaml", both))


def test_diagnoses_fresh_model_gets_the_recipes_options(tmp_path: Path, synthetic_dataset):
    recipe_file = write(
        tmp_path / "r.yaml",
        "extends: quickstart-cpu\nbackbone:\n  qk_norm: false\n"
        "  options:\n    camera_encoder: official\n    domain_embeddings: 3\n",
    )
    request = DiagnoseRequest(
        backbone="cat3d", dataset=synthetic_dataset, out=None, recipe=str(recipe_file)
    )
    model = load_model(request, None, torch.device("cpu"))
    assert model.backbone.options["camera_encoder"] == "official"
    assert model.backbone.domain_embedding.num_embeddings == 3
    assert model.backbone.options["qk_norm"] is False and model.backbone.model_additions() == []


def test_checking_options_imports_no_torch():
    code = (
        "import sys; from cameo_cli.config import load_recipe; "
        "assert load_recipe('mvgenmaster-re10k').backbone.options['prior_drop'] == 0.15; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_backbones_list_names_each_backbones_options():
    import json

    from click.testing import CliRunner

    from cameo_cli.cli import main

    result = CliRunner().invoke(main, ["backbones", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    assert rows["mvgenmaster"]["options"] == [
        "qk_norm",
        "downsample",
        "camera_encoder",
        "domain_embeddings",
        "prior_drop",
        "num_frequencies",
        "depth_mid_times",
    ]
    assert rows["hunyuan-dit"]["options"] == ["qk_norm", "downsample", "view_positions"]
