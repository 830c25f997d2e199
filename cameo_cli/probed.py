"""One probed forward pass, as training, validation and diagnose run it: the batch's views
encoded (`encode_views`), their target views noised (`diffusion.noised_views`, references
clean), the views' conditioning built from the batch, and the model run once with the chosen
layers' q and k captured (`probed_forward`)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from cameo_cli.attention.hooks import ProbeResult
from cameo_cli.backbone import MultiViewBackbone, ViewConditioning
from cameo_cli.batch import ViewBatch
from cameo_cli.diffusion import NoisedBatch


@dataclass
class ProbedPass:
    """What one probed forward pass gave."""

    noised: NoisedBatch
    output: Any  # what the model returned (a backbone: the prediction [B, F, C, h, w])
    probes: dict[int, ProbeResult]  # layer -> its q and k


def encode_views(
    codec: Any, batch: ViewBatch, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[B, F, C, h, w] latents of the batch's views (`generator` samples a posterior)."""
    b, f = batch.images.shape[:2]
    return codec.encode(batch.images.flatten(0, 1), generator=generator).unflatten(0, (b, f))


@contextlib.contextmanager
def probing(
    backbone: MultiViewBackbone, probes: Mapping[int, tuple[int, int]]
) -> Iterator[dict[int, ProbeResult]]:
    """Capture each layer of `probes` (layer -> token grid) during the forward passes inside;
    the dict yielded holds each layer's `ProbeResult` once the block is left."""
    results: dict[int, ProbeResult] = {}
    with contextlib.ExitStack() as stack:
        handles = {
            layer: stack.enter_context(backbone.probe(layer, grid))
            for layer, grid in probes.items()
        }
        yield results
    results.update({layer: handle.result for layer, handle in handles.items()})


def probed_forward(
    model: Callable[..., Any],
    batch: ViewBatch,
    noised: NoisedBatch,
    *,
    probes: Mapping[int, tuple[int, int]] | None = None,
    drop_camera: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    **inputs: Any,
) -> ProbedPass:
    """`model(noised.noisy, timesteps, cond, **inputs)` with the batch's conditioning
    (`ViewConditioning.from_batch`) and the layers of `probes` (layer -> grid; `model` then
    is a backbone) captured. The training model probes what its method needs itself."""
    cond = ViewConditioning.from_batch(batch, drop_camera=drop_camera, generator=generator)
    watch = probing(model, probes) if probes else contextlib.nullcontext({})
    with watch as results:
        output = model(noised.noisy, noised.timesteps.float(), cond, **inputs)
    return ProbedPass(noised, output, results)
