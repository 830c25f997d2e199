"""The backbone contract: what every adapter (built-in or plugin) implements.

An adapter wraps a diffusers model (U-Net or DiT) whose self-attention layers are hooked
by cameo's processors. All adapters share one forward signature:

    prediction = backbone(latents [B, F, C, h, w], timesteps [B] (float), cond) -> [B, F, C, h, w]

Layers are numbered by the adapter (`layer_paths`, an ordered list of module paths); the
probe and the perturbation address them by that index.

A saved backbone is a folder in diffusers layout (`config.json` +
`diffusion_pytorch_model.safetensors` of the wrapped model) plus `cameo_extra.safetensors`
(the modules cameo adds: camera encoders, q/k norms, ...) and `cameo_backbone.json`
(`{"name", "variant", "in_channels", "options"}`). Loading rebuilds the adapter from that
folder, so everything diffusers does not record (removed cross-attention, processors) is
applied again by the adapter's `_load_model` and `_wrap`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from safetensors import safe_open
from torch import nn

from cameo_cli import files
from cameo_cli.attention.hooks import LayerHook, ProbeResult
from cameo_cli.conditioning import ViewConditioning  # re-exported: plugins import it here
from cameo_cli.errors import CameoError
from cameo_cli.layer_selection import check_layer_range
from cameo_cli.spec import BackboneSpec

BACKBONE_CONFIG = "cameo_backbone.json"
EXTRA_WEIGHTS = "cameo_extra.safetensors"
DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model.safetensors"
DIFFUSERS_INDEX = "diffusion_pytorch_model.safetensors.index.json"


@dataclass(frozen=True)
class LayerInfo:
    """One self-attention layer as the adapter numbers it."""

    index: int
    path: str
    grid: tuple[int, int]  # tokens per view (h, w) at the queried resolution
    heads: int
    head_dim: int
    multiview: bool
    default: bool


class ProbeHandle:
    """Filled by `MultiViewBackbone.probe` after the forward pass."""

    def __init__(self) -> None:
        self._result: ProbeResult | None = None

    @property
    def result(self) -> ProbeResult:
        if self._result is None:
            raise RuntimeError("the probed layer was not run: call the backbone inside `probe`")
        return self._result


class MultiViewBackbone(nn.Module, ABC):
    """Base class of every adapter.

    A subclass names its registry `spec` (the light `BackboneSpec`: its name, layer paths,
    default layer and options dataclass come from there), the wrapped diffusers
    `model_class` and the `pretrained_subfolder` a pipeline folder keeps it in, and supplies
    `_new_model` (construct a config) and an `__init__(model, **options)` that sets `model`
    and `hooks = self.spec_hooks(model)` (or overrides `_wrap`). `build` does the rest.
    """

    spec: ClassVar[BackboneSpec]
    name: ClassVar[str] = ""  # `spec.name`, set when the subclass is defined
    model_class: ClassVar[type[nn.Module]]
    pretrained_subfolder: ClassVar[str]
    variants: tuple[str, ...] = ("tiny", "full")
    # True when the adapter reads the references' geometry (`cond.point_map`): sampling
    # without it runs the model with zero priors, and the pipeline warns
    uses_priors: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            cls.name = cls.spec.name

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[LayerHook] = []
        self.variant = "tiny"
        self.in_channels = 4
        self.options: dict[str, object] = {}

    # -- construction -------------------------------------------------------------------
    @classmethod
    def build(
        cls,
        variant: str = "tiny",
        *,
        in_channels: int = 4,
        pretrained: str | None = None,
        **options: object,
    ) -> MultiViewBackbone:
        """Build the `tiny` or `full` config; `pretrained` is a local diffusers folder (the
        model itself or a pipeline folder with `pretrained_subfolder`): a 2D prior such as
        SD2.1's U-Net, whose camera encoder starts at zero, or a backbone saved by cameo
        (`save_pretrained`, e.g. an export's `backbone/`), whose own modules load too when it
        records this very build."""
        if not hasattr(cls, "_new_model"):
            raise TypeError(
                f"{cls.__name__}: an adapter using `MultiViewBackbone.build` defines the "
                "classmethod `_new_model(variant, in_channels, settings)`"
            )
        settings = cls.resolve_options(variant, in_channels, options)
        if pretrained is None:
            model = cls._new_model(variant, in_channels, settings)
        else:
            folder = resolve_diffusers_folder(pretrained, cls.pretrained_subfolder)
            model = cls._load_model(folder, variant, settings)
            if model.config.in_channels != in_channels:
                raise CameoError(
                    f"{folder}: {cls.model_class.__name__} has {model.config.in_channels} "
                    f"input channels, the image codec needs {in_channels}"
                )
        backbone = cls._wrap(model, variant, settings)
        backbone.record_build(variant, in_channels, settings)
        if pretrained is not None and (Path(pretrained) / BACKBONE_CONFIG).is_file():
            backbone._load_extras(Path(pretrained))
        return backbone

    @classmethod
    def resolve_options(
        cls, variant: str, in_channels: int, options: dict[str, object]
    ) -> dict[str, object]:
        """The defaults of `spec.parameters` updated by `options`, after checking `variant`,
        the option names and the options with `choices` metadata (CameoError otherwise). An
        option `downsample` (image pixels per latent cell) left None follows the codec's
        channels: 8 for 4-channel SD latents; f for 3 f^2 channels (f x f pixel blocks of
        `SpaceToDepthCodec`; plain pixels f = 1)."""
        if variant not in cls.variants:
            known = ", ".join(cls.variants)
            raise CameoError(f"backbone '{cls.name}': unknown config '{variant}' ({known})")
        defaults = dataclasses.asdict(cls.spec.parameters())
        unknown = sorted(set(options) - set(defaults))
        if unknown:
            raise CameoError(
                f"backbone '{cls.name}': unknown options {unknown} (valid: {sorted(defaults)})"
            )
        settings = {**defaults, **options}
        for option in dataclasses.fields(cls.spec.parameters):
            choices = option.metadata.get("choices")
            if choices is not None and settings[option.name] not in choices:
                raise CameoError(
                    f"backbone '{cls.name}': {option.name} must be one of "
                    f"{', '.join(choices)}, got {settings[option.name]!r}"
                )
        if "downsample" in settings and settings["downsample"] is None:
            settings["downsample"] = 8 if in_channels == 4 else math.isqrt(in_channels // 3)
        return settings

    @classmethod
    def _wrap(
        cls, model: nn.Module, variant: str, settings: dict[str, object]
    ) -> MultiViewBackbone:
        """The adapter around `model`: `cls(model, **settings)`; adapters whose `__init__`
        takes other arguments override this."""
        return cls(model, **settings)

    @classmethod
    def spec_hooks(cls, model: nn.Module) -> list[LayerHook]:
        """One hook per path of `spec.layer_paths` that `model` has (a smaller config keeps
        those it has), numbered in the spec's order, attending within each view on the
        spec's `per_view_layers` and across views elsewhere."""
        present = dict(model.named_modules())
        kept = [(i, path) for i, path in enumerate(cls.spec.layer_paths) if path in present]
        return [
            LayerHook(index=n, path=path, multiview=i not in cls.spec.per_view_layers)
            for n, (i, path) in enumerate(kept)
        ]

    @classmethod
    def _load_model(cls, folder: Path, variant: str, settings: dict[str, object]) -> nn.Module:
        """The `model_class` saved in `folder` (every weight present); adapters that change
        the loaded model or check its shape override this."""
        return load_diffusers_model(cls.model_class, folder)

    def record_build(self, variant: str, in_channels: int, options: dict[str, object]) -> None:
        """Remember how this backbone was built (written to `cameo_backbone.json`)."""
        self.variant = variant
        self.in_channels = in_channels
        self.options = dict(options)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute the wrapped model's block activations in backward (diffusers' own
        checkpointing, non-reentrant, so probe tensors keep their gradients). Leave the
        `probe` context before calling backward; adapters without diffusers support override."""
        self.model.enable_gradient_checkpointing()

    @abstractmethod
    def forward(
        self, latents: torch.Tensor, timesteps: torch.Tensor, cond: ViewConditioning
    ) -> torch.Tensor:
        """Predict for every view: [B, F, C, h, w] -> [B, F, C, h, w]."""

    # -- layers ---------------------------------------------------------------------------
    @abstractmethod
    def token_grid(self, layer: int, image_hw: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) token grid per view of `layer` for input images of `image_hw` pixels."""

    def layers(self, resolution: int) -> list[LayerInfo]:
        """The layer table for square inputs of `resolution` pixels (image space)."""
        table, default = [], self.default_layer
        for hook in self.hooks:
            attn = self.model.get_submodule(hook.path)
            table.append(
                LayerInfo(
                    index=hook.index,
                    path=hook.path,
                    grid=self.token_grid(hook.index, (resolution, resolution)),
                    heads=attn.heads,
                    head_dim=attn.inner_dim // attn.heads,
                    multiview=hook.multiview,
                    default=hook.index == default,
                )
            )
        return table

    @property
    def default_layer(self) -> int:
        """The spec's default layer; a config with fewer layers (`tiny`) keeps its relative
        depth (the full config's layer 32 of 40 is the tiny one's 8 of 10)."""
        full = len(self.spec.layer_paths)
        return round(self.spec.default_layer * len(self.hooks) / full)

    @property
    def layer_paths(self) -> list[str]:
        return [hook.path for hook in self.hooks]

    @property
    def multiview_layers(self) -> frozenset[int]:
        return frozenset(hook.index for hook in self.hooks if hook.multiview)

    def check_layer(self, layer: int) -> int:
        """Return `layer` if it exists, else raise `check_layer_range`'s CameoError."""
        check_layer_range(layer, self.name, len(self.hooks), self.default_layer)
        return layer

    def set_num_views(self, num_views: int) -> None:
        """Tell every processor how many consecutive batch items form one sample."""
        for hook in self.hooks:
            hook.num_views = num_views

    # -- probe and perturbation ---------------------------------------------------------
    @contextmanager
    def probe(self, layer: int, grid: tuple[int, int]) -> Iterator[ProbeHandle]:
        """Capture q and k of `layer` (token grid `grid` per view) during forward passes."""
        hook = self.hooks[self.check_layer(layer)]
        handle = ProbeHandle()
        hook.captured.clear()
        hook.recording = True
        try:
            yield handle
        finally:
            hook.recording = False
            if hook.captured:
                q, k, scale = hook.captured[-1]
                handle._result = ProbeResult(q=q, k=k, scale=scale, grid=grid)
            hook.captured.clear()

    @contextmanager
    def perturb(self, layers: Iterable[int]) -> Iterator[None]:
        """Replace the attention of `layers` by the identity (output = V), as in PAG."""
        chosen = [self.hooks[self.check_layer(i)] for i in layers]
        for hook in chosen:
            hook.identity = True
        try:
            yield
        finally:
            for hook in chosen:
                hook.identity = False

    # -- saving and loading -------------------------------------------------------------
    def model_additions(self) -> list[str]:
        """Module paths inside `model` that cameo added (saved with the extra weights)."""
        return []

    def _is_extra(self, key: str) -> bool:
        if not key.startswith("model."):
            return True
        inner = key[len("model.") :]
        return any(inner.startswith(prefix + ".") for prefix in self.model_additions())

    def _load_extras(self, folder: Path) -> None:
        """cameo's modules outside `model` (camera encoder, q/k norms, ...) from a folder
        written by `save_pretrained`, which must record this very build."""
        meta = read_backbone_config(folder)
        built = {"name": self.name, "variant": self.variant, "in_channels": self.in_channels}
        built["options"] = json.loads(json.dumps(self.options))
        for key, value in built.items():
            if meta[key] != value:
                raise CameoError(
                    f"{folder / BACKBONE_CONFIG}: saved with {key} {meta[key]!r}, "
                    f"this backbone is built with {value!r}"
                )
        extra_path = folder / EXTRA_WEIGHTS
        if not extra_path.is_file():
            raise CameoError(f"{extra_path}: file does not exist")
        extra = files.load_safetensors(extra_path)
        wanted = {k for k in self.state_dict() if self._is_extra(k)}
        if set(extra) != wanted:
            missing, unexpected = sorted(wanted - set(extra)), sorted(set(extra) - wanted)
            raise CameoError(
                f"{extra_path}: weights do not match backbone '{self.name}' "
                f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        self.load_state_dict(extra, strict=False)

    def save_pretrained(
        self, folder: str | os.PathLike, state: dict[str, torch.Tensor] | None = None
    ) -> None:
        """Write the wrapped model (diffusers layout), cameo's extra modules and the config;
        `state`: the full weights to write (a sharded backbone's, gathered), else its own."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous() for k, v in (state or self.state_dict()).items()}
        diffusers_state = {k[len("model.") :]: v for k, v in state.items() if not self._is_extra(k)}
        extra_state = {k: v for k, v in state.items() if self._is_extra(k)}
        _write_atomic(folder / DIFFUSERS_CONFIG, self.model.to_json_string())
        _save_atomic(diffusers_state, folder / DIFFUSERS_WEIGHTS)
        _save_atomic(extra_state, folder / EXTRA_WEIGHTS)
        meta = {
            "name": self.name,
            "variant": self.variant,
            "in_channels": self.in_channels,
            "options": self.options,
        }
        _write_atomic(folder / BACKBONE_CONFIG, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike) -> MultiViewBackbone:
        """Rebuild a backbone written by `save_pretrained` (offline, local files only)."""
        folder = Path(folder)
        meta = read_backbone_config(folder)
        if cls.name and meta["name"] != cls.name:
            raise CameoError(
                f"{folder / BACKBONE_CONFIG}: holds backbone '{meta['name']}', not '{cls.name}'"
            )
        return cls.build(
            meta["variant"],
            in_channels=meta["in_channels"],
            pretrained=str(folder),
            **meta["options"],
        )


# -- helpers shared by the adapters ------------------------------------------------------
def read_backbone_config(folder: Path) -> dict:
    """Read and check `cameo_backbone.json` of a saved backbone folder."""
    if not folder.is_dir():
        raise CameoError(f"{folder}: backbone folder does not exist")
    path = folder / BACKBONE_CONFIG
    if not path.is_file():
        raise CameoError(f"{path}: file does not exist (not a saved cameo backbone)")
    meta = files.read_json(path)
    if not isinstance(meta, dict):
        raise CameoError(f"{path}: expected a JSON object")
    required = {"name": str, "variant": str, "in_channels": int, "options": dict}
    for key, kind in required.items():
        if not isinstance(meta.get(key), kind):
            raise CameoError(f"{path}: '{key}' missing or not a {kind.__name__}")
    return meta


def resolve_diffusers_folder(folder: str | os.PathLike, subfolder: str) -> Path:
    """The folder holding the model's `config.json`: `folder` itself or `folder/subfolder`.

    Checks existence first: offline, diffusers reports a missing path as a hub error.
    """
    root = Path(folder)
    if not root.is_dir():
        raise CameoError(f"{root}: pretrained folder does not exist")
    for candidate in (root, root / subfolder):
        if (candidate / DIFFUSERS_CONFIG).is_file():
            return candidate
    raise CameoError(f"{root}: no {DIFFUSERS_CONFIG} here or in '{subfolder}/' (diffusers layout)")


def stored_weight_names(folder: Path) -> set[str]:
    """Names of the tensors in a diffusers folder's safetensors weights (single or sharded);
    every weight file is checked whole first, so diffusers is never handed a corrupt one."""
    index = folder / DIFFUSERS_INDEX
    if index.is_file():
        weight_map = files.read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CameoError(f"{index}: no 'weight_map' object")
        for name in sorted(set(weight_map.values())):
            files.check_safetensors(folder / name)
        return set(weight_map)
    single = folder / DIFFUSERS_WEIGHTS
    if not single.is_file():
        raise CameoError(f"{folder}: no {DIFFUSERS_WEIGHTS} (safetensors weights required)")
    files.check_safetensors(single)
    with safe_open(single, framework="pt") as handle:
        return set(handle.keys())


def load_diffusers_model(
    model_cls: type, folder: Path, prepare: Callable[[nn.Module], None] | None = None
) -> nn.Module:
    """Load a diffusers model from a local folder (no hub) and check no weight is missing.

    `prepare(model)` runs right after loading (e.g. removing a U-Net's text cross-attention,
    which diffusers recreates at random from the config); the check covers what remains.
    diffusers' own report of weights missing from the file is muted in favour of that check.
    """
    stored = stored_weight_names(folder)
    diffusers_logger = logging.getLogger("diffusers")
    level = diffusers_logger.level
    diffusers_logger.setLevel(logging.ERROR)
    try:
        model = model_cls.from_pretrained(folder, local_files_only=True, use_safetensors=True)
    finally:
        diffusers_logger.setLevel(level)
    if prepare is not None:
        prepare(model)
    missing = [key for key in model.state_dict() if key not in stored]
    if missing:
        raise CameoError(
            f"{folder}: weights missing for {len(missing)} tensors, e.g. {missing[:3]}"
        )
    return model


def _write_atomic(path: Path, text: str) -> None:
    files.write_text(path, text)


def _save_atomic(state: dict[str, torch.Tensor], path: Path) -> None:
    files.save_safetensors(state, path)
