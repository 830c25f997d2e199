"""CAMEO against the baseline on synthetic scenes: does the alignment make attention geometric?

Trains the quick-start recipe (tiny CAT3D, 32 px pixel space) twice from the same seed, with
`--align cameo` and `--align none`, then measures on held-out scenes (another generator
seed, never seen in training):

- correspondence precision of the supervised layer's own attention: for every query token
  with a cycle-consistent ground-truth match in another view (all ordered view pairs), the
  key token of that view with the highest attention (softmax per head over the view's keys,
  averaged over heads) must be the true match (exact) or within one token (±1);
  averaged over fixed noise levels; for the CAMEO run also the projection head's argmax;
- validation PSNR of the target views over every held-out sample: sampled with the sampling
  pipeline (DDIM, the recipe's steps and camera guidance, seed 0), and the one-step x0
  estimate at t = 500 (fixed noise), references given in both.

    python benchmarks/cameo_vs_baseline.py --steps 300 --out bench-cameo [--parallel]

Each stage is skipped when its output exists, so a rerun only evaluates.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from rich.console import Console

from cameo_cli.backbone import ViewConditioning
from cameo_cli.batch import ViewBatch
from cameo_cli.codec import load_codec
from cameo_cli.data.dataset import dataset_from_recipe
from cameo_cli.data.shards import prepare_dataset
from cameo_cli.data.synthetic import SyntheticSource
from cameo_cli.diffusion import make_train_scheduler, noise_targets
from cameo_cli.geometry import correspondence_targets
from cameo_cli.pipeline import MultiViewPipeline
from cameo_cli.run_folder.checkpoints import load_for_inference
from cameo_cli.train.validation import one_step_views, sampled_views, target_psnr

RECIPE = "quickstart-cpu"
TIMESTEPS = (100, 300, 500, 700, 900)
METHODS = ("cameo", "none")


def prepare(folder: Path, scenes: int, seed: int, split: str, resolution: int) -> Path:
    if not (folder / "index.json").is_file():
        source = SyntheticSource(
            scenes=scenes, resolution=resolution, frames=16, seed=seed, split=split
        )
        prepare_dataset(source, folder, scenes_per_shard=8, console=Console(quiet=True))
    return folder


def train_command(method: str, dataset: Path, run: Path, steps: int, extra: list[str]) -> list[str]:
    command = [sys.executable, "-m", "cameo_cli", "train", "--recipe", RECIPE]
    command += ["--dataset", str(dataset), "--align", method, "--steps", str(steps)]
    command += ["--output", str(run), "--set", "train.keep_checkpoints=20"]
    for item in extra:
        command += ["--set", item]
    if (run / "checkpoints").is_dir():
        command += ["--resume", "latest"]
    return command


def train_all(out: Path, dataset: Path, steps: int, parallel: bool, extra: list[str]) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    todo = []
    for method in METHODS:
        run = out / method
        done = (run / "checkpoints" / f"step-{steps:06d}").is_dir()
        if not done:
            todo.append(train_command(method, dataset, run, steps, extra))
    if parallel:
        processes = [subprocess.Popen(c, env=env) for c in todo]
        codes = [p.wait() for p in processes]
    else:
        codes = [subprocess.run(c, env=env).returncode for c in todo]
    if any(codes):
        raise SystemExit(f"training failed: exit codes {codes}")


@torch.no_grad()
def attention_precision(model, batch: ViewBatch, timesteps: tuple[int, ...], seed: int) -> dict:
    """Exact and ±1-token argmax precision of the supervised layer (and of the head)."""
    recipe, backbone = model.recipe, model.backbone
    layer = recipe.alignment.layer if isinstance(recipe.alignment.layer, int) else None
    layer = backbone.default_layer if layer is None else layer
    size = recipe.data.resolution
    grid = backbone.token_grid(layer, (size, size))
    codec, scheduler = load_codec(recipe.codec), make_train_scheduler(recipe.diffusion)
    images, ref_mask = batch.images, batch.ref_mask
    b, f = images.shape[:2]
    latents = codec.encode(images.flatten(0, 1)).unflatten(0, (b, f))
    targets = correspondence_targets(batch.point_map, batch.point_valid, grid, epsilon=1.5)
    cond = ViewConditioning.from_batch(batch)
    generator = torch.Generator().manual_seed(seed)
    counts = {"attention": [0, 0], "head": [0, 0]}
    total = 0
    width = grid[1]
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        noisy = noise_targets(scheduler, latents, noise, torch.full((b,), t), ref_mask)
        with backbone.probe(layer, grid) as handle:
            backbone(noisy, torch.full((b,), float(t)), cond)
        probe = handle.result
        for i in range(f):
            for j in range(f):
                if i == j:
                    continue
                keep = targets.mask[:, i, j]  # [B, hw]
                truth = targets.index[:, i, j]
                scores = {"attention": probe.logits(i, j).softmax(-1).mean(1)}  # [B, hw, hw]
                if model.alignment is not None and model.alignment.head is not None:
                    scores["head"] = model.alignment.correspondence_logits(probe, i, j)
                for name, score in scores.items():
                    guess = score.argmax(-1)
                    exact = (guess == truth) & keep
                    near = (
                        ((guess // width - truth // width).abs() <= 1)
                        & ((guess % width - truth % width).abs() <= 1)
                        & keep
                    )
                    counts[name][0] += int(exact.sum())
                    counts[name][1] += int(near.sum())
                total += int(keep.sum())
    result = {f"{k}_exact": v[0] / total for k, v in counts.items() if v[1]}
    result.update({f"{k}_within1": v[1] / total for k, v in counts.items() if v[1]})
    result["rows"] = total // len(timesteps)
    return result


def held_out_batch(dataset_root: Path, recipe, draws: int) -> ViewBatch:
    items = []
    for draw in range(draws):
        dataset = dataset_from_recipe(dataset_root, recipe, seed=1000 + draw)
        items += [dataset[i] for i in range(len(dataset))]
    return ViewBatch.collate(items).with_domain(recipe.data.domain)


def evaluate(run: Path, batch_source: Path, draws: int) -> dict:
    model = load_for_inference(run, use_ema=False)
    batch = held_out_batch(batch_source, model.recipe, draws)
    recipe = model.recipe
    codec, scheduler = load_codec(recipe.codec), make_train_scheduler(recipe.diffusion)
    one_step = one_step_views(model.backbone, codec, scheduler, batch, seed=0)
    pipeline = MultiViewPipeline(
        model.backbone,
        codec,
        recipe.diffusion,
        recipe.data.num_views,
        device="cpu",
        domain=recipe.data.domain,
    )
    sampled = sampled_views(
        pipeline, batch, steps=recipe.sample.steps, guidance=recipe.sample.guidance, seed=0
    )
    result = {
        "step": model.step,
        "val_psnr": target_psnr(sampled, batch),
        "val_psnr_x0": target_psnr(one_step, batch),
        "samples": batch.batch_size,
    }
    result.update(attention_precision(model, batch, TIMESTEPS, seed=0))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench-cameo-vs-baseline"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train-scenes", type=int, default=32)
    parser.add_argument("--test-scenes", type=int, default=8)
    parser.add_argument("--draws", type=int, default=4, help="view draws per held-out scene")
    parser.add_argument("--parallel", action="store_true", help="train both runs at once")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    args.out.mkdir(parents=True, exist_ok=True)
    train_set = prepare(args.out / "data-train", args.train_scenes, 0, "train", 32)
    test_set = prepare(args.out / "data-test", args.test_scenes, 1, "test", 32)
    held_out = [f"data.validation={test_set}", *args.extra]  # validation on the test set
    train_all(args.out, train_set, args.steps, args.parallel, held_out)
    results = {}
    for method in METHODS:
        results[method] = evaluate(args.out / method, test_set, args.draws)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))
    cameo, none = results["cameo"], results["none"]
    print(
        f"\nheld-out scenes, step {cameo['step']}: attention precision (exact / within 1 token) "
        f"cameo {cameo['attention_exact']:.3f} / {cameo['attention_within1']:.3f} vs "
        f"baseline {none['attention_exact']:.3f} / {none['attention_within1']:.3f} "
        f"(ratio {cameo['attention_exact'] / max(none['attention_exact'], 1e-9):.2f}x); "
        f"validation PSNR (DDIM samples) cameo {cameo['val_psnr']:.2f} dB vs baseline "
        f"{none['val_psnr']:.2f} dB; one-step x0 cameo {cameo['val_psnr_x0']:.2f} dB vs "
        f"baseline {none['val_psnr_x0']:.2f} dB"
    )


if __name__ == "__main__":
    main()
