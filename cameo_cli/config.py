"""Recipes: YAML files read into these dataclasses (the schema every job shares)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class BackboneConfig:
    name: str = "cat3d"
    variant: str = "full"  # "tiny" (CPU tests) or "full" (the paper's shapes)
    pretrained: str | None = None  # local diffusers folder (SD2.1 / Hunyuan-DiT); None = random init
    qk_norm: bool = True
    gradient_checkpointing: bool = False


@dataclass
class CodecConfig:
    kind: str = "vae"  # "vae" (diffusers AutoencoderKL) or "none" (pixel space)
    path: str | None = None  # local AutoencoderKL folder, required for kind "vae"
    scaling_factor: float = 0.18215
    cache_latents: bool = False


@dataclass
class DataConfig:
    dataset: str | None = None  # folder written by `cameo prepare`
    resolution: int = 512
    num_views: int = 4  # F
    min_refs: int = 1
    max_refs: int = 3
    frame_gap: tuple[int, int] = (1, 64)  # frames between the first and last view of a sample
    policy: str = "random"  # "random" (shuffle) or "even" (evenly spaced references)
    workers: int = 4


@dataclass
class DiffusionConfig:
    prediction: str = "v_prediction"  # or "epsilon"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    zero_terminal_snr: bool = False
    snr_rescale: bool = False


@dataclass
class AlignmentConfig:
    method: str = "cameo"  # "cameo" or "none" (the baseline)
    layer: int | str | None = None  # None = backbone default; "auto" = diagnose's recommendation
    weight: float = 0.02  # lambda
    epsilon: float = 1.5  # cycle-consistency threshold in token units; .inf disables the mask
    loss: str = "ce"  # "ce" or "l1"
    head: str = "mlp"  # "mlp" (H -> 4H -> 1 over heads) or "none" (head-averaged logits)
    chunk_size: int = 64  # query rows per chunk (memory bound)


@dataclass
class TrainConfig:
    steps: int = 320_000
    batch_size: int = 6
    learning_rate: float = 2.5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 500
    grad_clip: float = 1.0
    grad_accumulation: int = 1
    mixed_precision: str = "bf16"  # "no", "fp16" or "bf16"
    camera_drop: float = 0.1
    ema: bool = False
    ema_decay: float = 0.9999
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 5000
    keep_checkpoints: int = 3
    validate_every: int = 5000


@dataclass
class SampleConfig:
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
