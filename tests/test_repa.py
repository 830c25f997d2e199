"""REPA with a tiny random DINOv2 teacher loaded through the real loading code: the loss
and its gradients against a float64 reference, the teacher's features, errors, and 2 steps
of training that checkpoint, resume bit-identically and evaluate."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cameo_cli.alignment.method import AlignmentInputs
from cameo_cli.config import load_recipe
from cameo_cli.errors import CameoError
from tests.teachers import evaluate_cli, planned_teacher, teacher_recipe

PATCH, DIM = 2, 12  # the tiny teacher: 32 px views -> 16x16 tokens, as tiny cat3d's layer 10


@pytest.fixture(scope="module")
def dino_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=DIM,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=24,
        patch_size=PATCH,
        image_size=32,
    )
    folder = tmp_path_factory.mktemp("dinov2")
    Dinov2Model(config).save_pretrained(folder)
    return folder


def _recipe(teacher: Path, *overrides: str):
    return teacher_recipe("repa", teacher, *overrides)


def _planned(teacher: Path, *overrides: str):
    return planned_teacher("repa", teacher, *overrides)


def test_options_are_resolved_and_pinned(dino_folder):
    _, plan = _planned(dino_folder)
    options = plan.recipe.alignment.options
    assert options["block"] == "up_blocks.2.attentions.0"
    assert options["teacher_resolution"] == 32 and options["teacher_patch"] == PATCH
    assert (options["student_dim"], options["teacher_dim"], options["projector_dim"]) == (
        64,
        DIM,
        2048,
    )
    assert plan.needs_geometry is False


def test_loss_and_gradients_equal_a_float64_reference(dino_folder):
    backbone, plan = _planned(dino_folder, "alignment.options.projector_dim=8")
    method = plan.method.build(plan.recipe, backbone).double()
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2 * 3, 64, 16, 16, generator=generator, dtype=torch.float64)
    teacher = torch.randn(2, 3, 256, DIM, generator=generator, dtype=torch.float64)
    inputs = AlignmentInputs(
        torch.zeros(2, 3, dtype=torch.bool),
        {},
        {"up_blocks.2.attentions.0": hidden},
        teacher=teacher,
    )
    output = method(inputs)
    # reference from the formulas: tokens row-major, MLP with SiLU, mean over all tokens of -cos
    params = [p.detach().clone().requires_grad_(True) for p in method.projector.parameters()]
    w1, b1, w2, b2, w3, b3 = params
    tokens = hidden.reshape(2, 3, 64, 256).permute(0, 1, 3, 2)

    def silu(x):
        return x / (1 + torch.exp(-x))

    projected = silu(silu(tokens @ w1.T + b1) @ w2.T + b2) @ w3.T + b3
    cos = (projected * teacher).sum(-1) / (projected.norm(dim=-1) * teacher.norm(dim=-1))
    reference = -cos.sum() / cos.numel()
    torch.testing.assert_close(output.terms["repa"], reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(output.total, 0.5 * reference, rtol=1e-12, atol=1e-12)
    output.total.backward()
    (0.5 * reference).backward()
    for ours, theirs in zip(method.projector.parameters(), params, strict=True):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-10, atol=1e-12)


def test_teacher_is_dinov2_patch_tokens_frozen(dino_folder):
    from transformers import Dinov2Model

    backbone, plan = _planned(dino_folder)
    method = plan.method.build(plan.recipe, backbone)
    teacher = method.load_teacher(plan.recipe, torch.device("cpu"))
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not any(name.startswith("teacher") for name in method.state_dict())
    images = torch.rand(1, 2, 3, 32, 32) * 2 - 1
    features = teacher(images)
    assert features.shape == (1, 2, 256, DIM)
    reference = Dinov2Model.from_pretrained(dino_folder, local_files_only=True).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = reference(pixel_values=((images[0] + 1) / 2 - mean) / std).last_hidden_state
    torch.testing.assert_close(features[0], expected[:, 1:])


def test_errors(dino_folder, tmp_path):
    from cameo_cli.registry import build_backbone
    from cameo_cli.train.plan import plan_run

    backbone = build_backbone("cat3d", "tiny", in_channels=3)
    with pytest.raises(CameoError, match="teacher grid 8x8 .* does not match block"):
        plan_run(_recipe(dino_folder, "alignment.options.teacher_resolution=16"), backbone)
    with pytest.raises(CameoError, match="not a local transformers DINOv2 folder"):
        plan_run(_recipe(tmp_path / "missing"), backbone)
    no_teacher = load_recipe("quickstart-cpu", ["alignment.method=repa"])
    with pytest.raises(CameoError, match="repa needs DINOv2 weights"):
        plan_run(no_teacher, backbone)
    with pytest.raises(CameoError, match="unknown key 'alignment.options.teachr'"):
        plan_run(
            load_recipe("quickstart-cpu", ["alignment.method=repa", "alignment.options.teachr=x"]),
            backbone,
        )
    # the mid-block placement: 4x4 student tokens, upsampled after the MLP to the 16x16 teacher
    mid = plan_run(
        _recipe(
            dino_folder,
            "alignment.options.block=mid_block",
            "alignment.options.teacher_resolution=32",
            "alignment.options.resample=bilinear",
        ),
        backbone,
    )
    method = mid.method.build(mid.recipe, backbone)
    assert method.grid == (4, 4) and method.teacher_grid == (16, 16)
    # left out, a resampled student's teacher runs at REPA's size (16 patches per 256 px,
    # at least 16), not at the 4x4 student grid
    mid = plan_run(
        _recipe(
            dino_folder, "alignment.options.block=mid_block", "alignment.options.resample=bilinear"
        ),
        backbone,
    )
    assert mid.recipe.alignment.options["teacher_resolution"] == 16 * PATCH


def test_resampled_student_teacher_size_is_repas():
    """REPA's preprocess_raw_image: DINOv2 /14 at 224 px for 256 px images, 448 for 512."""
    from cameo.alignments.repa import Repa

    assert Repa.default_teacher_resolution(256, 14, (4, 4), "bilinear") == 224
    assert Repa.default_teacher_resolution(512, 14, (8, 8), "bilinear") == 448
    assert Repa.default_teacher_resolution(512, 14, (32, 32), "none") == 448


@pytest.mark.slow
def test_train_two_steps_resume_and_evaluate(dino_folder, synthetic_dataset, tmp_path):
    from cameo_cli.run_folder.checkpoints import load_for_inference
    from cameo_cli.train.loop import run_training

    common = (
        f"data.dataset={synthetic_dataset}",
        "train.batch_size=1",
        "train.checkpoint_every=1",
        "train.validate_every=1000",
        "sample.steps=2",
        "train.log_every=1",
    )
    straight = run_training(_recipe(dino_folder, *common, "train.steps=2"), tmp_path / "a")
    first = tmp_path / "b"
    run_training(_recipe(dino_folder, *common, "train.steps=1"), first)
    resumed = run_training(_recipe(dino_folder, *common, "train.steps=2"), first, resume="latest")
    for name in ("alignment.safetensors", "backbone/diffusion_pytorch_model.safetensors"):
        a, b = load_file(str(straight / name)), load_file(str(resumed / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    loaded = load_for_inference(tmp_path / "a")
    assert loaded.recipe.alignment.method == "repa"
    assert dataclasses.asdict(loaded.recipe)["alignment"]["options"]["teacher_dim"] == DIM
    result = evaluate_cli(tmp_path / "a", synthetic_dataset, tmp_path / "eval")
    assert result.exit_code == 0, result.output
