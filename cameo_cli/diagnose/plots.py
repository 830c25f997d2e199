"""Matplotlib figures of a diagnose result (PNG, written atomically)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cameo_cli.files import save_figure  # noqa: E402
from cameo_cli.match_precision import (  # noqa: E402
    ROTATION_BINS,
    headline_metric,
    metric_label,
)


def _value(value: float | None) -> float:
    return np.nan if value is None else value


def precision_by_layer(result: dict, path: Path) -> None:
    """Grouped bars: each metric per layer, its chance (shuffled keys) as a black tick and
    the supervised layer through its projection head as diamonds; multi-view layers shaded,
    the recommended (highest lift) starred."""
    layers, metrics = result["layers"], result["metrics"]
    x = np.arange(len(layers))
    width = 0.8 / len(metrics)
    figure, axis = plt.subplots(figsize=(max(6, 0.6 * len(layers) + 2), 4))
    for position, summary in enumerate(layers):
        if summary["multiview"]:
            axis.axvspan(position - 0.45, position + 0.45, color="0.92", zorder=0)
    for number, metric in enumerate(metrics):
        values = [_value(s["attention"]["precision"][metric]) for s in layers]
        offset = (number - (len(metrics) - 1) / 2) * width
        label = metric_label(metric, result["radii"])
        bars = axis.bar(x + offset, values, width, label=label, zorder=2)
        axis.hlines(
            [_value(s["chance"][metric]) for s in layers],
            x + offset - width / 2,
            x + offset + width / 2,
            color="black",
            zorder=3,
            label="chance (shuffled keys)" if number == 0 else None,
        )
        for position, summary in enumerate(layers):
            if "projection_head" in summary:
                axis.plot(
                    position + offset,
                    _value(summary["projection_head"]["precision"][metric]),
                    marker="D",
                    markeredgecolor="black",
                    color=bars.patches[0].get_facecolor(),
                    zorder=4,
                    label=f"layer {summary['layer']} through its projection head"
                    if number == 0
                    else None,
                )
    recommended = (result.get("recommended_layer") or {}).get("layer")
    names = [f"{s['layer']}{'★' if s['layer'] == recommended else ''}" for s in layers]
    axis.set_xticks(x, names)
    axis.set_xlabel("layer (shaded: multi-view attention, ★ recommended: most above chance)")
    axis.set_ylabel("precision")
    axis.set_ylim(0, 1)
    world = "metric" if result["metric"] else "unitless: 3D radius in token footprints"
    axis.set_title(
        f"{result['backbone']}/{result['variant']}: argmax attention vs ground truth ({world})"
    )
    axis.legend(fontsize=8)
    save_figure(path, figure, bbox_inches="tight")


def precision_by_rotation(result: dict, path: Path) -> None:
    """Heat maps: pixel-radius and 3D (Precision@2cm on metric data) precision per layer and
    rotation bin (blank: no view pair)."""
    layers = result["layers"]
    metrics, bins = ("pixels", headline_metric(result["metrics"])), ROTATION_BINS
    figure, axes = plt.subplots(1, 2, figsize=(10, max(3, 0.35 * len(layers) + 1)))
    for axis, metric in zip(axes, metrics, strict=True):
        grid = np.array(
            [
                [_value(s["attention"]["by_rotation"][b]["precision"][metric]) for b in bins]
                for s in layers
            ]
        )
        image = axis.imshow(
            np.ma.masked_invalid(grid), vmin=0, vmax=1, cmap="viridis", aspect="auto"
        )
        for row in range(grid.shape[0]):
            for col in range(grid.shape[1]):
                if not np.isnan(grid[row, col]):
                    axis.text(
                        col,
                        row,
                        f"{grid[row, col]:.2f}",
                        ha="center",
                        va="center",
                        color="white" if grid[row, col] < 0.5 else "black",
                        fontsize=7,
                    )
        axis.set_xticks(range(len(ROTATION_BINS)), [f"{b}°" for b in ROTATION_BINS])
        axis.set_yticks(range(len(layers)), [str(s["layer"]) for s in layers])
        axis.set_xlabel("relative rotation between the views")
        axis.set_ylabel("layer")
        axis.set_title(f"precision {metric_label(metric, result['radii'])}")
        figure.colorbar(image, ax=axis)
    save_figure(path, figure, bbox_inches="tight")


def precision_over_training(result: dict, path: Path) -> None:
    """The chosen layer's precision per checkpoint step, next to validation PSNR."""
    over = result["over_training"]
    steps = [c["step"] for c in over["checkpoints"]]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for metric in result["metrics"]:
        left.plot(
            steps,
            [_value(c["precision"][metric]) for c in over["checkpoints"]],
            marker="o",
            label=metric_label(metric, result["radii"]),
        )
    head = [c["projection_head"] for c in over["checkpoints"]]
    if any(h is not None for h in head):
        left.plot(
            steps,
            [_value(h["pixels"]) if h else np.nan for h in head],
            marker="s",
            linestyle="--",
            label="projection head ≤ r px",
        )
    left.set_xlabel("training step")
    left.set_ylabel("precision")
    left.set_ylim(0, 1)
    left.set_title(f"layer {over['layer']}")
    left.legend(fontsize=8)
    psnr = over["validation_psnr"]
    if psnr:
        right.plot([p["step"] for p in psnr], [p["psnr"] for p in psnr], marker="o")
    else:
        right.text(0.5, 0.5, "no val/psnr in metrics.jsonl", ha="center", transform=right.transAxes)
    right.set_xlabel("training step")
    right.set_ylabel("validation PSNR (dB)")
    right.set_title("validation PSNR")
    save_figure(path, figure, bbox_inches="tight")


def perturbation_drop(result: dict, path: Path) -> None:
    """PSNR drop (and LPIPS increase) per perturbed layer."""
    rows = result["perturbation"]["layers"]
    x = np.arange(len(rows))
    colors = ["tab:red" if r["multiview"] else "tab:blue" for r in rows]
    has_lpips = any(r["lpips_increase"] is not None for r in rows)
    figure, axes = plt.subplots(
        1, 2 if has_lpips else 1, figsize=(10 if has_lpips else 6, 4), squeeze=False
    )
    axes[0, 0].bar(x, [r["psnr_drop"] for r in rows], color=colors)
    axes[0, 0].set_ylabel("PSNR drop (dB) vs unperturbed")
    if has_lpips:
        axes[0, 1].bar(x, [_value(r["lpips_increase"]) for r in rows], color=colors)
        axes[0, 1].set_ylabel("LPIPS increase")
    for axis in axes[0]:
        axis.set_xticks(x, [str(r["layer"]) for r in rows])
        axis.set_xlabel("identity-attention layer (red: multi-view)")
        axis.axhline(0, color="black", linewidth=0.5)
    figure.suptitle(
        f"perturbation: {result['perturbation']['sample_steps']} DDIM steps, "
        f"seed {result['perturbation']['seed']}"
    )
    save_figure(path, figure, bbox_inches="tight")


def perturbation_samples(samples: dict, path: Path) -> None:
    """Side by side for the first view set: references, ground truth, unperturbed, each layer."""
    columns = [
        ("references", samples["references"]),
        ("ground truth", samples["truth"]),
        ("unperturbed", samples[None]),
    ]
    columns += [(f"layer {k}", v) for k, v in samples.items() if isinstance(k, int)]
    rows = max(len(images) for _, images in columns)
    figure, axes = plt.subplots(
        rows, len(columns), figsize=(1.3 * len(columns), 1.4 * rows), squeeze=False
    )
    for col, (title, images) in enumerate(columns):
        for row in range(rows):
            axis = axes[row, col]
            axis.axis("off")
            if row < len(images):
                axis.imshow(images[row].permute(1, 2, 0).clamp(0, 1).numpy())
            if row == 0:
                axis.set_title(title, fontsize=7)
    save_figure(path, figure, bbox_inches="tight")
