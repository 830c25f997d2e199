"""`train.sharding: fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) over every process.

Each block of the backbone (its spec's `blocks`: a ModuleList's children, or the module) is
sharded on its own, then the backbone (what is left: embeddings, camera encoder, in/out
convs), then the training model (the alignment method's parameters). The model's forward,
the CAMEO probes and heads run through the wrapped root module as under DDP; validation
calls the backbone itself, a sharded module too, on every process. Parameters are gathered
in `train.mixed_precision` (bf16: gradients reduced in fp32) and the forward runs under the
same autocast as DDP; fp16 is refused (`plan.check_recipe`): it needs a gradient scaler over
sharded gradients.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from cameo_cli.errors import CameoError
from cameo_cli.train.model import CameoTrainingModel


def shard_model(
    model: CameoTrainingModel, blocks: tuple[str, ...], mixed_precision: str, device: torch.device
) -> None:
    """Shard `model` in place over all processes (one process: a group of one, so the same
    code runs and the checkpoints are the same)."""
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    gathered = {"no": None, "bf16": torch.bfloat16}[mixed_precision]
    policy = MixedPrecisionPolicy(
        param_dtype=gathered,
        reduce_dtype=None if gathered is None else torch.float32,
        cast_forward_inputs=False,  # autocast casts; timesteps and point maps stay fp32
    )
    backbone = model.backbone
    for path in blocks:
        try:
            module = backbone.model.get_submodule(path)
        except AttributeError:
            raise CameoError(
                f"train.sharding fsdp: backbone '{backbone.name}' has no block '{path}' to shard"
            ) from None
        for block in module if isinstance(module, nn.ModuleList) else [module]:
            fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(backbone, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


@contextlib.contextmanager
def root_gathered(model: nn.Module) -> Iterator[None]:
    """The sharded root's own parameters (the alignment method's) whole inside the block, for
    what reads them outside its forward (validation's match scorer); the backbone and its
    blocks gather theirs in their own forward."""
    model.unshard()
    try:
        yield
    finally:
        model.reshard()
