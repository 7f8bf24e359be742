"""`train(cfg)`: one textual-inversion run from a folder of images to a stored embedding.

data (checked before any model loads) -> model -> new rows -> cached latents -> steps (validation, early
stopping, previews, snapshots, checkpoints) -> the embedding, with provenance, into the store
"""

from __future__ import annotations

import json
import math
import signal
from collections.abc import Callable
from pathlib import Path

import torch

from embeddings import Embedding, Store, load_canonical, save_canonical
from embeddings.errors import TokensmithError
from trainers.config import PER_FAMILY, TrainConfig
from trainers.data import build_samples, fill_template, load_images, template_set
from trainers.families import check_family_keys, spec_for
from trainers.latents import encode_samples, run_cache
from trainers.loop import (
    Batch,
    DiffusionMath,
    draw_batch,
    pick_text_attention,
    set_text_attention,
    step_loss,
    tune_malloc,
)
from trainers.modelprep import attach_rows, prepare_model, resolve_vectors, restore_model, weight_dtype
from trainers.processes import any_process, apply_update, joined_as_main, mean_over_processes
from trainers.rows import detach_rows
from trainers.runfolder import RunFolder
from trainers.schedules import schedule_for
from trainers.session import (
    RunState,
    StopFlag,
    check_resume,
    check_trackers,
    check_train_further,
    default_home,
    resolve_run_dir,
    start_trackers,
    write_run_files,
)
from trainers.validation import (
    DEFAULT_GUIDANCE,
    EarlyStopper,
    build_validation_set,
    grid,
    preview_metric,
    sample_images,
)

Progress = Callable[[dict], None]
MAX_BAD_LOSSES = 3  # consecutive non-finite losses (fp16 skips those steps) before the run is failed


def train(
    cfg: TrainConfig,
    *,
    home: Path | None = None,
    on_progress: Progress | None = None,
    model=None,
    echo: Callable[[str], None] | None = None,
) -> Embedding:
    """Learn `cfg.name` from `cfg.images`, store it under `home` and return it (see the module docstring).

    `on_progress` gets every progress record (the dicts of progress.jsonl); `echo` gets the lines a user
    should see (run folder, equivalent commands). `model` (a trainers.models.LoadedModel) skips loading
    `cfg.model`; the model is left as it was found (after an fp16/bf16 run its frozen weights are back in
    their own dtype but rounded to half precision: pass a fresh copy if that matters).
    """
    home = Path(home) if home else default_home()
    store = Store.for_home(home)
    if not cfg.name:
        raise TokensmithError("no name given; pass --name NAME (the prompt trigger becomes <NAME>)")
    store.path(cfg.name)  # validates the name before anything slow happens
    folder = RunFolder(resolve_run_dir(cfg, home))
    last = (folder.read_progress() or [{}])[-1]
    if cfg.resume and last.get("event") == "done":
        check_train_further(cfg, folder, last)
    if store.exists(cfg.name) and not cfg.overwrite:
        raise TokensmithError(
            f"an embedding named '{cfg.name}' is already stored; pass --overwrite or another --name"
        )
    check_trackers(cfg)
    images = load_images(cfg.images, min_images=cfg.min_images)
    cfg = cfg.replace(run_dir=str(folder.root))
    folder.create(resume=cfg.resume)
    if cfg.resume:
        check_resume(cfg, folder)
    if not joined_as_main():  # another process of an `accelerate launch` run writes and tells
        return _run(cfg, images, folder, store, model or _load(cfg), home, None)
    commands = write_run_files(cfg, folder)
    if echo:
        echo(f"run folder: {folder.root}")
        echo("equivalent command: " + commands[0])
        echo("multi-GPU / multi-node: " + commands[1])
    return _run(cfg, images, folder, store, model or _load(cfg), home, on_progress)


def _load(cfg: TrainConfig):
    """The run's model, loaded straight in its frozen weights' precision (an SDXL checkpoint in bf16 needs
    half the memory of a float32 load that is cast afterwards)."""
    from trainers.models import load_model

    dtype = weight_dtype(cfg.mixed_precision)
    return load_model(cfg.model, dtype=dtype, config=cfg.model_config or None)


def _run(cfg, images, folder: RunFolder, store, model, home, on_progress) -> Embedding:
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    tune_malloc()
    # Accelerate keeps one AcceleratorState per process and refuses another precision once one is set; a
    # process that trains twice (the Python API, the test suite) needs a fresh one. Distributed setup is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    stop = StopFlag.install(signal.SIGTERM)
    # Accumulation is the loop's own (each micro-batch's loss is divided by grad_accum); telling Accelerate
    # too would divide again in accelerator.backward.
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision,
        log_with=cfg.trackers or None,
        project_dir=str(folder.root),
    )
    spec = spec_for(model.family)
    check_family_keys(spec.name, model.encoders)
    originals = prepare_model(model, accelerator, cfg)
    conditioner = None
    try:
        resolved = {}  # per-family defaults, resolved now that the family is known; config.toml records them
        if not cfg.vectors:
            resolved["vectors"] = resolve_vectors(cfg, spec, store)
        for key in PER_FAMILY:
            if getattr(cfg, key) < 0:
                resolved[key] = getattr(spec, key)
        if resolved:
            cfg = cfg.replace(**resolved)
            if accelerator.is_main_process:
                write_run_files(cfg, folder)
        state = RunState(cfg=cfg, folder=folder, accelerator=accelerator, on_progress=on_progress)
        start_trackers(cfg, accelerator)
        if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            raise TokensmithError("--mixed-precision fp16 needs a GPU (no loss scaling on CPU): use bf16")
        conditioner = attach_rows(model, spec, cfg, store)
        result = _loop(cfg, images, folder, model, spec, conditioner, accelerator, state, stop)
        emb = _finish(cfg, model, spec, conditioner, folder, store, state, result)
        conditioner = None
        return emb
    except BaseException as exc:
        if accelerator.is_main_process:
            folder.event("failed", f"{type(exc).__name__}: {exc}", name=cfg.name)
        raise
    finally:
        if conditioner is not None:
            for rows in conditioner.rows:
                detach_rows(rows)
        restore_model(model, originals)
        stop.uninstall()
        if cfg.trackers:
            accelerator.end_training()


# --- the run ---


# the config keys that decide the latent cache: a resume reuses the run's cache file only when they agree
LATENT_KEYS = ("images", "model", "resolution", "crop", "flip", "alpha_weight", "refine_latents", "seed")


def _loop(cfg, images, folder, model, spec, conditioner, accelerator, state, stop) -> dict:
    pipe, device = model.pipe, accelerator.device
    multiple = int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    resolution = cfg.resolution or model.resolution
    samples = build_samples(
        images,
        resolution=resolution,
        crop=cfg.crop,
        flip=cfg.flip,
        alpha_weight=cfg.alpha_weight,
        multiple=multiple,
        seed=cfg.seed,
    )
    cache = run_cache(
        folder.latents_path,
        lambda: encode_samples(pipe.vae, samples, device=device, refine_steps=cfg.refine_latents),
        made_for={k: getattr(cfg, k) for k in LATENT_KEYS},
        accelerator=accelerator,
        reuse=cfg.resume,
    )
    templates = template_set(cfg.templates, family_object_templates=spec.object_templates)
    captions = [image.caption for image in images]
    token_text = conditioner.token_text()
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
    optimizer = accelerator.prepare(adamw)
    lr_at = schedule_for(
        cfg.lr_schedule, cfg.learning_rate, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps
    )
    stopper = EarlyStopper(cfg.dvar_window, cfg.dvar_threshold, cfg.min_steps)
    start = state.resume_from(params, stopper) if cfg.resume else 0
    if state.text_attention:  # resumed: the original run's choice, so the arithmetic is the same
        set_text_attention(conditioner, state.text_attention)
    else:
        state.text_attention = pick_text_attention(conditioner, device)
    # previews, and the metric scoring them, are the main process's: the others would load CLIP for nothing
    metric = preview_metric(cfg, spec, model.family, images) if accelerator.is_main_process else None
    guidance = cfg.preview_guidance or DEFAULT_GUIDANCE.get(model.family, 7.5)
    preview_prompt = fill_template(cfg.preview_prompt, f"<{cfg.name}>", "")

    def validation_loss() -> float:
        prompts = [fill_template(t, token_text, c) for t, c in zip(val.templates, val.captions, strict=True)]
        batch = Batch(val.latents, val.noise, val.timesteps, prompts, val.sizes, val.weights).to(device)
        with torch.no_grad(), accelerator.autocast():
            loss = step_loss(pipe.unet, conditioner, maths, batch)
        return mean_over_processes(accelerator, float(loss))

    def previews(step: int) -> dict:
        if not cfg.preview_images or not accelerator.is_main_process:
            return {}
        shots = sample_images(
            pipe,
            preview_prompt,
            count=cfg.preview_images,
            seed=cfg.seed,
            steps=cfg.preview_steps,
            guidance=guidance,
        )
        state.last_preview = grid(shots)
        folder.save_preview(step, state.last_preview)
        return metric.score(shots) if metric else {}

    def micro_batch(micro: int) -> Batch:
        # Process p of P takes global micro-batch micro·P + p: its images and its own random draws, so P
        # processes compute what one process computes with P times the accumulation.
        index = micro * accelerator.num_processes + accelerator.process_index
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index + 1)
        indices = state.batch_indices(samples, cfg.batch_size, index)
        choice = torch.randint(0, len(templates), (len(indices),), generator=generator).tolist()
        prompts = [
            fill_template(templates[c], token_text, captions[samples[i].image_index])
            for c, i in zip(choice, indices, strict=True)
        ]
        return draw_batch(cache, indices, prompts, maths, generator).to(device)

    if start == 0:
        state.log(
            0,
            loss=None,
            val_loss=validation_loss() if cfg.validate_every else None,
            lr=lr_at(0),
            text_attention=state.text_attention,
            **previews(0),
        )
    step, reason, bad_losses = start, "finished", 0
    state.start_clock(start)
    while step < cfg.steps:
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        loss = 0.0
        for k in range(cfg.grad_accum):
            with accelerator.autocast():
                micro_loss = (
                    step_loss(
                        pipe.unet,
                        conditioner,
                        maths,
                        micro_batch(step * cfg.grad_accum + k),
                        min_snr_gamma=cfg.min_snr_gamma,
                    )
                    / cfg.grad_accum
                )
            accelerator.backward(micro_loss)
            loss += float(micro_loss.detach())
        apply_update(params, optimizer, accelerator, cfg.max_grad_norm)
        step += 1
        loss = mean_over_processes(accelerator, loss)  # the whole batch's
        bad_losses = 0 if math.isfinite(loss) else bad_losses + 1
        if bad_losses >= MAX_BAD_LOSSES:
            raise TokensmithError(
                f"the loss was not finite for {bad_losses} steps in a row (step {step}); try "
                "--mixed-precision bf16 or no, or a lower --learning-rate"
            )
        record = {"loss": loss, "lr": lr_at(step - 1)}
        stop_early = False
        if cfg.validate_every and (step % cfg.validate_every == 0 or step == cfg.steps):
            record["val_loss"] = validation_loss()
            stop_early = cfg.early_stopping and stopper.update(step, record["val_loss"])
        periodic = bool(cfg.save_every) and step % cfg.save_every == 0
        ends = step == cfg.steps or stop_early
        if periodic or ends:
            scores = previews(step)
            record.update(scores)
            state.snapshot(step, conditioner, model, spec)
            state.consider(step, scores, metric.rank if metric else None)
        state.log(step, **record)
        if periodic or ends:  # the last one too: `--resume --steps N` trains a finished run further
            state.checkpoint(step, params, stopper)
        if stop_early:
            reason = "early_stopped"
            break
        # a stop asked of any process (a SIGTERM to the main one only, as the studio sends) ends every
        # process at the same step
        if any_process(accelerator, stop.raised):
            if not (periodic or ends):  # else this step is kept already
                state.snapshot(step, conditioner, model, spec)
                state.checkpoint(step, params, stopper)
            reason = "stopped"
            break
    return {"steps": step, "reason": reason, "stopper": stopper}


# --- the result ---


def _finish(cfg, model, spec, conditioner, folder, store, state, result) -> Embedding:
    vectors = {rows.key: detach_rows(rows) for rows in conditioner.rows}
    trained = result["steps"]
    kept = trained
    preview = state.last_preview
    if result["reason"] != "stopped" and state.accelerator.is_main_process:
        kept = state.kept_step(trained)
    if kept != trained:  # keep = best: an earlier snapshot's previews scored better than the last ones
        vectors = load_canonical(folder.snapshot_path(kept)).vectors
        preview = _open_image(folder.preview_path(kept)) or preview
    emb = state.embedding(
        vectors, model, spec, steps=kept, trained=trained, stopper=result["stopper"], reason=result["reason"]
    )
    if not state.accelerator.is_main_process:
        return emb
    if result["reason"] == "stopped":
        folder.event(
            "stopped",
            f"stopped at step {result['steps']}; resume with --resume",
            name=cfg.name,
            step=result["steps"],
        )
        return emb
    save_canonical(emb, folder.snapshots / "final.safetensors")
    path = store.put(emb, overwrite=cfg.overwrite, preview=preview)
    how = "; ".join(filter(None, [result["reason"].replace("_", " "), kept_note(kept, trained)]))
    message = f"stored {cfg.name} after {trained} steps ({how}) at {path}"
    if cfg.push_to_hub:
        from trainers.hub import push_embedding

        url = push_embedding(emb, path, cfg.push_to_hub, private=cfg.hub_private, preview=preview)
        message += f"; uploaded to {url}"
    folder.event(
        "done", message, name=cfg.name, path=str(path), steps=trained, kept=kept, reason=result["reason"]
    )
    return emb


def _open_image(path: Path):
    """The PNG at `path` loaded into memory, or None when it is missing (previews were off)."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as image:
        return image.copy()


def kept_note(kept: int, trained: int) -> str:
    """How every door tells which step was stored: '' when the last, else 'kept step 75 of 150, ...'."""
    return "" if kept == trained else f"kept step {kept} of {trained}, whose previews scored best"


def summary(emb: Embedding) -> dict:
    """The trainer's provenance of an embedding as a dict (decoded from its metadata)."""
    return json.loads(emb.meta.get("trainer", "{}"))
