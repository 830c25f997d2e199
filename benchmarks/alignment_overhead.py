"""What the CAMEO term costs: cameo's chunked loss against the official all-at-once one.

Measured in one run, at the paper's supervised-layer geometry (F = 4 views, 32x32 tokens per
view, 10 heads of 64, all 12 ordered pairs, MLP head 10 -> 40 -> 1, batch 1):

1. forward + backward time and peak extra memory of the loss, each variant in its own
   process (CPU: peak RSS over the baseline via /proc/self/status after resetting VmHWM;
   CUDA: torch.cuda.max_memory_allocated over the baseline), and the ratios naive/cameo;
2. the CAMEO term's FLOPs as a fraction of one plain training step (forward + backward) of
   the full SD2.1-shaped CAT3D U-Net at 512 px, F = 4 (torch.utils.flop_counter on the meta
   device, so no weights are allocated);
3. the measured step-time ratio CAMEO / plain of the quick-start recipe on CPU (the
   training loop's own micro-step, backward and AdamW step; both variants in one process,
   stepping in turns).

    OMP_NUM_THREADS=1 python benchmarks/alignment_overhead.py [--device cuda] [--chunk-size N]

On a CPU shared with other work, keep OMP_NUM_THREADS=1: with more threads than free cores
every small op waits on its slowest thread and the timings say little.

The naive variant needs about 8.5 GB on CPU; pass --skip-naive on a small machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from cameo.alignments.cameo.loss import CameoLoss
from cameo_cli.attention.hooks import ProbeResult
from cameo_cli.geometry import CorrespondenceTargets as Targets

VIEWS, GRID, HEADS, HEAD_DIM, BATCH = 4, (32, 32), 10, 64, 1
NUM_REFS = 2


def make_inputs(device: torch.device) -> tuple[ProbeResult, Targets, torch.Tensor]:
    """Random q/k at the paper's layer geometry; every off-diagonal row kept (worst case)."""
    gen = torch.Generator().manual_seed(0)
    hw = GRID[0] * GRID[1]
    shape = (BATCH, VIEWS, HEADS, hw, HEAD_DIM)
    q = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    k = torch.randn(shape, generator=gen).to(device).requires_grad_(True)
    index = torch.randint(0, hw, (BATCH, VIEWS, VIEWS, hw), generator=gen).to(device)
    eye = torch.eye(VIEWS, dtype=torch.bool, device=device)
    mask = (~eye)[None, :, :, None].expand(BATCH, VIEWS, VIEWS, hw).clone()
    ref_mask = torch.zeros(BATCH, VIEWS, dtype=torch.bool, device=device)
    ref_mask[:, :NUM_REFS] = True
    return ProbeResult(q=q, k=k, scale=HEAD_DIM**-0.5, grid=GRID), Targets(index, mask), ref_mask


def naive_loss(
    head: torch.nn.Module, probe: ProbeResult, targets: Targets, ref_mask: torch.Tensor
) -> torch.Tensor:
    """As the official code: [B, F·hw, F·hw, H] logits and the MLP on all of them at once."""
    q, k = probe.q.float(), probe.k.float()
    batch, views, heads, hw, dim = q.shape
    q_all = q.permute(0, 2, 1, 3, 4).reshape(batch, heads, views * hw, dim)
    k_all = k.permute(0, 2, 1, 3, 4).reshape(batch, heads, views * hw, dim)
    logits = torch.einsum("bhqd,bhkd->bqkh", q_all, k_all) * probe.scale
    scores = head(logits).squeeze(-1).reshape(batch, views, hw, views, hw)
    log_p = scores.log_softmax(dim=-1).permute(0, 1, 3, 2, 4)  # [B, Fi, Fj, hw_q, hw_k]
    onehot = torch.nn.functional.one_hot(targets.index, hw).to(log_p.dtype)
    row_loss = -(onehot * log_p).sum(-1)  # [B, F, F, hw]
    is_ref = ref_mask[:, :, None, None].expand_as(targets.mask)
    total = row_loss.new_zeros(())
    for group in (targets.mask & is_ref, targets.mask & ~is_ref):
        if group.any():
            total = total + row_loss[group].mean()
    return total


def _proc_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+) kB", status).group(1))


def measure(variant: str, device: torch.device, chunk_size: int, repeats: int) -> dict:
    """Run in a child process: forward + backward of one variant, time and peak extra bytes."""
    torch.manual_seed(0)
    loss_fn = CameoLoss(HEADS, head="mlp", loss="ce", chunk_size=chunk_size).to(device)
    probe, targets, ref_mask = make_inputs(device)

    def step() -> float:
        probe.q.grad = probe.k.grad = None
        loss_fn.zero_grad(set_to_none=True)
        if variant == "naive":
            value = naive_loss(loss_fn.head, probe, targets, ref_mask)
        else:
            value = loss_fn(probe, targets, ref_mask)
        value.backward()
        return value.item()

    if device.type == "cuda":
        step()  # warm-up (kernel selection); CPU runs are too slow to spend one on it
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        base = _proc_kib("VmRSS") * 1024
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _proc_kib("VmHWM") * 1024
    grad_norm = float(torch.cat([probe.q.grad.flatten(), probe.k.grad.flatten()]).norm())
    return {
        "variant": variant,
        "seconds": min(times),
        "extra_bytes": peak - base,
        "loss": value,
        "grad_norm": grad_norm,
    }


def run_child(variant: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--measure",
        variant,
        "--device",
        args.device,
        "--chunk-size",
        str(args.chunk_size),
        "--repeats",
        str(args.repeats),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=os.environ)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_quickstart(steps: int) -> dict:
    command = [
        sys.executable,
        __file__,
        "--measure-quickstart",
        "--quickstart-steps",
        str(steps),
    ]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    out = subprocess.run(command, check=True, capture_output=True, text=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cameo_term_flops(chunk_size: int) -> int:
    """FLOPs of the CAMEO term's forward + backward (matmuls, as the counter counts them)."""
    from torch.utils.flop_counter import FlopCounterMode

    loss_fn = CameoLoss(HEADS, head="mlp", chunk_size=chunk_size)
    probe, targets, ref_mask = make_inputs(torch.device("cpu"))
    with FlopCounterMode(display=False) as counter:
        loss_fn(probe, targets, ref_mask).backward()
    return counter.get_total_flops()


def full_unet_step(device: torch.device) -> tuple[torch.nn.Module, object]:
    """The full CAT3D U-Net at 512 px, F = 4, and a closure running one forward + backward
    (plain, or with the CAMEO term at its default layer when given a loss)."""
    from cameo_cli.backbone import ViewConditioning
    from cameo_cli.registry import build_backbone

    size, latent = 512, 64
    backbone = build_backbone("cat3d", variant="full", in_channels=4).to(device)
    latents = torch.randn(1, VIEWS, 4, latent, latent, device=device)
    intrinsics = torch.tensor([[400.0, 0, 256], [0, 400.0, 256], [0, 0, 1]], device=device)
    w2c = torch.eye(4, device=device).repeat(1, VIEWS, 1, 1)
    w2c[0, :, 0, 3] = torch.arange(VIEWS, device=device) * 0.1
    cond = ViewConditioning(
        intrinsics=intrinsics.repeat(1, VIEWS, 1, 1),
        world_to_camera=w2c,
        ref_mask=torch.tensor([[True, True, False, False]], device=device),
        image_size=(size, size),
    )
    timesteps = torch.tensor([500.0], device=device)
    layer = backbone.default_layer
    grid = backbone.token_grid(layer, (size, size))

    def step(loss_fn: CameoLoss | None = None) -> None:
        bf16 = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else None
        with bf16 or contextlib.nullcontext():
            if loss_fn is None:
                loss = backbone(latents, timesteps, cond).float().square().mean()
            else:
                with backbone.probe(layer, grid) as handle:
                    out = backbone(latents, timesteps, cond)
                probe = handle.result
                hw = grid[0] * grid[1]
                _, targets, ref_mask = make_inputs(device)
                assert targets.index.shape[-1] == hw, (grid, targets.index.shape)
                alignment = loss_fn(probe, targets, ref_mask)
                loss = out.float().square().mean() + 0.02 * alignment
        loss.backward()

    return backbone, step


def unet_step_flops() -> tuple[int, str]:
    """FLOPs of one plain forward + backward of the full CAT3D U-Net at 512 px, F = 4
    (on the meta device: nothing is allocated)."""
    from torch.utils.flop_counter import FlopCounterMode

    meta = torch.device("meta")
    with meta:
        backbone, step = full_unet_step(meta)

    def meta_condition_maps(latents: torch.Tensor, cond: object) -> torch.Tensor:
        # The Plücker raymap is elementwise camera arithmetic (no matmul FLOPs) that autocast
        # guards cannot run on the meta device: stand in a tensor of its shape.
        batch, views, _, height, width = latents.shape
        channels = backbone.condition_channels()
        return torch.zeros(batch, views, channels, height, width, device=meta)

    backbone.condition_maps = meta_condition_maps
    with FlopCounterMode(display=False) as counter:
        step()
    params = sum(p.numel() for p in backbone.parameters())
    return counter.get_total_flops(), f"cat3d full ({params / 1e6:.0f} M parameters)"


def unet_step_times(chunk_size: int, repeats: int) -> tuple[float, float]:
    """Measured seconds of one plain and one CAMEO forward + backward on CUDA (bf16)."""
    device = torch.device("cuda")
    _, step = full_unet_step(device)
    loss_fn = CameoLoss(HEADS, chunk_size=chunk_size).to(device)
    times = {}
    for name, fn in (("plain", None), ("cameo", loss_fn)):
        step(fn)  # warm-up
        runs = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            step(fn)
            torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
        times[name] = min(runs)
    return times["plain"], times["cameo"]


def quickstart_step_seconds(steps: int) -> dict[str, float]:
    """Run in a child process: median seconds of one training step (forward, backward,
    AdamW) of the quick-start recipe, plain and with CAMEO, on CPU. The two trainers step
    in turns so that a change in the machine's load hits both alike."""
    import tempfile

    from accelerate import Accelerator
    from rich.console import Console

    from cameo_cli.config import load_recipe
    from cameo_cli.data.shards import prepare_dataset
    from cameo_cli.data.synthetic import SyntheticSource
    from cameo_cli.train.data import make_loader
    from cameo_cli.train.loop import TRAIN_SPLIT, Trainer
    from cameo_cli.train.setup import open_dataset

    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "synthetic"
        source = SyntheticSource(scenes=4, resolution=64, frames=16, test_scenes=1)
        prepare_dataset(source, data, console=Console(quiet=True))
        accelerator = Accelerator(cpu=True)
        runs = {}
        for method in ("none", "cameo"):
            recipe = load_recipe(
                "quickstart-cpu", [f"alignment.method={method}", f"data.dataset={data}"]
            )
            dataset = open_dataset(recipe, needs_geometry=method == "cameo", split=TRAIN_SPLIT)
            trainer = Trainer.from_recipe(recipe, Path(tmp) / method, accelerator, dataset)
            trainer.prepared_model, optimizer = accelerator.prepare(
                trainer.model, trainer.optimizer
            )
            loader = make_loader(
                trainer.dataset,
                recipe.train.batch_size,
                world_size=1,
                rank=0,
                seed=0,
                start=0,
                workers=0,
            )
            runs[method] = (trainer, optimizer, iter(loader))
        times: dict[str, list[float]] = {method: [] for method in runs}
        for index in range(steps + 1):  # the first step of each warms up
            for method, (trainer, optimizer, batches) in runs.items():
                batch = next(batches)
                start = time.perf_counter()
                terms = trainer._loss_terms(batch, index)
                accelerator.backward(terms["loss"])
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                times[method].append(time.perf_counter() - start)
        accelerator.end_training()
    return {method: statistics.median(values[1:]) for method, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--chunk-size", type=int, default=None, help="rows per chunk [CameoLoss: 256 GPU, 64 CPU]"
    )
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--quickstart-steps", type=int, default=6)
    parser.add_argument("--measure", choices=["cameo", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--measure-quickstart", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.chunk_size is None:
        args.chunk_size = CameoLoss(HEADS).rows_per_chunk(torch.empty(0, device=args.device))
    if args.measure_quickstart:
        print(json.dumps(quickstart_step_seconds(args.quickstart_steps)))
        return
    if args.measure:
        print(
            json.dumps(
                measure(args.measure, torch.device(args.device), args.chunk_size, args.repeats)
            )
        )
        return

    hw = GRID[0] * GRID[1]
    print(
        f"CAMEO term at F={VIEWS}, {GRID[0]}x{GRID[1]} tokens/view, {HEADS} heads x {HEAD_DIM}, "
        f"{VIEWS * (VIEWS - 1)} ordered pairs, MLP {HEADS}->{4 * HEADS}->1, batch {BATCH}, "
        f"{args.device}, chunk {args.chunk_size}, best of {args.repeats}"
    )
    results = {"cameo": run_child("cameo", args)}
    if not args.skip_naive:
        results["naive"] = run_child("naive", args)
    for name, res in results.items():
        print(
            f"  {name:6s} fwd+bwd {res['seconds']:8.3f} s   peak extra "
            f"{res['extra_bytes'] / 2**30:7.3f} GiB   loss {res['loss']:.6f}"
            f"   |grad q,k| {res['grad_norm']:.6f}"
        )
    if "naive" in results:
        cameo, naive = results["cameo"], results["naive"]
        memory_ratio = naive["extra_bytes"] / cameo["extra_bytes"]
        print(f"  memory naive/cameo: {memory_ratio:.1f}x (goal >= 10x)")
        print(f"  time   cameo/naive: {cameo['seconds'] / naive['seconds']:.2f}x (goal <= 1.3x)")
        print(f"  loss difference: {abs(cameo['loss'] - naive['loss']):.2e}")

    term = cameo_term_flops(args.chunk_size)
    print(f"CAMEO term fwd+bwd: {term / 1e9:.1f} GFLOP ({hw} tokens/view)")
    plain, what = unet_step_flops()
    print(f"plain training step (fwd+bwd) of {what}, 512 px, F={VIEWS}: {plain / 1e12:.2f} TFLOP")
    print(f"  CAMEO term / plain step: {100 * term / plain:.2f} % (goal <= 5 %)")
    if args.device == "cuda":
        seconds_plain, seconds_cameo = unet_step_times(args.chunk_size, args.repeats)
        print(
            f"  measured bf16 step: plain {seconds_plain * 1e3:.1f} ms, with CAMEO "
            f"{seconds_cameo * 1e3:.1f} ms, ratio {seconds_cameo / seconds_plain:.3f}x"
        )
    step = run_quickstart(args.quickstart_steps)
    print(
        f"quick-start recipe (tiny cat3d, 32 px, batch 2 x F 4) on CPU, median of "
        f"{args.quickstart_steps} steps: plain {step['none']:.3f} s, CAMEO {step['cameo']:.3f} s, "
        f"ratio CAMEO/plain {step['cameo'] / step['none']:.2f}x"
    )


if __name__ == "__main__":
    main()
