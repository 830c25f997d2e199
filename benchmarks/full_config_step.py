"""One training step of a FULL backbone (the paper's shapes), with and without CAMEO.

Measures, in one run on one device, the step time (forward + backward + AdamW) and peak
memory of the full configuration at the paper's resolution, for the plain diffusion loss,
for diffusion + CAMEO with the fused Triton kernels (CUDA with Triton only) and for
diffusion + CAMEO with the chunked PyTorch path, at the backbone's default layer; prints
each CAMEO variant's time over the plain step and its extra peak memory.
Weights are random (no download); the cameras look at a plane whose point maps give real
correspondence targets. Meant for a GPU; on a CPU it takes minutes per step.

    python benchmarks/full_config_step.py --backbone cat3d --device cuda
    python benchmarks/full_config_step.py --backbone hunyuan-dit --device cuda --batch 1
    python benchmarks/full_config_step.py --backbone hunyuan-dit --device cuda --sharding fsdp

`--sharding fsdp` runs the training model as `train.sharding: fsdp` does (FSDP2 per block,
`cameo_cli.train.sharding`): on one device it shards nothing, a check of the code path and
of its overhead.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch

from cameo.alignments.cameo import CameoAlignment
from cameo.alignments.cameo.fused import fused_available
from cameo_cli.backbone import ViewConditioning
from cameo_cli.batch import ViewBatch
from cameo_cli.cameras import fov_to_focal, intrinsics_matrix, unproject_depth
from cameo_cli.registry import build_backbone, get_spec
from cameo_cli.train.model import CameoTrainingModel
from cameo_cli.train.sharding import shard_model

LATENT_CHANNELS, DOWNSAMPLE = 4, 8


def look_at_cameras(views: int, radius: float = 4.0, arc_degrees: float = 40.0) -> torch.Tensor:
    """OpenCV world-to-camera matrices on an arc around the origin, looking at it."""
    matrices = []
    for angle in torch.linspace(-arc_degrees / 2, arc_degrees / 2, views):
        theta = math.radians(float(angle))
        center = torch.tensor([radius * math.sin(theta), 0.0, -radius * math.cos(theta)])
        forward = -center / center.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 1.0, 0.0]), forward)
        right = right / right.norm()
        down = torch.linalg.cross(forward, right)
        rotation = torch.stack([right, down, forward])
        w2c = torch.eye(4)
        w2c[:3, :3] = rotation
        w2c[:3, 3] = -rotation @ center
        matrices.append(w2c)
    return torch.stack(matrices)


def make_batch(batch: int, views: int, resolution: int, device: torch.device):
    """Latents, timesteps and a ViewBatch (blank images, point maps) of a plane seen from an
    arc."""
    focal = fov_to_focal(50.0, resolution)
    center = resolution / 2
    K = intrinsics_matrix(*(torch.tensor(v) for v in (focal, focal, center, center)))
    K = K.expand(batch, views, 3, 3).clone()
    w2c = look_at_cameras(views).expand(batch, views, 4, 4).clone()
    depth = torch.full((batch, views, resolution, resolution), 4.0)
    ref_mask = torch.zeros(batch, views, dtype=torch.bool)
    ref_mask[:, :2] = True
    size = resolution // DOWNSAMPLE
    latents = torch.randn(batch, views, LATENT_CHANNELS, size, size)
    views_batch = ViewBatch(
        images=torch.zeros(batch, views, 3, resolution, resolution),
        intrinsics=K,
        world_to_camera=w2c,
        ref_mask=ref_mask,
        scenes=["plane"] * batch,
        frames=torch.arange(views).expand(batch, views),
        point_map=unproject_depth(depth, K, w2c),
        point_valid=torch.ones_like(depth, dtype=torch.bool),
    )
    timesteps = torch.full((batch,), 500.0, device=device)
    return latents.to(device), timesteps, views_batch.to(device)


def variants(device: torch.device) -> list[tuple[str, bool | None]]:
    """(name, CameoLoss `fused` setting; None = no CAMEO) of the variants that can run."""
    runs: list[tuple[str, bool | None]] = [("plain", None)]
    if fused_available(device):
        runs.append(("CAMEO fused", True))
    runs.append(("CAMEO chunked", False))
    return runs


def measure(args: argparse.Namespace, fused: bool | None) -> tuple[float, float]:
    """Median step seconds and peak memory (GiB; CUDA only, else nan) of one variant
    (fused: None = no CAMEO, else CameoLoss's `fused` setting)."""
    align = fused is not None
    device = torch.device(args.device)
    torch.manual_seed(0)
    backbone = build_backbone(args.backbone, "full", in_channels=LATENT_CHANNELS).to(device)
    if args.gradient_checkpointing:
        backbone.enable_gradient_checkpointing()
    layer = backbone.default_layer
    grid = backbone.token_grid(layer, (args.resolution, args.resolution))
    alignment = None
    if align:
        heads = backbone.layers(args.resolution)[layer].heads
        alignment = CameoAlignment(
            [layer],
            [grid],
            [heads],
            [0.02],
            epsilon=1.5,
            selection="joint",
            head="mlp",
            loss="ce",
            chunk_size=args.chunk_size,
        ).to(device)
        alignment.losses[str(layer)].fused = fused
    model = CameoTrainingModel(backbone, alignment).train()
    if args.sharding == "fsdp":
        precision = "bf16" if args.bf16 else "no"
        shard_model(model, get_spec(args.backbone).blocks, precision, device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2.5e-5, weight_decay=0.01)
    latents, timesteps, batch = make_batch(args.batch, 4, args.resolution, device)
    cond = ViewConditioning.from_batch(batch)
    target_views = ~cond.ref_mask
    times = []
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for step in range(args.warmup + args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            prediction, aligned = model(
                latents, timesteps, cond, point_map=batch.point_map, point_valid=batch.point_valid
            )
        denoise = (prediction.float() - latents)[target_views].pow(2).mean()
        loss = denoise if aligned is None else denoise + aligned.total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan
    del model, optimizer, backbone, alignment
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="cat3d")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--no-bf16", dest="bf16", action="store_false")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--sharding", choices=("ddp", "fsdp"), default="ddp")
    args = parser.parse_args()
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"{args.backbone} full, {args.resolution} px, F = 4, batch {args.batch}, "
        f"{'bf16' if args.bf16 else 'fp32'}, {args.sharding}, {name}"
    )
    results = {name: measure(args, fused) for name, fused in variants(torch.device(args.device))}
    plain_time, plain_peak = results["plain"]
    for name, (step, peak) in results.items():
        print(f"{name:<14}{step * 1e3:8.1f} ms   peak {peak:6.2f} GiB")
    for name, (step, peak) in results.items():
        if name != "plain":
            extra = peak - plain_peak
            print(
                f"{name} / plain: time {step / plain_time:.3f}x, extra peak memory "
                f"{extra:.3f} GiB ({100 * extra / plain_peak:.2f} % of plain)"
            )


if __name__ == "__main__":
    main()
