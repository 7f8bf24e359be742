"""The steps of one run: what they use is built once (`Steps.prepare`), then `Steps.run` takes optimizer
steps with validation, early stopping, previews, snapshots and checkpoints until the run ends.

A step is a pure function of (seed, step) and the checkpointed state, so a resumed run replays what an
uninterrupted one computes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from embeddings.errors import TokensmithError
from trainers.config import TrainConfig
from trainers.data import fill_template, template_set
from trainers.families import Conditioner, FamilySpec, default_guidance
from trainers.latents import LatentCache, encode_samples, run_cache
from trainers.loop import Batch, DiffusionMath, draw_batch, pick_text_attention, set_text_attention, step_loss
from trainers.processes import any_process, apply_update, mean_over_processes
from trainers.runfolder import RunFolder
from trainers.samples import Sample, build_samples
from trainers.schedules import schedule_for
from trainers.session import RunRecord, StopFlag
from trainers.validation import (
    EarlyStopper,
    ValidationSet,
    build_validation_set,
    grid,
    preview_metric,
    sample_images,
)
from trainers.worldcaptions import world_captions

MAX_BAD_LOSSES = 3  # consecutive non-finite losses (fp16 skips those steps) before the run is failed
# the config keys that decide the latent cache: a resume reuses the run's cache file only when they agree
LATENT_KEYS = ("images", "model", "resolution", "crop", "flip", "alpha_weight", "refine_latents", "seed")


def count_bad_losses(loss: float, before: int, step: int) -> int:
    """Consecutive non-finite losses up to `step`; fails the run at MAX_BAD_LOSSES (fp16 skips such steps,
    but a run whose every step is skipped learns nothing)."""
    bad = 0 if math.isfinite(loss) else before + 1
    if bad >= MAX_BAD_LOSSES:
        raise TokensmithError(
            f"the loss was not finite for {bad} steps in a row (step {step}); try --mixed-precision bf16 or "
            "no, or a lower --learning-rate"
        )
    return bad


def check_prompt_length(conditioner: Conditioner, templates, captions, cfg: TrainConfig) -> str | None:
    """Refuse a run whose token would be cut off a training prompt at the tokenizer's length: the cut-off
    vectors of the token would never be trained (and the stored token would not fit in a prompt). A prompt
    cut only after its token (a long caption's tail) trains as A1111 and kohya train it: truncated by the
    tokenizer. Returns the note that says so, or None when no prompt is cut."""
    token_text = conditioner.token_text()
    pairs = [(template, caption) for template in templates for caption in dict.fromkeys(captions)]
    prompts = [fill_template(t, token_text, c) for t, c in pairs]
    # each prompt up to its token's last vector: the part that must fit (a caption before [name] counts)
    reaches = [prompt[: prompt.rfind(token_text) + len(token_text)] for prompt in prompts]
    note = None
    for rows in conditioner.rows:
        limit = rows.tokenizer.model_max_length  # start and end tokens included
        if limit > 100_000:  # a tokenizer without a length of its own: the text encoder says no more
            continue
        # verbose=False: counting a long prompt's tokens is no "indexing errors" warning
        lengths = [len(ids) for ids in rows.tokenizer(prompts, verbose=False).input_ids]
        reach, at = max(
            (len(ids), i) for i, ids in enumerate(rows.tokenizer(reaches, verbose=False).input_ids)
        )
        if reach > limit:
            raise TokensmithError(_token_cut_off(pairs[at], lengths[at], reach, limit, cfg))
        cut = [i for i, length in enumerate(lengths) if length > limit]
        if cut and note is None:
            longest = max(cut, key=lambda i: lengths[i])
            shown = fill_template(*_named(pairs[longest], cfg))
            note = (
                f"{len(cut)} of {len(prompts)} training prompts are longer than the {limit} tokens this "
                f"model reads (the longest, {shown!r}, is {lengths[longest]}): they are cut at the end, "
                "after the token, so only their captions' last words are not trained on"
            )
    return note


def _named(pair: tuple[str, str], cfg: TrainConfig) -> tuple[str, str, str]:
    """fill_template's arguments to show a (template, caption) pair with the token as the user writes it."""
    template, caption = pair
    return template, f"<{cfg.name}>", caption


def _token_cut_off(pair: tuple[str, str], length: int, reach: int, limit: int, cfg: TrainConfig) -> str:
    """The refusal of a prompt whose token's vectors end at token `reach`, past the tokenizer's `limit`."""
    template, caption = pair
    shown = fill_template(*_named(pair, cfg))
    fit = cfg.vectors - (reach - limit)
    advice = f"--vectors {fit} or fewer" if fit >= 1 else "shorter captions or templates"
    if caption and "[filewords]" in template and template.index("[filewords]") < template.rindex("[name]"):
        advice += " (or put [name] before [filewords] in the templates: then only a caption's end is cut)"
    where = "" if reach == length else f" ({reach} up to the end of its token)"
    return (
        f"the training prompt {shown!r} is {length} tokens with {cfg.vectors} vectors, more than the {limit} "
        f"this model reads{where}; use {advice}"
    )


def check_resolution(resolution: int, multiple: int, native: int) -> None:
    """Refuse a training size the model cannot take: its VAE and UNet halve the sides again and again, so
    they must be a multiple of `multiple` px (64 for SD; a bucket's sides are rounded to it)."""
    if resolution % multiple == 0:
        return
    below, above = resolution // multiple * multiple, (resolution // multiple + 1) * multiple
    sizes = f"{below} or {above}" if below else str(above)
    raise TokensmithError(
        f"training resolution {resolution} px does not fit this model: its VAE and UNet need sides that are "
        f"a multiple of {multiple} px; use --resolution {sizes} (or 0 for its native {native})"
    )


@dataclass(frozen=True)
class Ending:
    """How the steps ended: the last step taken and why ("finished" | "early_stopped" | "stopped")."""

    steps: int
    reason: str
    stopper: EarlyStopper


@dataclass
class Steps:
    """The run's data, latent cache, validation set, optimizer and schedule, and the steps that use them."""

    cfg: TrainConfig
    model: object  # trainers.models.LoadedModel
    spec: FamilySpec
    conditioner: Conditioner
    accelerator: object
    state: RunRecord
    samples: list[Sample]
    cache: LatentCache
    templates: tuple[str, ...]
    captions: list[str]
    token_text: str  # the concept's tokens in a prompt: '<cat> <cat>_1'
    maths: DiffusionMath
    val: ValidationSet
    params: list[torch.Tensor]
    optimizer: object
    lr_at: Callable[[int], float]
    stopper: EarlyStopper
    metric: object  # a preview metric (judge or CLIP), or None off the main process or when there is none

    @classmethod
    def prepare(
        cls,
        cfg,
        images,
        model,
        spec,
        conditioner,
        accelerator,
        state: RunRecord,
        echo: Callable[[str], None] | None = None,
    ) -> Steps:
        """Crop and cache the images' latents, build the validation set, the optimizer over the new rows and
        the learning-rate schedule; load the newest checkpoint into them when resuming. `echo` gets the
        note on training prompts that are cut after their token."""
        pipe, device = model.pipe, accelerator.device
        multiple = int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
        check_resolution(cfg.resolution or model.resolution, multiple, model.resolution)
        samples = build_samples(
            images,
            resolution=cfg.resolution or model.resolution,
            crop=cfg.crop,
            flip=cfg.flip,
            alpha_weight=cfg.alpha_weight,
            multiple=multiple,
            seed=cfg.seed,
        )
        templates = template_set(cfg.templates, family_object_templates=spec.object_templates)
        # the demo world names a background that varies, as its own captions do (trainers.worldcaptions)
        captions = world_captions(images) if spec.name == "demo" else [image.caption for image in images]
        if (note := check_prompt_length(conditioner, templates, captions, cfg)) and echo:
            echo(f"note: {note}")
        cache = run_cache(
            state.folder.latents_path,
            lambda: encode_samples(pipe.vae, samples, device=device, refine_steps=cfg.refine_latents),
            made_for={k: getattr(cfg, k) for k in LATENT_KEYS},
            accelerator=accelerator,
            reuse=cfg.resume,
        )
        maths = DiffusionMath.from_scheduler(pipe.scheduler)
        val = build_validation_set(
            cache,
            samples,
            templates,
            captions,
            size=cfg.validation_size,
            num_timesteps=maths.num_timesteps,
            seed=cfg.seed,
        )
        params = [rows.rows for rows in conditioner.rows]
        # prepared so fp16's loss scaling is undone before the step (and inf/nan steps are skipped)
        adamw = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
        lr_at = schedule_for(
            cfg.lr_schedule, cfg.learning_rate, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps
        )
        # previews and the metric scoring them are the main process's: the others would load CLIP for nothing
        scored = accelerator.is_main_process and cfg.preview_images > 0
        metric = preview_metric(cfg, spec, model.family, images) if scored else None
        stopper = EarlyStopper(cfg.dvar_window, cfg.dvar_threshold, cfg.min_steps)
        return cls(
            cfg=cfg,
            model=model,
            spec=spec,
            conditioner=conditioner,
            accelerator=accelerator,
            state=state,
            samples=samples,
            cache=cache,
            templates=templates,
            captions=captions,
            token_text=conditioner.token_text(),
            maths=maths,
            val=val,
            params=params,
            optimizer=accelerator.prepare(adamw),
            lr_at=lr_at,
            stopper=stopper,
            metric=metric,
        )

    @property
    def folder(self) -> RunFolder:
        return self.state.folder

    # --- the run ---
    def run(self, stop: StopFlag) -> Ending:
        """Take steps from the newest checkpoint (or step 0) until the run finishes, stops early or `stop` is
        raised; every step is logged, and kept (snapshot, previews, checkpoint) every save_every steps."""
        cfg = self.cfg
        start = self.state.resume_from(self.params, self.stopper) if cfg.resume else 0
        self._choose_text_attention()
        if start == 0:
            self.log_start()
        # from here a stop waits for the step in hand to end (or lets the run be stored)
        stop.preparing = False
        if start and cfg.early_stopping and self.stopper.stopped_at(start):  # killed after it stopped early
            return Ending(start, "early_stopped", self.stopper)
        step, bad_losses = start, 0
        self.state.start_clock(start)
        while step < cfg.steps:
            loss = self.update(step)
            step += 1
            bad_losses = count_bad_losses(loss, bad_losses, step)
            record = {"loss": loss, "lr": self.lr_at(step - 1)}
            stop_early = self.validate(step, record)
            kept = self.keep(step, record, ending=stop_early or step == cfg.steps)
            if stop_early:
                return Ending(step, "early_stopped", self.stopper)
            # a stop asked of any process (a SIGTERM to the main one only, as the studio sends) ends every
            # process at the same step; one during the last step lets the finished run be stored
            if step < cfg.steps and any_process(self.accelerator, stop.raised):
                if not kept:
                    self.state.snapshot(step, self.conditioner, self.model, self.spec)
                    self.state.checkpoint(step, self.params, self.stopper)
                return Ending(step, "stopped", self.stopper)
        return Ending(step, "finished", self.stopper)

    def log_start(self) -> None:
        """Step 0's record: the init's validation loss and preview scores, the text attention chosen."""
        val_loss = self.validation_loss() if self.cfg.validate_every else None
        scores = self.previews(0)
        attention = self.state.text_attention
        self.state.log(0, loss=None, val_loss=val_loss, lr=self.lr_at(0), text_attention=attention, **scores)

    def update(self, step: int) -> float:
        """One optimizer step (grad_accum micro-batches) from step `step`; returns the whole batch's loss."""
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(step)
        loss = 0.0
        for k in range(cfg.grad_accum):
            batch = self.micro_batch(step * cfg.grad_accum + k)
            with self.accelerator.autocast():
                micro_loss = self.loss(batch, min_snr_gamma=cfg.min_snr_gamma) / cfg.grad_accum
            self.accelerator.backward(micro_loss)
            loss += float(micro_loss.detach())
        apply_update(self.params, self.optimizer, self.accelerator, cfg.max_grad_norm)
        return mean_over_processes(self.accelerator, loss)

    def validate(self, step: int, record: dict) -> bool:
        """Add the validation loss to `record` when one is due; True when early stopping ends the run here."""
        cfg = self.cfg
        if not cfg.validate_every or not (step % cfg.validate_every == 0 or step == cfg.steps):
            return False
        record["val_loss"] = self.validation_loss()
        return cfg.early_stopping and self.stopper.update(step, record["val_loss"])

    def keep(self, step: int, record: dict, *, ending: bool) -> bool:
        """Log `step`; every save_every steps and at the end also score previews, write a snapshot and a
        checkpoint. True when this step was kept."""
        kept = ending or (bool(self.cfg.save_every) and step % self.cfg.save_every == 0)
        if kept:
            scores = self.previews(step)
            record.update(scores)
            self.state.snapshot(step, self.conditioner, self.model, self.spec)
            self.state.consider(step, scores, self.metric.rank if self.metric else None)
        self.state.log(step, **record)
        if kept:  # the last one too: `--resume --steps N` trains a finished run further
            self.state.checkpoint(step, self.params, self.stopper)
        return kept

    # --- what a step draws and computes ---
    def micro_batch(self, micro: int) -> Batch:
        """Global micro-batch `micro`'s images, prompts and random draws, on the training device.

        Process p of P takes global micro-batch micro·P + p: its images and its own random draws, so P
        processes compute what one process computes with P times the accumulation.
        """
        accelerator = self.accelerator
        index = micro * accelerator.num_processes + accelerator.process_index
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + index + 1)
        indices = self.state.batch_indices(self.samples, self.cfg.batch_size, index)
        choice = torch.randint(0, len(self.templates), (len(indices),), generator=generator).tolist()
        prompts = [
            fill_template(self.templates[c], self.token_text, self.captions[self.samples[i].image_index])
            for c, i in zip(choice, indices, strict=True)
        ]
        return draw_batch(self.cache, indices, prompts, self.maths, generator).to(accelerator.device)

    def loss(self, batch: Batch, *, min_snr_gamma: float = 0.0) -> torch.Tensor:
        """The batch's loss, differentiable in the new rows."""
        unet = self.model.pipe.unet
        return step_loss(unet, self.conditioner, self.maths, batch, min_snr_gamma=min_snr_gamma)

    def validation_loss(self) -> float:
        """The loss on the fixed (image, noise, timestep, template) set, averaged over processes."""
        val = self.val
        prompts = [
            fill_template(t, self.token_text, c) for t, c in zip(val.templates, val.captions, strict=True)
        ]
        batch = Batch(val.latents, val.noise, val.timesteps, prompts, val.time_ids, val.weights)
        with torch.no_grad(), self.accelerator.autocast():
            loss = self.loss(batch.to(self.accelerator.device))
        return mean_over_processes(self.accelerator, float(loss))

    def previews(self, step: int) -> dict:
        """Fixed-seed preview samples of step `step` (main process), saved as a grid; their metric scores."""
        cfg = self.cfg
        if not cfg.preview_images or not self.accelerator.is_main_process:
            return {}
        shots = sample_images(
            self.model.pipe,
            fill_template(cfg.preview_prompt, f"<{cfg.name}>", ""),
            count=cfg.preview_images,
            seed=cfg.seed,
            steps=cfg.preview_steps,
            guidance=cfg.preview_guidance or default_guidance(self.model.family),
        )
        self.state.last_preview = grid(shots)
        self.folder.save_preview(step, self.state.last_preview)
        return self.metric.score(shots) if self.metric else {}

    def _choose_text_attention(self) -> None:
        if self.state.text_attention:  # resumed: the original run's choice, so the arithmetic is the same
            set_text_attention(self.conditioner, self.state.text_attention)
        else:
            self.state.text_attention = pick_text_attention(self.conditioner, self.accelerator.device)
