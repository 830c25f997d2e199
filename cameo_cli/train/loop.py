"""The training loop on accelerate: one optimizer step = `train_step` over its accumulation
window, each micro-batch a `forward_backward`; checkpoints, validation and logging decide
their own cadence (`components`). The run is resolved before the Trainer exists (`plan`).

`L = L_denoise + the alignment method's weighted term` at every timestep (`--align none`:
`L_denoise` only; CAMEO: `λ·L_cameo` per supervised layer). Single
process, DDP over GPUs/nodes or two CPU processes (gloo, `torchrun`) run the same code;
`train.sharding: fsdp` shards the model over the processes instead (`sharding`), with the
same full-state checkpoints.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.utils.data import Dataset

from cameo_cli.attention.hooks import MatchScorer
from cameo_cli.batch import ViewBatch
from cameo_cli.config import Recipe, TrainConfig, dump_recipe
from cameo_cli.data.dataset import batch_rng
from cameo_cli.errors import CameoError
from cameo_cli.files import save_png
from cameo_cli.probed import encode_views, probed_forward
from cameo_cli.registry import get_spec
from cameo_cli.run_folder import checkpoints as ckpt
from cameo_cli.run_folder import layout as rundir
from cameo_cli.run_folder.metrics import read_metrics
from cameo_cli.train.components import Cadence, Checkpointer, TrainLogger, Validator
from cameo_cli.train.data import make_loader, per_process_batch
from cameo_cli.train.ema import ExponentialMovingAverage
from cameo_cli.train.metrics import MetricsLogger, check_trackers, start_trackers
from cameo_cli.train.model import CameoTrainingModel
from cameo_cli.train.objective import add_training_noise, denoising_loss, sample_generators
from cameo_cli.train.plan import RunPlan, check_recipe, needs_geometry, plan_run
from cameo_cli.train.progress import TrainingProgress
from cameo_cli.train.setup import (
    TRAIN_SPLIT,
    build_training_backbone,
    open_dataset,
    open_validation_dataset,
)
from cameo_cli.train.sharding import root_gathered, shard_model
from cameo_cli.train.validation import (
    grid_image,
    held_out_metrics,
    reference_line_psnr,
    sampled_views,
    target_psnr,
    target_sharpness,
)

log = logging.getLogger(__name__)

VALIDATION_SAMPLES = 4
SHARDED = (DistributedType.FSDP, DistributedType.DEEPSPEED)
PRECISION_DTYPES = {"no": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class TrainingDiverged(CameoError):
    """The loss became NaN or infinite; the run stopped before the optimizer step."""


class WarmupConstant:
    """LR factor: linear warm-up over `warmup` steps, then constant."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup

    def __call__(self, step: int) -> float:
        return min(1.0, (step + 1) / self.warmup) if self.warmup > 0 else 1.0


def run_training(
    recipe: Recipe,
    output: str | Path,
    *,
    resume: str | None = None,
    overwrite: bool = False,
    command: list[str] | None = None,
) -> Path:
    """Train `recipe` into the run folder `output`; return the last checkpoint folder."""
    output = Path(output)
    resume_from = rundir.resolve_resume(output, overwrite=overwrite, resume=resume)
    if resume_from is not None:
        read_metrics(output, required=False)  # a bad line fails before the run folder changes
    check_recipe(recipe)
    dataset = open_dataset(recipe, needs_geometry=needs_geometry(recipe), split=TRAIN_SPLIT)
    train = recipe.train
    check_trackers(train.trackers)
    accelerator = Accelerator(
        cpu=not torch.cuda.is_available(),
        mixed_precision=train.mixed_precision,
        gradient_accumulation_steps=train.grad_accumulation,
        log_with=list(train.trackers) or None,
        project_config=ProjectConfiguration(
            project_dir=str(output), logging_dir=str(output / rundir.TENSORBOARD)
        ),
    )
    try:
        trainer = Trainer.from_recipe(recipe, output, accelerator, dataset)
        return trainer.run(resume_from, overwrite=overwrite, command=command or [])
    finally:
        accelerator.end_training()


def camera_drop(
    train: TrainConfig, batch_index: int, generators: list[torch.Generator]
) -> torch.Tensor:
    """[B] bool: the samples whose camera channels are zeroed (classifier-free guidance), one
    per generator of `sample_generators`. Scope "sample": each sample with p = `camera_drop`,
    from its own generator; "batch" (the official trainer): all or none of global batch
    `batch_index`, one draw from (seed, batch index) that every process makes alike."""
    device = generators[0].device
    if train.camera_drop_scope == "batch":
        dropped = batch_rng(train.seed, batch_index, "camera_drop").random() < train.camera_drop
        return torch.full((len(generators),), bool(dropped), device=device)
    draws = [torch.rand(1, generator=g, device=device) for g in generators]
    return torch.cat(draws) < train.camera_drop


class Trainer:
    """Everything one training run holds; `run` steps it until `train.steps`."""

    @classmethod
    def from_recipe(
        cls, recipe: Recipe, output: Path, accelerator: Accelerator, dataset: Dataset
    ) -> Trainer:
        """Build the codec and the backbone, resolve the run's plan, then the Trainer."""
        from cameo_cli.codec import load_codec

        if accelerator.distributed_type in SHARDED:
            raise CameoError(
                f"{accelerator.distributed_type.value}: cameo shards the model itself; launch "
                "with a multi-GPU/multi-CPU accelerate config or torchrun and set "
                "train.sharding=fsdp"
            )
        per_process_batch(recipe.train.batch_size, accelerator.num_processes)  # fail early
        torch.manual_seed(recipe.train.seed)
        codec = load_codec(recipe.codec).to(accelerator.device)
        backbone = build_training_backbone(recipe, codec.channels)
        backbone.set_num_views(recipe.data.num_views)
        return cls(plan_run(recipe, backbone), backbone, codec, output, accelerator, dataset)

    def __init__(
        self,
        plan: RunPlan,
        backbone,
        codec,
        output: Path,
        accelerator: Accelerator,
        dataset: Dataset,
    ) -> None:
        from cameo_cli.diffusion import make_train_scheduler

        recipe = plan.recipe
        self.plan = plan
        self.recipe = recipe
        self.output = output
        self.accelerator = accelerator
        self.device = accelerator.device
        self.dataset = dataset
        self.codec = codec
        self.scheduler = make_train_scheduler(recipe.diffusion)
        alignment = None if plan.method is None else plan.method.build(recipe, backbone)
        # the frozen teacher lives outside the trained module: never trained nor checkpointed
        self.teacher = None if alignment is None else alignment.load_teacher(recipe, self.device)
        self.validation_batch = self._validation_batch()
        self.validation_lines = reference_line_psnr(self.validation_batch)  # logged once
        # the layer whose attention validation scores: the (first) supervised one, or the
        # recipe's layer for the baseline
        layer = plan.layers[0]
        image_size = (recipe.data.resolution, recipe.data.resolution)
        self.watched_layer = (layer, backbone.token_grid(layer, image_size))
        self.model = CameoTrainingModel(backbone, alignment).to(self.device)
        self.sharded = recipe.train.sharding == "fsdp"
        if self.sharded:  # before the optimizer and EMA, which hold the shards
            blocks = get_spec(recipe.backbone.name).blocks
            shard_model(self.model, blocks, recipe.train.mixed_precision, self.device)
        self.ema = (
            ExponentialMovingAverage(self.model, recipe.train.ema_decay)
            if recipe.train.ema
            else None
        )
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(),
            lr=recipe.train.learning_rate,
            weight_decay=recipe.train.weight_decay,
        )
        self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupConstant(recipe.train.warmup_steps)
        )
        # the backbone's own training-time draws (`ViewConditioning.generator`, e.g.
        # MVGenMaster's prior dropout), per process; noise, timesteps and camera drop come
        # from each sample's own generator (`sample_generators`)
        seed = recipe.train.seed * 1_000_003 + accelerator.process_index
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.checkpoints = ckpt.CheckpointManager(
            output / rundir.CHECKPOINTS, recipe.train.keep_checkpoints
        )
        train = recipe.train
        self.checkpointer = Checkpointer(
            Cadence(train.checkpoint_every, train.steps), lambda step: self.save_checkpoint()
        )
        self.validator = Validator(Cadence(train.validate_every, train.steps), self._validate)
        self.step = 0
        self.data_position = 0
        self.last_lr = recipe.train.learning_rate

    # -- set-up -----------------------------------------------------------------------------
    def _validation_batch(self) -> ViewBatch:
        """A fixed batch of held-out samples (`setup.open_validation_dataset`); training
        scenes only when the recipe opts in (`data.validation: train`), with a warning."""
        held_out = open_validation_dataset(self.recipe, self.dataset)
        count = min(VALIDATION_SAMPLES, len(held_out.dataset))
        batch = ViewBatch.collate([held_out.dataset[i] for i in range(count)])
        self.validation_source = {
            "dataset": held_out.folder,
            "split": held_out.split,
            "scenes": batch.scenes,
        }
        if held_out.on_training_scenes and self.accelerator.is_main_process:
            log.warning(
                "VALIDATION ON TRAINING SCENES (data.validation: train): every val/* metric of "
                "this run is measured on scenes it trains on (recorded in meta.json)"
            )
        return batch.with_domain(self.recipe.data.domain)

    def _prepare_run_dir(self, resume_from: Path | None, overwrite: bool, command: list[str]):
        # Every process has checked the output folder before the main one writes to it.
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            if overwrite:
                rundir.reset_run_dir(self.output)
            rundir.create_run_dir(self.output)
            dump_recipe(self.recipe, self.output / rundir.CONFIG)
            rundir.write_meta(
                self.output,
                command,
                self.accelerator.num_processes,
                resume_from,
                validation=self.validation_source,
            )
        self.accelerator.wait_for_everyone()

    def _optimizer_state(self) -> dict:
        """What a checkpoint's training state holds besides the weights and counters."""
        return {"optimizer": self.optimizer, "lr_scheduler": self.lr_scheduler, "ema": self.ema}

    def _restore(self, folder: Path) -> None:
        progress = ckpt.restore_training_state(
            folder,
            model=self.model,
            generators={"train": self.generator},
            rank=self.accelerator.process_index,
            **self._optimizer_state(),
        )
        if progress["world_size"] != self.accelerator.num_processes:
            log.warning(
                "%s was written by %d processes, resuming with %d: same data and noise, but "
                "the CAMEO mean (per process) and the backbone's own draws differ slightly "
                "from an uninterrupted run",
                folder,
                progress["world_size"],
                self.accelerator.num_processes,
            )
        self.step = progress["step"]
        self.data_position = progress["data_position"]["global_batches"]

    # -- one step ---------------------------------------------------------------------------
    def _loss_terms(self, batch: ViewBatch, batch_index: int) -> dict[str, torch.Tensor]:
        """`L = L_denoise + alignment term` of one micro-batch (global batch `batch_index`)
        and its terms (`loss`; the alignment's terms unweighted)."""
        device, recipe = self.device, self.recipe
        batch = batch.to(device).with_domain(recipe.data.domain)
        images, ref_mask = batch.images, batch.ref_mask
        inputs = {}
        if self.plan.needs_geometry:
            inputs = {"point_map": batch.point_map, "point_valid": batch.point_valid}
        if self.teacher is not None:
            with torch.no_grad(), self.accelerator.autocast():
                inputs["teacher"] = self.teacher(images)
        # this micro-batch's samples in the global stream: each draws from its own generator
        first = batch_index * recipe.train.batch_size
        first += self.accelerator.process_index * batch.batch_size
        draws = sample_generators(recipe.train.seed, first, batch.batch_size, device)
        with torch.no_grad():
            if recipe.codec.sample_posterior:
                latents = torch.stack(
                    [self.codec.encode(v, generator=g) for v, g in zip(images, draws, strict=True)]
                )
            else:
                latents = encode_views(self.codec, batch)
        noised = add_training_noise(self.scheduler, latents, ref_mask, draws)
        drop = camera_drop(recipe.train, batch_index, draws)
        with self.accelerator.autocast():  # what accelerate adds to a DDP model's forward
            run = probed_forward(
                self.prepared_model,
                batch,
                noised,
                drop_camera=drop,
                generator=self.generator,
                **inputs,
            )
        prediction, aligned = run.output
        denoise = denoising_loss(
            prediction, noised, ref_mask, self.scheduler, recipe.diffusion.min_snr_gamma
        )
        terms = {"denoise": denoise}
        loss = denoise
        if aligned is not None:
            terms.update(aligned.terms)
            loss = denoise + aligned.total
        terms["loss"] = loss
        return terms

    def forward_backward(self, batch: ViewBatch, batch_index: int) -> dict[str, torch.Tensor]:
        """Forward and backward of one micro-batch (global batch `batch_index`); return its
        loss terms. A loss that is not finite stops the run (`TrainingDiverged`) before the
        backward."""
        terms = self._loss_terms(batch, batch_index)
        self._check_finite(terms)
        self.accelerator.backward(terms["loss"])
        return terms

    def _check_finite(self, terms: dict[str, torch.Tensor]) -> None:
        finite = torch.isfinite(terms["loss"].detach()).float().reshape(1)
        if bool(self.accelerator.gather(finite).min() < 1):
            values = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
            latest = self.checkpoints.latest()
            kept = f"last good checkpoint: {latest}" if latest else "no checkpoint was written yet"
            raise TrainingDiverged(
                f"step {self.step + 1}: the loss is not finite ({values}); training stopped "
                f"before the update. {kept} (lower train.learning_rate or use "
                "train.mixed_precision=bf16/no, then --resume latest)"
            )

    def train_step(self) -> list[dict[str, float]]:
        """One optimizer step: pull the accumulation window's micro-batches, forward-backward
        each, then step optimizer, LR scheduler and EMA. Returns each micro-batch's terms."""
        accelerator, train = self.accelerator, self.recipe.train
        window = []
        for _ in range(train.grad_accumulation):
            with accelerator.accumulate(self.prepared_model):
                index = self.data_position
                terms = self.forward_backward(self.next_batch(), index)
                if accelerator.sync_gradients and train.grad_clip > 0:
                    accelerator.clip_grad_norm_(self.model.parameters(), train.grad_clip)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            window.append({name: value.detach().item() for name, value in terms.items()})
        self.last_lr = self.optimizer.param_groups[0]["lr"]
        self.lr_scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model)
        self.step += 1
        return window

    # -- checkpoint, validation ---------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Every process takes part (under fsdp each tensor is gathered from the shards); the
        main one writes the full-state files."""
        accelerator = self.accelerator
        main = accelerator.is_main_process
        if main:
            self.checkpoints.stage(self.step)
        accelerator.wait_for_everyone()
        folder = self.checkpoints.staging_path(self.step)
        ckpt.save_rng(folder, accelerator.process_index, {"train": self.generator})
        weights = None
        if self.sharded:  # the weights only, whole on the main process (in CPU memory)
            options = StateDictOptions(full_state_dict=True, cpu_offload=True)
            weights = get_model_state_dict(self.model, options=options)
        if main:
            model = accelerator.unwrap_model(self.prepared_model)
            method = self.recipe.alignment.method
            ckpt.save_model(folder, model.backbone, model.alignment, method, weights)
            dump_recipe(self.recipe, folder / rundir.CONFIG)
        ckpt.save_training_state(
            folder,
            step=self.step,
            data_position={"global_batches": self.data_position},
            world_size=accelerator.num_processes,
            write=main,
            **self._optimizer_state(),
        )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            self.checkpoints.commit(self.step)
        accelerator.wait_for_everyone()
        return self.checkpoints.root / rundir.checkpoint_name(self.step)

    def _watched_scorer(self, model: CameoTrainingModel) -> MatchScorer | None:
        """The method's own matches at the watched layer (CAMEO: its trained head), if any."""
        if model.alignment is None:
            return None
        return model.alignment.match_scorer(self.watched_layer[0])

    def _validate(self, step: int) -> None:
        """Main process: the held-out metrics of the validation batch (see
        `cameo_cli.train.validation`) and a grid of its truth, sampled and one-step views.
        Under fsdp every process runs the (identical) passes through the sharded model, under
        the training autocast (DDP validates the fp32 weights)."""
        main = self.accelerator.is_main_process
        if not (main or self.sharded):
            return
        from cameo_cli.pipeline import MultiViewPipeline

        recipe, batch = self.recipe, self.validation_batch
        model = self.accelerator.unwrap_model(self.prepared_model)
        model.eval()
        # with EMA, validation scores the averaged weights, as inference loads them
        averaged = self.ema.applied(model) if self.ema is not None else contextlib.nullcontext()
        gathered = root_gathered(model) if self.sharded else contextlib.nullcontext()
        # sharded parameters are gathered in the training precision (bf16): autocast mixes
        precision = self.accelerator.autocast() if self.sharded else contextlib.nullcontext()
        with averaged, gathered, precision:
            pipeline = MultiViewPipeline(
                model.backbone,
                self.codec,
                recipe.diffusion,
                recipe.data.num_views,
                scheduler=recipe.sample.scheduler,
                device=self.device,
                dtype=PRECISION_DTYPES[recipe.train.mixed_precision],
                domain=recipe.data.domain,
            )
            sample = recipe.sample
            sampled = sampled_views(
                pipeline, batch, steps=sample.steps, guidance=sample.guidance, seed=sample.seed
            )
            held_out, one_step = held_out_metrics(
                model.backbone,
                self.codec,
                self.scheduler,
                batch,
                seed=recipe.train.seed,
                probe=self.watched_layer,
                epsilon=recipe.alignment.epsilon,
                scorer=self._watched_scorer(model),
            )
        model.train()
        if not main:
            return
        truth = (batch.images + 1) / 2
        grid = torch.stack([truth, sampled, one_step], dim=1)
        image = grid_image(grid)
        save_png(image, self.output / rundir.SAMPLES / f"step-{step:06d}.png")
        sampled_metrics = {
            "val/psnr": target_psnr(sampled, batch),
            "val/sharpness": target_sharpness(sampled, batch),
        }
        lines, self.validation_lines = self.validation_lines, {}
        self.logger.metrics.log(step, {**sampled_metrics, **held_out, **lines})
        self.logger.metrics.log_image(step, "val/samples", image)

    # -- the run ------------------------------------------------------------------------------
    def start(self, resume_from: Path | None, *, overwrite: bool, command: list[str]) -> None:
        """Restore a checkpoint, write the run folder, wrap the model for accelerate, open the
        metrics log. The checkpoint is read first, so a broken one leaves the run folder as it
        was."""
        accelerator, train = self.accelerator, self.recipe.train
        if resume_from is not None:
            self._restore(resume_from)
        self._prepare_run_dir(resume_from, overwrite, command)
        self.model.train()
        if self.sharded:  # already sharded: accelerate steps the optimizer only
            self.prepared_model, self.optimizer = self.model, accelerator.prepare(self.optimizer)
        else:
            self.prepared_model, self.optimizer = accelerator.prepare(self.model, self.optimizer)
        loader = make_loader(
            self.dataset,
            train.batch_size,
            world_size=accelerator.num_processes,
            rank=accelerator.process_index,
            seed=train.seed,
            start=self.data_position,
            workers=self.recipe.data.workers,
        )
        self._batches = iter(loader)
        metrics = None
        if accelerator.is_main_process:
            resumed_at = None if resume_from is None else self.step
            metrics = MetricsLogger(self.output, accelerator, resumed_at)
            start_trackers(accelerator, self.recipe, self.output, resumed_at)
        self.logger = TrainLogger(Cadence(train.log_every, train.steps), metrics)

    def next_batch(self) -> ViewBatch:
        """This process's next micro-batch of the resumable stream."""
        self.data_position += 1
        return next(self._batches)

    def run(self, resume_from: Path | None, *, overwrite: bool, command: list[str]) -> Path:
        """Train until `train.steps`; the components log, validate and checkpoint on the way."""
        accelerator, train = self.accelerator, self.recipe.train
        self.start(resume_from, overwrite=overwrite, command=command)
        if self.step >= train.steps and resume_from is not None:
            return resume_from
        with TrainingProgress(train.steps, self.step, accelerator.is_main_process) as bar:
            while self.step < train.steps:
                for terms in self.train_step():
                    self.logger.add(terms)
                averages = self._reduce(self.logger.averages())
                bar.update(self.step, averages)
                if self.logger.should_log(self.step):
                    averages["lr"] = self.last_lr
                    averages["steps_per_s"] = bar.steps_per_second(self.step)
                    self.logger.log(self.step, averages)
                self.validator.maybe_validate(self.step)
                self.checkpointer.maybe_save(self.step)
        return self.checkpointer.last_saved or self.checkpointer.save(self.step)

    def _reduce(self, values: dict[str, float]) -> dict[str, float]:
        """Average loss terms over processes."""
        if self.accelerator.num_processes == 1:
            return values
        keys = sorted(values)
        tensor = torch.tensor([values[k] for k in keys], device=self.device)
        tensor = self.accelerator.reduce(tensor, reduction="mean")
        return {k: float(v) for k, v in zip(keys, tensor.tolist(), strict=True)}
