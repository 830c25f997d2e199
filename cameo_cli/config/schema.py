"""The recipe schema: the dataclasses every job reads, and the allowed values of choice fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class BackboneConfig:
    name: str = "cat3d"
    variant: str = "full"  # "tiny" (CPU tests) or "full" (the paper's shapes)
    pretrained: str | None = None  # local diffusers folder (SD2.1, Hunyuan-DiT); None = random
    qk_norm: bool = True
    gradient_checkpointing: bool = False
    # the backbone's own options (its spec's `parameters`, e.g. MVGenMaster's prior_drop)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class CodecConfig:
    kind: str = "vae"  # "vae" (AutoencoderKL), "space_to_depth" or "none" (pixel space)
    factor: int = 2  # space_to_depth: pixels per latent cell along each side
    path: str | None = None  # local AutoencoderKL folder, required for kind "vae"
    scaling_factor: float = 0.18215
    cache_latents: bool = False
    sample_posterior: bool = False  # training latents drawn from the VAE posterior (official)


@dataclass
class DataConfig:
    dataset: str | None = None  # folder written by `cameo prepare`
    resolution: int = 512
    num_views: int = 4  # F
    min_refs: int = 1
    max_refs: int = 3
    frame_gap: tuple[int, int] = (1, 64)  # frames between the first and last view of a sample
    # "official" (one reference count and order per batch), "random" (shuffle) or "even"
    # (evenly spaced references), per sample; read from `policy` in cameo 0.1.0 recipes
    order: str = "random"
    workers: int = 4
    domain: str = "others"  # the official domain switch: re10k, co3d or others
    # held-out scenes for validation: a prepared folder's `test` split; None = the `dataset`
    # folder's; "train" = the training scenes (an explicit opt-in, warned and recorded)
    validation: str | None = None


@dataclass
class DiffusionConfig:
    prediction: str = "v_prediction"  # or "epsilon"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    snr_shift: float = 1.0  # per-step SNR divided by sqrt(snr_shift); the official snr_rescale
    zero_terminal_snr: bool = False
    timestep_spacing: str = "leading"  # DDIM: "leading" (SD2.1, official) or "trailing"
    min_snr_gamma: float | None = None  # Min-SNR-gamma loss weights (Hang et al. 2023); None off


@dataclass
class AlignmentConfig:
    method: str = "cameo"  # a registered alignment method (`cameo alignments list`)
    # a LayerChoice (cameo_cli.layer_selection): None = default, "auto" = diagnose's pick
    # ("auto:2": its top 2), [10, 12] or "3,8-10" = several layers
    layer: int | list[int] | str | None = None
    weight: float | list[float] = 0.02  # lambda; CAMEO: one number, or one per layer
    epsilon: float = 1.5  # cycle-consistency threshold in token units; .inf disables the mask
    loss: str = "ce"  # "ce" or "l1"
    # "mlp" (official: H -> 4H -> GELU -> 1 over heads), "monotone" (cameo's, non-decreasing
    # in every head's logit) or "none" (head-averaged probabilities)
    head: str = "mlp"
    targets: str = "per_pair"  # "joint" (official: one target per query) or "per_pair"
    chunk_size: int | None = None  # query rows per chunk (memory bound); None: 256 GPU, 64 CPU
    options: dict[str, Any] = field(default_factory=dict)  # the method's own (its `parameters`)


@dataclass
class TrainConfig:
    steps: int = 320_000
    batch_size: int = 6  # global: split over processes; x grad_accumulation per step
    learning_rate: float = 2.5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 500
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    mixed_precision: str = "bf16"  # "no", "fp16" or "bf16"
    camera_drop: float = 0.1
    camera_drop_scope: str = "sample"  # "batch" (whole global batch at once) or "sample"
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    # "ddp": every process holds the whole model and optimizer; "fsdp": FSDP2, each block of
    # the backbone sharded over the processes (checkpoints stay full-state either way)
    sharding: str = "ddp"
    log_every: int = 10
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    validate_every: int = 5000
    # experiment trackers through accelerate: any of TRACKERS; metrics.jsonl is always kept
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])


TRACKERS = ("tensorboard", "wandb", "mlflow")


@dataclass
class SampleConfig:
    scheduler: str = "ddim"  # "ddim", "dpm-solver++" or "unipc" (cameo_cli.diffusion.SAMPLERS)
    steps: int = 50
    guidance: float = 2.0
    eta: float = 0.0
    seed: int = 0


@dataclass
class EvaluateConfig:
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lpips"])
    lpips_net: str = "vgg"
    psnr_cap: float = 100.0


@dataclass
class Recipe:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    data: DataConfig = field(default_factory=DataConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    alignment: AlignmentConfig = field(default_factory=AlignmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)


# Allowed values of the string fields that name a choice (dotted path -> choices).
CHOICES: dict[str, tuple[str, ...]] = {
    "backbone.variant": ("tiny", "full"),
    "codec.kind": ("vae", "space_to_depth", "none"),
    "data.order": ("official", "random", "even"),
    "data.domain": ("re10k", "co3d", "others"),  # official indices 0, 1, 2 (in this order)
    "diffusion.prediction": ("v_prediction", "epsilon"),
    "diffusion.timestep_spacing": ("leading", "trailing"),
    "alignment.loss": ("ce", "l1"),
    "alignment.head": ("mlp", "monotone", "none"),
    "alignment.targets": ("joint", "per_pair"),
    "train.mixed_precision": ("no", "fp16", "bf16"),
    "train.camera_drop_scope": ("batch", "sample"),
    "train.sharding": ("ddp", "fsdp"),
    "sample.scheduler": ("ddim", "dpm-solver++", "unipc"),
}
