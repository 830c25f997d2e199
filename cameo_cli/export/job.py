"""`cameo export` as a library call: one folder that samples anywhere once copied.

Layout (a checkpoint folder's inference part, so every loader reads it, plus)::

    model_index.json        what it is: class, cameo version, backbone, codec, scheduler, step
    config.yaml             the resolved recipe; codec.path is relative to this folder
    state.json              {"step": N}
    backbone/               the backbone (EMA weights when the run kept an average)
    alignment.safetensors   the CAMEO projection head, if trained
    codec/                  the AutoencoderKL (safetensors), for codec.kind vae
    scheduler/              scheduler_config.json of the recipe's sample.scheduler
    README.md               the model card (huggingface_hub ModelCard)

The folder is staged and renamed into place, so a failed export leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from cameo_cli import __version__, files
from cameo_cli.config import Recipe, dump_recipe
from cameo_cli.diffusion import make_sampler
from cameo_cli.errors import CameoError
from cameo_cli.run_folder.checkpoints import load_for_inference, save_model
from cameo_cli.run_folder.layout import CONFIG, EXPORT_INDEX, PROGRESS, resolve_checkpoint, run_of
from cameo_cli.run_folder.metrics import read_metrics

CODEC_FOLDER = "codec"


def run_export(source: str | Path, out: Path, *, overwrite: bool = False) -> Path:
    """Export the run folder's latest checkpoint (or one checkpoint folder) to `out`."""
    folder = resolve_checkpoint(source)
    if (folder / EXPORT_INDEX).is_file():
        raise CameoError(f"{source}: is already an export; copy the folder instead")
    files.check_output_folder(out, overwrite)
    run = run_of(folder)
    metrics = last_validation(run) if run is not None else {}
    loaded = load_for_inference(folder, device="cpu")
    recipe: Recipe = loaded.recipe
    layer = recipe.alignment.layer if recipe.alignment.method != "none" else None
    codec = recipe.codec
    if codec.kind == "vae":
        codec = dataclasses.replace(codec, path=CODEC_FOLDER)
    exported = dataclasses.replace(recipe, codec=codec)
    with files.staged_folder(out, overwrite) as staging:
        save_model(staging, loaded.backbone, loaded.alignment, recipe.alignment.method)
        if recipe.codec.kind == "vae":
            _copy_vae(recipe.codec.path, staging / CODEC_FOLDER)
        make_sampler(recipe.diffusion, recipe.sample.scheduler).save_pretrained(
            staging / "scheduler"
        )
        dump_recipe(exported, staging / CONFIG, comment=f"exported from {folder}")
        files.write_json(staging / PROGRESS, {"step": loaded.step})
        files.write_json(
            staging / EXPORT_INDEX,
            {
                "_class_name": "MultiViewPipeline",
                "_cameo_version": __version__,
                "backbone": recipe.backbone.name,
                "codec": recipe.codec.kind,
                "scheduler": recipe.sample.scheduler,
                "step": loaded.step,
                "source": str(folder.resolve()),
            },
        )
        files.write_text(staging / "README.md", model_card(recipe, loaded.step, layer, metrics))
    return out


def _copy_vae(path: str | None, target: Path) -> None:
    """The recipe's AutoencoderKL, rewritten as safetensors (no pickled weights)."""
    from cameo_cli.codec import load_codec
    from cameo_cli.config import CodecConfig

    codec = load_codec(CodecConfig(kind="vae", path=path))
    codec.vae.save_pretrained(target, safe_serialization=True)


def last_validation(run: Path) -> dict[str, Any]:
    """The last line of a run's metrics holding validation metrics (val/...)."""
    found: dict[str, Any] = {}
    for record in read_metrics(run, required=False):
        if any(key.startswith("val/") for key in record):
            found = {k: v for k, v in record.items() if k == "step" or k.startswith("val/")}
    return found


def model_card(
    recipe: Recipe, step: int, layer: int | list[int] | None, metrics: dict[str, Any]
) -> str:
    """README.md: card metadata (YAML front matter) and what the model is and was trained on."""
    from huggingface_hub import ModelCard, ModelCardData

    data, align = recipe.data, recipe.alignment
    method = (
        f"CAMEO (attention of layer {layer} aligned to geometric correspondence, "
        f"weight {align.weight}, {align.loss} loss)"
        if align.method == "cameo"
        else "baseline (no attention alignment)"
    )
    dataset = Path(data.dataset).name if data.dataset else "unknown"
    card_data = ModelCardData(
        library_name="cameo",
        pipeline_tag="image-to-image",
        tags=["multi-view", "novel-view-synthesis", f"alignment-{align.method}"],
        datasets=[dataset],
    )
    scores = "\n".join(
        f"| {name} | {value:.4f} |" for name, value in metrics.items() if name != "step"
    )
    evaluation = (
        f"Last validation (step {metrics['step']}):\n\n| metric | value |\n|---|---|\n{scores}"
        if scores
        else "No validation metrics were logged."
    )
    body = f"""
# {recipe.backbone.name} multi-view diffusion model

- **Method**: {method}
- **Layer**: {layer if layer is not None else "none"}
- **Training steps**: {step}
- **Training data**: `{dataset}` (domain {data.domain}, {data.resolution} px,
  {data.num_views} views)
- **Backbone**: {recipe.backbone.name} ({recipe.backbone.variant}), codec {recipe.codec.kind}
- **Sampling**: {recipe.sample.scheduler}, {recipe.sample.steps} steps, camera guidance
  {recipe.sample.guidance}
- **cameo version**: {__version__}

## Evaluation

{evaluation}

## Use

```python
from cameo_cli.pipeline import MultiViewPipeline

pipeline = MultiViewPipeline.from_pretrained("path/to/this/folder")
```

or `cameo sample --checkpoint path/to/this/folder --views ... --cameras ... --targets ...`.
"""
    return str(ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}"))
