"""Recipes: YAML into dataclasses, overrides, errors, the shipped recipes and `cameo recipes`."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import click
import pytest
import rich
import yaml
from click.testing import CliRunner

from cameo_cli.cli import main
from cameo_cli.config import (
    Recipe,
    apply_override,
    dump_recipe,
    find_recipe,
    list_recipes,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
)
from cameo_cli.errors import CameoError

SHIPPED = {
    "cat3d-re10k",
    "cat3d-re10k-baseline",
    "cat3d-re10k-geometry-forcing",
    "cat3d-re10k-repa",
    "mvgenmaster-re10k",
    "hunyuan-dit-re10k",
    "quickstart-cpu",
    "quickstart-from-prior-cpu",
    "sanity-one-scene",
    "prior-cpu",
}
# the small-scale reproduction (benchmarks/reproduction.py): each changes one setting of
# repro-cpu-cameo, which is the quick start validated every 50 steps
REPRODUCTION = {
    "repro-cpu-baseline": "alignment.method=none",
    "repro-cpu-cameo-joint": "alignment.targets=joint",
    "repro-cpu-layer2": "alignment.layer=2",
    "repro-cpu-layer6": "alignment.layer=6",
    "repro-cpu-no-head": "alignment.head=none",
    "repro-cpu-monotone-head": "alignment.head=monotone",
    "repro-cpu-l1": "alignment.loss=l1",
    "repro-cpu-no-mask": "alignment.epsilon=.inf",
}
SHIPPED |= {"repro-cpu-cameo", *REPRODUCTION}
PAPER = {"cat3d-re10k": 10, "mvgenmaster-re10k": 10, "hunyuan-dit-re10k": 32}


def write(tmp_path: Path, text: str, name: str = "recipe.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(call) -> str:
    with pytest.raises(CameoError) as info:
        call()
    message = info.value.message
    assert "\n" not in message
    return message


# ------------------------------------------------------------------ shipped recipes


def test_every_shipped_recipe_is_listed_with_a_description_and_loads():
    listed = dict(list_recipes())
    assert SHIPPED <= set(listed)
    for name in listed:
        assert listed[name], f"{name} has no leading '# ' description line"
        assert isinstance(load_recipe(name), Recipe)
        assert load_recipe(str(find_recipe(name))) == load_recipe(name)
        assert find_recipe(name + ".yaml") == find_recipe(name)


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_recipes_hold_the_papers_numbers(name):
    recipe = load_recipe(name)
    assert recipe.backbone.name == name.removesuffix("-re10k")
    assert recipe.backbone.variant == "full"
    assert recipe.backbone.pretrained and not Path(recipe.backbone.pretrained).is_absolute()
    assert recipe.codec.kind == "vae" and recipe.codec.path
    al, tr, da, sa = recipe.alignment, recipe.train, recipe.data, recipe.sample
    assert (al.method, al.layer, al.weight, al.epsilon) == ("cameo", PAPER[name], 0.02, 1.5)
    assert (al.loss, al.head) == ("ce", "mlp")
    assert (tr.learning_rate, tr.weight_decay, tr.warmup_steps, tr.grad_clip) == (
        2.5e-5,
        0.01,
        500,
        1.0,
    )
    assert (tr.batch_size, tr.mixed_precision, tr.camera_drop) == (6, "bf16", 0.1)
    assert (da.resolution, da.num_views, da.min_refs, da.max_refs) == (512, 4, 1, 3)
    assert (sa.steps, sa.guidance) == (50, 2.0)
    assert recipe.diffusion.prediction == "v_prediction"
    assert recipe.diffusion.beta_schedule == "scaled_linear"
    assert recipe.evaluate.metrics == ["psnr", "ssim", "lpips"]


def test_unet_recipes_use_the_sd21_vae_and_the_baseline_differs_only_in_alignment():
    for name in ("cat3d-re10k", "mvgenmaster-re10k"):
        recipe = load_recipe(name)
        assert recipe.codec.path == "weights/stable-diffusion-2-1/vae"
        assert recipe.backbone.pretrained == "weights/stable-diffusion-2-1/unet"
        assert recipe.codec.scaling_factor == 0.18215
    baseline = load_recipe("cat3d-re10k-baseline")
    assert baseline.alignment.method == "none"
    assert baseline == load_recipe("cat3d-re10k", ["alignment.method=none"])
    repa = load_recipe("cat3d-re10k-repa")
    options = "{teacher: weights/dinov2-base, teacher_resolution: 448, projector_dim: 2048}"
    overrides = ["alignment.method=repa", "alignment.weight=0.5", f"alignment.options={options}"]
    assert repa == load_recipe("cat3d-re10k", overrides)
    geometry_forcing = load_recipe("cat3d-re10k-geometry-forcing")
    options = (
        "{teacher: weights/vggt-1b, teacher_resolution: 448, teacher_layer: -1, "
        "projector_dim: 2048, scale_dim: 2048}"
    )
    overrides = [
        "alignment.method=geometry-forcing",
        "alignment.weight=0.5",
        f"alignment.options={options}",
    ]
    assert geometry_forcing == load_recipe("cat3d-re10k", overrides)


def test_quickstart_recipe_is_tiny_pixel_space_and_cpu_friendly():
    recipe = load_recipe("quickstart-cpu")
    assert (recipe.backbone.name, recipe.backbone.variant) == ("cat3d", "tiny")
    assert recipe.backbone.pretrained is None
    assert (recipe.codec.kind, recipe.codec.factor) == ("space_to_depth", 2)
    assert recipe.data.dataset == "data/synthetic"
    assert (recipe.data.resolution, recipe.data.num_views, recipe.train.batch_size) == (32, 4, 8)
    assert recipe.train.mixed_precision == "no"
    assert recipe.train.steps <= 1000
    assert recipe.train.checkpoint_every <= recipe.train.steps
    assert "lpips" not in recipe.evaluate.metrics
    assert recipe.alignment.method == "cameo"


# ------------------------------------------------------------------ round trip and types


def test_round_trip_load_override_dump_load(tmp_path):
    overrides = [
        "alignment.weight=0.05",
        "alignment.epsilon=inf",
        "alignment.layer=auto",
        "data.frame_gap=[2, 16]",
        "evaluate.metrics=psnr,ssim",
        "train.learning_rate=1e-4",
        "backbone.pretrained=null",
    ]
    for name in sorted(SHIPPED):
        recipe = load_recipe(name, overrides)
        out = tmp_path / name / "config.yaml"
        dump_recipe(recipe, out)
        assert load_recipe(out) == recipe
        assert recipe_from_dict(recipe_to_dict(recipe)) == recipe
        assert [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp files left
    assert recipe.alignment.epsilon == math.inf and recipe.alignment.layer == "auto"
    assert recipe.data.frame_gap == (2, 16) and recipe.evaluate.metrics == ["psnr", "ssim"]
    assert recipe.train.learning_rate == 1e-4 and recipe.backbone.pretrained is None


def test_dump_replaces_an_existing_file(tmp_path):
    out = write(tmp_path, "stale: true\n", "config.yaml")
    dump_recipe(Recipe(), out)
    assert load_recipe(out) == Recipe()


def test_partial_recipe_keeps_the_defaults(tmp_path):
    path = write(tmp_path, "alignment:\n  weight: 0.1\ntrain: {steps: 7}\n")
    recipe = load_recipe(path)
    assert recipe.alignment.weight == 0.1 and recipe.train.steps == 7
    expected = Recipe()
    expected.alignment.weight, expected.train.steps = 0.1, 7
    assert recipe == expected
    assert load_recipe(write(tmp_path, "", "empty.yaml")) == Recipe()


def test_yaml_values_are_read_as_their_field_types(tmp_path):
    text = (
        "train: {mixed_precision: no, learning_rate: 1e-4, grad_clip: 2}\n"
        "alignment: {epsilon: .inf}\n"
        "data: {frame_gap: [3, 9]}\n"
    )
    recipe = load_recipe(write(tmp_path, text))
    assert recipe.train.mixed_precision == "no"  # YAML 1.1 would read `no` as false
    assert recipe.train.learning_rate == 1e-4  # YAML 1.1 would read 1e-4 as a string
    assert recipe.train.grad_clip == 2.0 and isinstance(recipe.train.grad_clip, float)
    assert recipe.alignment.epsilon == math.inf
    assert recipe.data.frame_gap == (3, 9)


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("alignment.layer=7", 7),
        ("alignment.layer=auto", "auto"),
        ("alignment.layer=null", None),
        ("alignment.epsilon=.inf", math.inf),
        ("alignment.epsilon=inf", math.inf),
        ("alignment.epsilon=2", 2.0),
        ("train.mixed_precision=no", "no"),
        ("train.ema=true", True),
        ("data.dataset=2024", "2024"),
        ("data.frame_gap=1,8", (1, 8)),
        ("evaluate.metrics=[psnr]", ["psnr"]),
    ],
)
def test_overrides_are_converted_to_the_field_type(override, expected):
    section, rest = override.split(".", 1)
    key = rest.split("=", 1)[0]
    recipe = apply_override(Recipe(), override)
    assert getattr(getattr(recipe, section), key) == expected


def test_a_mapping_override_merges_into_its_section():
    recipe = load_recipe("cat3d-re10k", ["alignment={weight: 0.1, loss: l1}"])
    expected = load_recipe("cat3d-re10k", ["alignment.weight=0.1", "alignment.loss=l1"])
    assert recipe == expected and recipe.alignment.layer == 10


def test_overrides_are_validated_together_not_one_by_one():
    recipe = load_recipe("quickstart-cpu", ["data.num_views=2", "data.max_refs=1"])
    assert (recipe.data.num_views, recipe.data.max_refs) == (2, 1)


def test_dump_writes_a_comment_header(tmp_path):
    out = tmp_path / "config.yaml"
    dump_recipe(Recipe(), out, comment="resolved from quickstart-cpu\ncameo 0.1.0")
    assert out.read_text().startswith("# resolved from quickstart-cpu\n# cameo 0.1.0\n\n")
    assert load_recipe(out) == Recipe()


def test_a_recipes_folder_path_finds_the_shipped_recipe_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_recipe("recipes/cat3d-re10k.yaml") == load_recipe("cat3d-re10k")
    assert load_recipe("cat3d-re10k.yaml") == load_recipe("cat3d-re10k")
    own = write(tmp_path, "train: {steps: 3}\n", "cat3d-re10k.yaml")
    assert load_recipe("cat3d-re10k.yaml").train.steps == 3  # an existing file wins
    own.unlink()
    message = error_of(lambda: load_recipe("elsewhere/cat3d-re10k.yaml"))
    assert message == "elsewhere/cat3d-re10k.yaml: recipe file not found"


def test_override_leaves_the_input_recipe_unchanged():
    recipe = Recipe()
    apply_override(recipe, "train.steps=5")
    assert recipe == Recipe()


def test_reproduction_recipes_change_one_setting_of_the_quick_start():
    cameo = load_recipe("repro-cpu-cameo")
    schedule = ["train.steps=800", "train.validate_every=50", "train.checkpoint_every=100"]
    schedule += ["train.keep_checkpoints=8", "train.trackers=[]"]
    assert cameo == load_recipe("quickstart-cpu", schedule)
    for name, change in REPRODUCTION.items():
        assert load_recipe(name) == load_recipe("repro-cpu-cameo", [change]), name
        assert load_recipe(name) != cameo


# ------------------------------------------------------------------ extends


def test_extends_merges_the_parent_beneath_section_by_section(tmp_path):
    write(tmp_path, "train:\n  steps: 10\n  batch_size: 3\nalignment: {weight: 0.5}\n", "base.yaml")
    child = write(tmp_path, "extends: base.yaml\ntrain:\n  steps: 20\nalignment: {loss: l1}\n")
    recipe = load_recipe(child)
    assert (recipe.train.steps, recipe.train.batch_size) == (20, 3)
    assert (recipe.alignment.weight, recipe.alignment.loss) == (0.5, "l1")
    grandchild = write(tmp_path, "extends: recipe.yaml\ntrain: {batch_size: 5}\n", "leaf.yaml")
    assert load_recipe(grandchild) == load_recipe(child, ["train.batch_size=5"])
    by_name = write(tmp_path, "extends: quickstart-cpu\nalignment: {method: none}\n")
    assert load_recipe(by_name) == load_recipe("quickstart-cpu", ["alignment.method=none"])
    dumped = tmp_path / "dumped.yaml"
    dump_recipe(load_recipe(by_name), dumped)  # a run's config.yaml is whole, no `extends`
    assert "extends" not in dumped.read_text() and load_recipe(dumped) == load_recipe(by_name)


def test_extends_errors_name_the_file_and_line(tmp_path):
    a = write(tmp_path, "extends: b.yaml\n", "a.yaml")
    b = write(tmp_path, "train: {steps: 3}\nextends: a.yaml\n", "b.yaml")
    assert error_of(lambda: load_recipe(b)) == (
        f"{a}:1: extends: 'b.yaml' extends this recipe again (a loop)"
    )
    message = error_of(lambda: load_recipe(write(tmp_path, "extends: quickstart-cpuu\n")))
    assert message.startswith("unknown recipe 'quickstart-cpuu' (did you mean 'quickstart-cpu'?)")
    path = write(tmp_path, "extends: 3\n")
    assert error_of(lambda: load_recipe(path)) == (
        f"{path}:1: extends: expected a recipe name or path, got int 3"
    )
    path = write(tmp_path, "extends: quickstart-cpu\n\nalignment:\n  wieght: 0.1\n")
    assert error_of(lambda: load_recipe(path)) == (
        f"{path}:4: unknown key 'alignment.wieght' (did you mean 'alignment.weight'?)"
    )


# ------------------------------------------------------------------ errors


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\n  lr: [1, 2\nsample: {}\n")
    message = error_of(lambda: load_recipe(path))
    assert message.startswith(f"{path}:4: malformed YAML: expected ',' or ']'")
    assert message.endswith("(while parsing a flow sequence on line 3)")


def test_unknown_key_names_path_line_and_closest_key(tmp_path):
    path = write(tmp_path, "train:\n  steps: 3\nalignment:\n  wieght: 0.1\n")
    message = error_of(lambda: load_recipe(path))
    assert message == f"{path}:4: unknown key 'alignment.wieght' (did you mean 'alignment.weight'?)"
    message = error_of(lambda: load_recipe(write(tmp_path, "trian: {}\n")))
    assert "unknown key 'trian' (did you mean 'train'?)" in message
    message = error_of(lambda: load_recipe(write(tmp_path, "train: {zzz: 1}\n")))
    assert "unknown key 'train.zzz' (valid keys: train.steps, train.batch_size," in message


def assert_load_error(tmp_path, text: str, expected: str) -> None:
    """Loading a recipe file of `text` fails with a message naming the file and `expected`."""
    path = write(tmp_path, text)
    message = error_of(lambda: load_recipe(path))
    assert message.startswith(str(path)) and expected in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  steps: many\n", ":2: train.steps: expected int, got str 'many'"),
        ("train:\n  steps: 2.5\n", ":2: train.steps: expected int, got float 2.5"),
        ("train: {ema: 1}\n", ":1: train.ema: expected bool, got int 1"),
        ("data: {frame_gap: [1, 2, 3]}\n", "data.frame_gap: expected a list of 2 int, got a list"),
        ("data: {frame_gap: [1, x]}\n", "data.frame_gap[1]: expected int, got str 'x'"),
        (
            "alignment: {layer: 1.5}\n",
            "alignment.layer: expected int or a list of int or str or null, got float",
        ),
        (
            "alignment: {layer: deep}\n",
            "alignment.layer: expected a layer number >= 0, a list of them or ranges (3,8-10) "
            "without repeats, 'all', 'auto', 'auto:K' (K >= 1) or null (the backbone's default), "
            "got 'deep'",
        ),
        ("alignment: {loss: mse}\n", "alignment.loss: expected one of ce, l1, got 'mse'"),
        ("train: 3\n", ":1: train: expected a mapping, got int 3"),
        ("sample: {steps: null}\n", "sample.steps: expected int, got null"),
        ("evaluate: {metrics: psnr}\n", "evaluate.metrics: expected a list of str, got str"),
    ],
)
def test_wrong_types_name_file_line_path_expected_and_got(tmp_path, text, expected):
    assert_load_error(tmp_path, text, expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  steps: 0\n", ":2: train.steps: must be >= 1, got 0"),
        ("train: {learning_rate: 0}\n", ":1: train.learning_rate: must be > 0, got 0.0"),
        ("train: {camera_drop: 1.5}\n", "train.camera_drop: must be between 0 and 1, got 1.5"),
        ("alignment: {epsilon: -1}\n", "alignment.epsilon: must be > 0, got -1.0"),
        (
            "alignment: {layer: -2}\n",
            "alignment.layer: expected a layer number >= 0, a list of them or ranges (3,8-10) "
            "without repeats, 'all', 'auto', 'auto:K' (K >= 1) or null (the backbone's default), "
            "got -2",
        ),
        ("data: {min_refs: 3, max_refs: 2}\n", ":1: data.max_refs: must be >= data.min_refs"),
        ("data: {num_views: 3}\n", "data.max_refs: must be < data.num_views (keep a target)"),
        ("data: {frame_gap: [9, 2]}\n", "data.frame_gap: must be [low, high] with 0 <= low"),
        ("diffusion: {beta_end: 0.0001}\n", "diffusion.beta_end: must be > diffusion.beta_start"),
    ],
)
def test_out_of_range_values_are_errors(tmp_path, text, expected):
    assert_load_error(tmp_path, text, expected)
    with pytest.raises(CameoError):
        recipe_from_dict(yaml.safe_load(text))


def test_out_of_range_override_names_the_override():
    message = error_of(lambda: load_recipe("quickstart-cpu", ["train.batch_size=0"]))
    assert message == "--set train.batch_size=0: must be >= 1, got 0"
    message = error_of(lambda: load_recipe("quickstart-cpu", ["data={num_views: 3}"]))
    assert message.startswith("--set data={num_views: 3}: data.max_refs: must be <")


def test_other_bad_files(tmp_path):
    assert error_of(lambda: load_recipe(tmp_path / "missing.yaml")).endswith("not found")
    assert "is a directory" in error_of(lambda: load_recipe(str(tmp_path) + "/"))
    top = error_of(lambda: load_recipe(write(tmp_path, "- a\n- b\n")))
    assert "a recipe must be a YAML mapping" in top
    duplicate = error_of(lambda: load_recipe(write(tmp_path, "train: {}\nsample: {}\ntrain: {}\n")))
    assert duplicate.endswith(":3: duplicate key 'train' (first on line 1)")


def test_unknown_recipe_name_lists_the_known_ones():
    message = error_of(lambda: load_recipe("cat3d"))
    assert message.startswith("unknown recipe 'cat3d' (did you mean 'cat3d-re10k'?)")
    for name in SHIPPED:
        assert name in message


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "alignment.weight=abc",
            "--set alignment.weight=abc: expected float or a list of float, got str",
        ),
        ("train.steps=1.5", "--set train.steps=1.5: expected int, got float 1.5"),
        ("train.steps=null", "--set train.steps=null: expected int, got null"),
        ("train.ema=yes", "--set train.ema=yes: expected bool, got str 'yes'"),
        (
            "alignment.layer=true",
            "--set alignment.layer=true: expected int or a list of int or str or null",
        ),
        ("data.frame_gap=1,x", "--set data.frame_gap=1,x: data.frame_gap[1]: expected int, got"),
        ("train=3", "--set train=3: expected a mapping, got int 3"),
        ("train.steps.x=1", "--set train.steps.x=1: train.steps: is int, it has no keys"),
        ("alignment.wieght=1", "unknown key 'alignment.wieght' (did you mean 'alignment.weight'?)"),
        ("train.steps", "--set train.steps: expected KEY=VALUE"),
        ("train.steps=[1", "--set train.steps=[1: malformed YAML value"),
        ("data.frame_gap=1,[", "--set data.frame_gap=1,[: malformed YAML value"),
    ],
)
def test_bad_overrides(override, expected):
    message = error_of(lambda: load_recipe("quickstart-cpu", [override]))
    assert expected in message


def test_the_prior_is_made_without_cameo_and_the_sanity_run_validates_on_its_scene():
    prior, quickstart = load_recipe("prior-cpu"), load_recipe("quickstart-cpu")
    assert prior.alignment.method == "none" and quickstart.alignment.method == "cameo"
    assert prior.backbone == quickstart.backbone and prior.codec == quickstart.codec
    assert prior.train.ema
    sanity = load_recipe("sanity-one-scene")
    assert sanity.data.validation == "train"  # one scene: the known answer is the scene itself
    assert (sanity.data.min_refs, sanity.data.max_refs, sanity.data.order) == (2, 2, "even")


# ------------------------------------------------------------------ CLI


def test_cli_recipes_list_and_show():
    runner = CliRunner()
    listed = runner.invoke(main, ["recipes", "list"], terminal_width=200)
    assert listed.exit_code == 0, listed.output
    for name in SHIPPED:
        assert name in listed.output
    shown = runner.invoke(main, ["recipes", "show", "quickstart-cpu", "--set", "train.steps=9"])
    assert shown.exit_code == 0, shown.output
    recipe = recipe_from_dict(yaml.safe_load(shown.output))
    assert recipe == load_recipe("quickstart-cpu", ["train.steps=9"])


@pytest.mark.parametrize(
    ("text", "args", "expected"),
    [
        ("train: [1\n", [], ":2: malformed YAML: expected ',' or ']'"),
        ("alignment: {wieght: 1}\n", [], "unknown key 'alignment.wieght' (did you mean"),
        ("train: {steps: x}\n", [], "train.steps: expected int, got str 'x'"),
        ("", ["--set", "train.steps=x"], "--set train.steps=x: expected int, got str 'x'"),
    ],
)
def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, text, args, expected):
    path = write(tmp_path, text)
    result = CliRunner().invoke(main, ["recipes", "show", str(path), *args])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert expected in result.output


def test_cli_unknown_recipe_exits_2():
    result = CliRunner().invoke(main, ["recipes", "show", "no-such-recipe"])
    assert result.exit_code == 2
    assert "unknown recipe 'no-such-recipe'" in result.output and "quickstart-cpu" in result.output


def test_recipes_command_does_not_import_torch():
    code = (
        "import sys; from click.testing import CliRunner; from cameo_cli.cli import main; "
        "r = CliRunner().invoke(main, ['recipes', 'list']); assert r.exit_code == 0, r.output; "
        "r = CliRunner().invoke(main, ['recipes', 'show', 'cat3d-re10k']); "
        "assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


PLUGIN_FOLDERS = ("backbones", "alignments", "recipes")  # installed as cameo.<folder>


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("setuptools") is None, reason="an offline build needs setuptools"
)
def test_a_non_editable_install_ships_the_recipes(tmp_path):
    """...under cameo's namespace: backbones/, alignments/ and recipes/ install as
    `cameo.backbones`, `cameo.alignments`, `cameo.recipes`, and every cameo_cli module ships
    (pyproject lists the packages)."""
    repo = Path(__file__).resolve().parents[1]
    source = tmp_path / "source"
    for folder in ("cameo_cli", *PLUGIN_FOLDERS):
        shutil.copytree(
            repo / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(repo / name, source / name)
    target = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "--no-index", "--target", str(target), str(source)], check=True)
    assert sorted(p.name for p in (target / "cameo" / "recipes").glob("*.yaml")) == sorted(
        f"{name}.yaml" for name in SHIPPED
    )
    assert not any((target / folder).exists() for folder in PLUGIN_FOLDERS)
    shipped = {p.relative_to(target).as_posix() for p in (target / "cameo_cli").rglob("*.py")}
    assert shipped == {p.relative_to(repo).as_posix() for p in (repo / "cameo_cli").rglob("*.py")}
    (entry_points,) = target.glob("cameo-*.dist-info/entry_points.txt")
    assert "= backbones:" not in entry_points.read_text()
    assert "cat3d = cameo.backbones:CAT3D" in entry_points.read_text()
    # -S: no site-packages .pth files, so an editable cameo cannot answer instead.
    dependencies = {str(Path(m.__file__).parents[1]) for m in (click, rich, yaml)}
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(target), *dependencies])}
    code = (
        "import sys; from cameo_cli import config; target = sys.argv[1]; "
        "assert config.__file__.startswith(target), config.__file__; "
        "assert str(config.find_recipe('quickstart-cpu')).startswith(target); "
        "from importlib.util import find_spec; "
        "assert [find_spec(n) for n in ('backbones', 'alignments', 'recipes')] == [None] * 3; "
        "assert find_spec('cameo.alignments').origin.startswith(target); "
        "print(len(config.list_recipes()), config.load_recipe('cat3d-re10k').alignment.layer)"
    )
    result = subprocess.run(
        [sys.executable, "-S", "-c", code, str(target)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [str(len(SHIPPED)), "10"]


def test_the_editable_install_takes_no_generic_top_level_name(tmp_path):
    """From a folder outside the checkout, this environment's (editable) install answers
    `cameo.backbones` etc. from the checkout's folders, and nothing for the bare names; the
    built-in entry points load."""
    repo = Path(__file__).resolve().parents[1]
    code = (
        "import json; from importlib.util import find_spec; "
        "from importlib.metadata import entry_points; "
        "names = ('backbones', 'alignments', 'recipes'); "
        "print(json.dumps({'bare': [find_spec(n) is None for n in names], "
        "'folders': [find_spec('cameo.' + n).submodule_search_locations[0] for n in names], "
        "'loaded': sorted(ep.load().name for group in ('cameo.backbones', 'cameo.alignments') "
        "for ep in entry_points(group=group) if ep.value.startswith('cameo.'))}))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    found = json.loads(out.stdout)
    assert found["bare"] == [True, True, True]
    assert found["folders"] == [str(repo / folder) for folder in PLUGIN_FOLDERS]
    expected = ["cameo", "cat3d", "geometry-forcing", "hunyuan-dit", "mvgenmaster", "none", "repa"]
    assert found["loaded"] == expected
