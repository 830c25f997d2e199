"""One layer syntax (`cameo_cli.layer_selection`) for `cameo train --layer`, `cameo diagnose
--layers` and the recipe's `alignment.layer`, and one message for a layer that does not
exist, whichever way it came in."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cameo_cli.cli import main
from cameo_cli.errors import CameoError
from cameo_cli.layer_selection import SYNTAX, LayerSelection, check_layer_range


@pytest.mark.parametrize(
    ("written", "numbers", "auto", "every", "value"),
    [
        (None, (), None, False, None),
        (10, (10,), None, False, 10),
        ([12, 10], (12, 10), None, False, [12, 10]),
        ("10", (10,), None, False, 10),
        ("3,8-10", (3, 8, 9, 10), None, False, [3, 8, 9, 10]),
        (" 6 , 8 ", (6, 8), None, False, [6, 8]),
        ("all", (), None, True, "all"),
        ("auto", (), 1, False, "auto"),
        ("auto:3", (), 3, False, "auto:3"),
    ],
)
def test_parse(written, numbers, auto, every, value):
    selection = LayerSelection.parse(written)
    assert (selection.numbers, selection.auto, selection.every) == (numbers, auto, every)
    assert selection.value == value
    assert LayerSelection.parse(selection.value) == selection  # what a recipe stores round-trips


@pytest.mark.parametrize(
    "written",
    ["three", "10,10", "8-10,9", "5-3", "-1", "auto:0", "auto:x", "all:2", [], [-2], True],
)
def test_parse_refuses(written):
    with pytest.raises(ValueError, match="expected|runs backwards"):
        LayerSelection.parse(written)


def test_resolve_against_a_backbone_of_16_layers():
    def recommended(count: int) -> list[int]:
        return [12, 10, 8][:count]

    def resolve(written):
        return LayerSelection.parse(written).resolve("cat3d", 16, 10, recommended)

    assert resolve(None) == [10]
    assert resolve("all") == list(range(16))
    assert resolve("auto:2") == [12, 10]
    assert resolve("3,8-10") == [3, 8, 9, 10]
    with pytest.raises(CameoError) as error:
        resolve("14-16")
    assert error.value.message == "layer 16 is outside backbone 'cat3d' (valid: 0-15), default 10"
    with pytest.raises(CameoError):
        check_layer_range(-1, "cat3d", 16, 10)


OUT_OF_RANGE = "layer 16 is outside backbone 'cat3d' (valid: 0-15), default 10"


def _train(*args: str):
    return CliRunner().invoke(main, ["train", "--recipe", *args])


def _diagnose(dataset: Path, out: Path, layers: str):
    args = ["--backbone", "cat3d", "--dataset", str(dataset), "--out", str(out)]
    return CliRunner().invoke(main, ["diagnose", *args, "--layers", layers])


def _recipe(tmp_path: Path, dataset: Path, layer: str) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"extends: quickstart-cpu\ndata:\n  dataset: {dataset}\nalignment:\n  layer: {layer}\n"
    )
    return str(path)


@pytest.mark.parametrize(
    ("layer", "message"),
    [("16", f"Error: {OUT_OF_RANGE}"), ("3,x", f"{SYNTAX}, got '3,x'")],
)
def test_the_same_bad_layer_gets_the_same_message_from_train_diagnose_and_a_recipe(
    layer: str, message: str, synthetic_dataset: Path, tmp_path: Path, monkeypatch
):
    monkeypatch.setenv("CAMEO_HOME", str(tmp_path / "home"))
    data = ["--dataset", str(synthetic_dataset)]
    results = {
        "train --layer": _train(
            "quickstart-cpu", *data, "--layer", layer, "--output", str(tmp_path / "r1")
        ),
        "diagnose --layers": _diagnose(synthetic_dataset, tmp_path / "d", layer),
        "recipe": _train(
            _recipe(tmp_path, synthetic_dataset, layer), "--output", str(tmp_path / "r2")
        ),
    }
    for where, result in results.items():
        assert result.exit_code == 2, (where, result.output)
        assert result.output.strip().splitlines()[-1].endswith(message), (where, result.output)
