"""Recipes and plans of the teacher-based alignment methods (REPA, Geometry Forcing)."""

from __future__ import annotations

from pathlib import Path

import torch

from cameo_cli.config import load_recipe


def teacher_recipe(method: str, teacher: Path, *overrides: str):
    """The quick-start recipe aligned with `method` (lambda 0.5) to the teacher at `teacher`."""
    return load_recipe(
        "quickstart-cpu",
        [
            f"alignment.method={method}",
            "alignment.weight=0.5",
            f"alignment.options.teacher={teacher}",
            *overrides,
        ],
    )


def planned_teacher(method: str, teacher: Path, *overrides: str):
    """A tiny pixel-space CAT3D (seed 0) and the run plan of `teacher_recipe`."""
    from cameo_cli.registry import build_backbone
    from cameo_cli.train.plan import plan_run

    torch.manual_seed(0)
    backbone = build_backbone("cat3d", "tiny", in_channels=3)
    return backbone, plan_run(teacher_recipe(method, teacher, *overrides), backbone)


def evaluate_cli(run: Path, dataset: Path, out: Path):
    """`cameo evaluate` of `run` on `dataset` (PSNR, 2 steps): the CliRunner result."""
    from click.testing import CliRunner

    from cameo_cli.cli import main

    args = ["evaluate", "--checkpoint", run, "--dataset", dataset, "--out", out]
    return CliRunner().invoke(main, [*map(str, args), "--metrics", "psnr", "--steps", "2"])
