"""Geometry Forcing with the stand-in VGGT (`tests/vggt_standin.py`) loaded through the real
loading code: the two terms and their gradients against a float64 reference, the teacher's
features, one-line errors, and 2 steps of `cameo train --align geometry-forcing` that
checkpoint, resume bit-identically and evaluate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file

from cameo_cli.alignment.method import AlignmentInputs
from cameo_cli.cli import main
from cameo_cli.config import load_recipe
from cameo_cli.errors import CameoError
from tests import vggt_standin
from tests.teachers import evaluate_cli, planned_teacher, teacher_recipe

DIM = 2 * vggt_standin.EMBED  # frame and global attention features, concatenated
BLOCK = "up_blocks.2.attentions.0"  # tiny cat3d: 64 channels, 16x16 tokens at 32 px


@pytest.fixture(scope="module")
def vggt_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("vggt") / "model.safetensors"
    vggt_standin.save_weights(path)
    return path


@pytest.fixture
def standin(monkeypatch):
    return vggt_standin.install(monkeypatch)


def _recipe(teacher: Path, *overrides: str):
    return teacher_recipe("geometry-forcing", teacher, *overrides)


def _planned(teacher: Path, *overrides: str):
    return planned_teacher("geometry-forcing", teacher, *overrides)


def test_options_are_resolved_and_pinned(vggt_weights, standin):
    _, plan = _planned(vggt_weights)
    options = plan.recipe.alignment.options
    assert options["block"] == BLOCK
    assert options["teacher_resolution"] == 32 and options["teacher_patch"] == vggt_standin.PATCH
    assert (options["student_dim"], options["teacher_dim"]) == (64, DIM)
    assert options["teacher_layer"] == vggt_standin.LAYERS - 1  # -1 pinned as the last layer
    assert plan.needs_geometry is False


def test_terms_and_gradients_equal_a_float64_reference(vggt_weights, standin):
    overrides = ("alignment.options.projector_dim=8", "alignment.options.scale_dim=5")
    backbone, plan = _planned(vggt_weights, *overrides)
    method = plan.method.build(plan.recipe, backbone).double()
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2 * 3, 64, 16, 16, generator=generator, dtype=torch.float64)
    teacher = 3 * torch.randn(2, 3, 256, DIM, generator=generator, dtype=torch.float64)
    inputs = AlignmentInputs(
        torch.zeros(2, 3, dtype=torch.bool), {}, {BLOCK: hidden}, teacher=teacher
    )
    output = method(inputs)
    # reference from the formulas: tokens row-major, REPA's MLP (SiLU); angular = mean over
    # tokens of -cos; scale = mean squared error of ReLU-MLP(p / |p|) to the raw features
    params = [p.detach().clone().requires_grad_(True) for p in method.parameters()]
    w1, b1, w2, b2, w3, b3, s1, c1, s2, c2 = params
    tokens = hidden.reshape(2, 3, 64, 256).permute(0, 1, 3, 2)

    def silu(x):
        return x / (1 + torch.exp(-x))

    projected = silu(silu(tokens @ w1.T + b1) @ w2.T + b2) @ w3.T + b3
    norm = (projected * projected).sum(-1, keepdim=True).sqrt()
    cos = (projected * teacher).sum(-1) / (norm[..., 0] * teacher.norm(dim=-1))
    angular = -cos.sum() / cos.numel()
    rescaled = torch.clamp(projected / norm @ s1.T + c1, min=0) @ s2.T + c2
    scale = ((rescaled - teacher) ** 2).sum() / teacher.numel()
    for name, reference in (("angular", angular), ("scale", scale)):
        torch.testing.assert_close(output.terms[name], reference, rtol=1e-12, atol=1e-12)
    total = 0.5 * (angular + scale)
    torch.testing.assert_close(output.total, total, rtol=1e-12, atol=1e-12)
    output.total.backward()
    total.backward()
    assert [n.split(".")[0] for n, _ in method.named_parameters()] == ["projector"] * 6 + [
        "scale_head"
    ] * 4
    for ours, theirs in zip(method.parameters(), params, strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)


def test_teacher_is_one_aggregator_layer_of_all_views_frozen(vggt_weights, standin):
    backbone, plan = _planned(vggt_weights, "alignment.options.teacher_layer=1")
    method = plan.method.build(plan.recipe, backbone)
    teacher = method.load_teacher(plan.recipe, torch.device("cpu"))
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(name.startswith("teacher") for name in method.state_dict())
    images = torch.rand(1, 3, 3, 32, 32) * 2 - 1
    features = teacher(images)  # outside no_grad: the teacher itself runs under no_grad
    assert features.shape == (1, 3, 256, DIM) and not features.requires_grad
    reference = vggt_standin.Aggregator()
    reference.load_state_dict(
        {k.removeprefix("aggregator."): v for k, v in load_file(str(vggt_weights)).items()}
    )
    with torch.no_grad():
        layers, start = reference((images + 1) / 2)  # 32 px views: no resize
    torch.testing.assert_close(features, layers[1][:, :, start:])
    # all views go in together: changing one view changes the others' features
    changed = images.clone()
    changed[0, 2] = -changed[0, 2]
    assert not torch.allclose(teacher(changed)[0, 0], features[0, 0])


def test_errors(vggt_weights, standin, tmp_path, monkeypatch):
    from cameo_cli.registry import build_backbone
    from cameo_cli.train.plan import plan_run

    backbone = build_backbone("cat3d", "tiny", in_channels=3)
    with pytest.raises(CameoError, match="teacher grid 8x8 .* does not match block"):
        plan_run(_recipe(vggt_weights, "alignment.options.teacher_resolution=16"), backbone)
    with pytest.raises(CameoError, match="VGGT weights not found"):
        plan_run(_recipe(tmp_path / "missing.safetensors"), backbone)
    with pytest.raises(CameoError, match="no VGGT weights"):
        plan_run(_recipe(tmp_path), backbone)
    with pytest.raises(CameoError, match="teacher_layer: 3 is outside VGGT's 3 aggregator"):
        plan_run(_recipe(vggt_weights, "alignment.options.teacher_layer=3"), backbone)
    no_teacher = load_recipe("quickstart-cpu", ["alignment.method=geometry-forcing"])
    with pytest.raises(CameoError, match="geometry-forcing needs VGGT weights"):
        plan_run(no_teacher, backbone)
    monkeypatch.setitem(__import__("sys").modules, "vggt.models.vggt", None)
    with pytest.raises(CameoError, match="VGGT needs the `vggt` package"):
        plan_run(_recipe(vggt_weights), backbone)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ((), "geometry-forcing needs VGGT weights"),
        (
            ("alignment.options.teacher=WEIGHTS", "alignment.options.teacher_resolution=24"),
            "teacher grid 12x12",
        ),
    ],
)
def test_cli_errors_are_one_line_exit_2(
    settings, message, vggt_weights, standin, synthetic_dataset, tmp_path
):
    args = ["train", "--recipe", "quickstart-cpu", "--align", "geometry-forcing"]
    args += ["--dataset", str(synthetic_dataset), "--output", str(tmp_path / "run")]
    for setting in settings:
        args += ["--set", setting.replace("WEIGHTS", str(vggt_weights))]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
def test_train_two_steps_resume_and_evaluate(vggt_weights, standin, synthetic_dataset, tmp_path):
    from cameo_cli.run_folder.checkpoints import load_for_inference
    from cameo_cli.run_folder.layout import resolve_checkpoint

    def train(run: Path, steps: int, *extra: str) -> None:
        args = ["train", "--recipe", "quickstart-cpu", "--align", "geometry-forcing"]
        args += ["--dataset", str(synthetic_dataset), "--output", str(run), "--steps", str(steps)]
        for setting in (
            f"alignment.options.teacher={vggt_weights}",
            "alignment.weight=0.5",
            "train.batch_size=1",
            "train.checkpoint_every=1",
            "train.validate_every=1000",
            "train.log_every=1",
            "sample.steps=2",
        ):
            args += ["--set", setting]
        result = CliRunner().invoke(main, args + list(extra))
        assert result.exit_code == 0, result.output

    train(tmp_path / "a", 2)
    train(tmp_path / "b", 1)
    train(tmp_path / "b", 2, "--resume", "latest")
    straight, resumed = (resolve_checkpoint(tmp_path / run) for run in ("a", "b"))
    for name in ("alignment.safetensors", "backbone/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert any(
        k.startswith("scale_head.") for k in load_file(str(straight / "alignment.safetensors"))
    )
    loaded = load_for_inference(straight)
    assert loaded.recipe.alignment.method == "geometry-forcing"
    options = dataclasses.asdict(loaded.recipe)["alignment"]["options"]
    assert (options["teacher_dim"], options["teacher_layer"]) == (DIM, vggt_standin.LAYERS - 1)
    result = evaluate_cli(tmp_path / "a", synthetic_dataset, tmp_path / "eval")
    assert result.exit_code == 0, result.output
    metrics = [
        line
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
        if "angular" in line
    ]
    assert metrics and "scale" in metrics[-1]
