"""Memory per device of a training run: `cameo recipes show NAME --memory [--processes N]`.

Training state, counted from the shapes of the trained module (backbone + alignment
parameters, built on the meta device: nothing allocated): fp32 weights (accelerate's mixed
precision keeps fp32 weights and casts inside autocast), fp32 gradients, AdamW's two fp32
moments and, with ``train.ema``, an fp32 EMA copy. Under ``ddp`` every device holds all of
it; under ``fsdp`` (FSDP2 ``fully_shard``) every parameter is split along its first dimension
into N padded chunks, so a device holds ``ceil(d0 / N) * rest`` of each. The frozen codec
(the VAE's fp32 weights, from ``codec.path``'s config.json or SD2.1's shape) is whole on
every device. A teacher (REPA, Geometry Forcing) is not counted.

Activations: the peak bytes of tensors alive during one forward of the per-device batch
(``train.batch_size / N`` samples of F views, the recipe's mixed precision and gradient
checkpointing, the alignment term included): what backward keeps plus the largest
temporaries, counted per storage by a dispatch mode (`PeakBytes`). ``measured`` (tiny
variants): real tensors on the CPU. ``estimated`` (full variants): the same forward on fake
tensors (`FakeTensorMode`: shapes only, nothing allocated); data-dependent reads are taken
as every element kept (all correspondence rows pass the cycle test, input checks pass), an
upper bound. CPU kernels stand in for the GPU's (flash attention on both).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import weakref
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from cameo_cli.config import Recipe
from cameo_cli.errors import CameoError

FP32 = 4
STRATEGIES = ("ddp", "fsdp")
# SD2.1's AutoencoderKL (stabilityai/stable-diffusion-2-1, vae/config.json), used when
# codec.path holds no config.json: 83.7 M parameters, 4 latent channels, 8x downsampling
SD_VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
}
PRECISION_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device of one training run on ``processes`` devices."""

    processes: int
    per_device_batch: int
    trainable: int  # trained parameters (backbone + alignment)
    state: dict[str, dict[str, int]]  # strategy -> {weights, gradients, optimizer, ema}
    frozen: int  # the codec's weights
    frozen_source: str
    activations: int
    activations_how: str  # "measured" or "estimated"

    def total(self, strategy: str) -> int:
        return sum(self.state[strategy].values()) + self.frozen + self.activations


def shard_numel(shape: tuple[int, ...], processes: int) -> int:
    """Elements of one parameter a device holds under FSDP2 (dim-0 chunks, padded)."""
    if not shape:
        return 1
    return math.ceil(shape[0] / processes) * math.prod(shape[1:])


def state_bytes(parameters: list[nn.Parameter], processes: int, ema: bool) -> dict:
    """{strategy: {weights, gradients, optimizer, ema}} bytes per device, all fp32."""
    state = {}
    for strategy in STRATEGIES:
        if strategy == "ddp":
            numel = sum(p.numel() for p in parameters)
        else:
            numel = sum(shard_numel(tuple(p.shape), processes) for p in parameters)
        state[strategy] = {
            "weights": numel * FP32,
            "gradients": numel * FP32,
            "optimizer": 2 * numel * FP32,  # AdamW: exp_avg and exp_avg_sq
            "ema": numel * FP32 if ema else 0,
        }
    return state


def _every(indices: list[torch.Tensor | None]) -> list[torch.Tensor | None]:
    """Indices of `aten.index` with each boolean mask (k dims) as the k integer indices of a
    mask holding True everywhere."""
    out = []
    for index in indices:
        if index is None or index.dtype != torch.bool:
            out.append(index)
        else:
            zeros = torch.zeros(index.numel(), dtype=torch.long, device=index.device)
            out.extend([zeros] * index.dim())
    return out


class PeakBytes(TorchDispatchMode):
    """Bytes of the storages created inside the mode that are still alive, and their peak.
    With ``fake``, data-dependent ops return their largest result (``nonzero``: every
    element; a scalar read: 1 / True), so a forward on fake tensors runs to its end."""

    def __init__(self, fake: bool = False) -> None:
        super().__init__()
        self.fake, self.live, self.peak = fake, 0, 0
        self._seen: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    def exclude(self, tensors: list[torch.Tensor]) -> None:
        """Count neither these tensors nor views of them (weights, inputs)."""
        for tensor in tensors:
            self._seen[tensor.untyped_storage()] = 0

    def _free(self, size: int) -> None:
        self.live -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.fake and func is torch.ops.aten._local_scalar_dense.default:
            return True if args[0].dtype == torch.bool else 1
        if self.fake and func is torch.ops.aten.nonzero.default:
            x = args[0]
            out = torch.empty((x.numel(), x.dim()), dtype=torch.long, device=x.device)
        elif self.fake and func is torch.ops.aten.index.Tensor:  # x[mask]: every element
            out = func(args[0], _every(args[1]))
        else:
            out = func(*args, **(kwargs or {}))
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                if storage not in self._seen:
                    size = storage.nbytes()
                    self._seen[storage] = size
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._free, size)
        return out


def _codec(recipe: Recipe) -> tuple[int, int, int, str]:
    """(channels, downsampling, frozen weight bytes, where the codec's shape came from)."""
    from cameo_cli.codec import load_codec

    config = recipe.codec
    if config.kind != "vae":
        codec = load_codec(config)
        return codec.channels, codec.downsample, 0, config.kind
    from diffusers import AutoencoderKL

    path = Path(config.path).expanduser() / "config.json" if config.path else None
    if path is not None and path.is_file():
        vae_config, source = json.loads(path.read_text()), str(path)
    else:
        vae_config, source = SD_VAE_CONFIG, "SD2.1's VAE; no codec.path/config.json"
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(vae_config)
    frozen = sum(p.numel() for p in vae.parameters()) * FP32
    downsample = 2 ** (len(vae.config.block_out_channels) - 1)
    return int(vae.config.latent_channels), downsample, frozen, source


def training_model(recipe: Recipe, in_channels: int, device: str) -> nn.Module:
    """The trained module (backbone + alignment), random-initialised on ``device`` (meta: no
    memory)."""
    from cameo_cli.train.model import CameoTrainingModel
    from cameo_cli.train.plan import plan_run
    from cameo_cli.train.setup import build_training_backbone

    shape_only = dataclasses.replace(
        recipe, backbone=dataclasses.replace(recipe.backbone, pretrained=None)
    )
    with torch.device(device):
        backbone = build_training_backbone(shape_only, in_channels)
        backbone.set_num_views(recipe.data.num_views)
        plan = plan_run(shape_only, backbone)
        alignment = None if plan.method is None else plan.method.build(plan.recipe, backbone)
    return CameoTrainingModel(backbone, alignment)


def activation_bytes(
    recipe: Recipe, model: nn.Module, batch: int, channels: int, downsample: int, fake: bool
) -> int:
    """Peak bytes alive during one training forward of ``batch`` samples (module docstring):
    ``model`` on the CPU, or with ``fake`` on the meta device (it gets fake CPU tensors)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from cameo_cli.backbone import ViewConditioning
    from cameo_cli.batch import ViewBatch

    views, size = recipe.data.num_views, recipe.data.resolution
    mode = FakeTensorMode(allow_non_fake_inputs=True) if fake else contextlib.nullcontext()
    dtype = PRECISION_DTYPES.get(recipe.train.mixed_precision)
    with mode:
        if fake:
            model.to_empty(device="cpu")
        generator = torch.Generator().manual_seed(0)
        intrinsics = torch.tensor([[size, 0.0, size / 2], [0.0, size, size / 2], [0, 0, 1]])
        world_to_camera = torch.eye(4).repeat(batch, views, 1, 1)
        world_to_camera[..., :3, 3] = torch.randn(batch, views, 3, generator=generator)
        ref_mask = torch.arange(views).expand(batch, views) < 1
        point_map = torch.randn(batch, views, 3, size, size, generator=generator)
        point_valid = torch.ones(batch, views, size, size, dtype=torch.bool)
        views_batch = ViewBatch(
            images=torch.zeros(batch, views, 3, size, size),
            intrinsics=intrinsics.expand(batch, views, 3, 3).clone(),
            world_to_camera=world_to_camera,
            ref_mask=ref_mask,
            scenes=["memory"] * batch,
            frames=torch.arange(views).expand(batch, views),
            point_map=point_map,
            point_valid=point_valid,
        ).with_domain(recipe.data.domain)
        side = size // downsample
        noisy = torch.randn(batch, views, channels, side, side, generator=generator)
        timesteps = torch.full((batch,), 500.0)
        counter = PeakBytes(fake=fake)
        counter.exclude([*model.parameters(), *model.buffers(), noisy, point_map, point_valid])
        with (
            counter,
            torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None),
        ):
            model.train()(
                noisy,
                timesteps,
                ViewConditioning.from_batch(views_batch),
                point_map=point_map,
                point_valid=point_valid,
            )
    return counter.peak


def memory_plan(recipe: Recipe, processes: int = 2) -> MemoryPlan:
    """Bytes per device for ``recipe`` on ``processes`` devices under ddp and fsdp."""
    from cameo_cli.train.data import per_process_batch

    if processes < 1:
        raise CameoError(f"--processes must be at least 1, got {processes}")
    batch = per_process_batch(recipe.train.batch_size, processes)
    channels, downsample, frozen, frozen_source = _codec(recipe)
    fake = recipe.backbone.variant != "tiny"
    model = training_model(recipe, channels, "meta" if fake else "cpu")
    trained = [p for p in model.parameters() if p.requires_grad]
    return MemoryPlan(
        processes=processes,
        per_device_batch=batch,
        trainable=sum(p.numel() for p in trained),
        state=state_bytes(trained, processes, recipe.train.ema),
        frozen=frozen,
        frozen_source=frozen_source,
        activations=activation_bytes(recipe, model, batch, channels, downsample, fake),
        activations_how="estimated" if fake else "measured",
    )
