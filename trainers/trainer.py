"""`train(cfg)`: one textual-inversion run from a folder of images to a stored embedding.

data (checked before any model loads) -> model -> new rows -> cached latents -> steps (validation, early
stopping, previews, snapshots, checkpoints) -> the embedding, with provenance, into the store
"""

from __future__ import annotations

import contextlib
import json
import signal
from collections.abc import Callable
from pathlib import Path

from embeddings import Embedding, Store, load_canonical, save_canonical
from embeddings.errors import TokensmithError
from trainers.commands import home_from_environment
from trainers.config import PER_FAMILY, TrainConfig, setting_notes, with_absolute_paths
from trainers.data import check_alpha, load_images, template_set
from trainers.datanotes import data_notes
from trainers.ending import end_stored, open_image, record_done
from trainers.families import check_family_keys, spec_for
from trainers.hub import UploadError
from trainers.loop import tune_malloc
from trainers.memory import OutOfMemory, out_of_memory_advice
from trainers.modelprep import (
    attach_rows,
    check_init_fits,
    init_note,
    prepare_model,
    resolve_vectors,
    restore_model,
    stored_init,
    weight_dtype,
)
from trainers.models import check_model_spec, demo_model_dir, on_demo_world, planned_encoder_keys
from trainers.pathchecks import MODEL_CONFIG_UNUSED, check_clip_model, check_model_config, model_config_unused
from trainers.processes import accelerator_for, has_gpu, joined_as_main, launch_size, launcher_notes, on_cpu
from trainers.resume import (
    ResumeRefused,
    check_resume,
    check_resume_loaded,
    check_train_further,
    image_list,
    template_record,
    with_run_values,
)
from trainers.rows import detach_rows
from trainers.runfolder import RunFolder, disk_full_advice
from trainers.session import (
    RunRecord,
    StopFlag,
    StopRequested,
    check_trackers,
    claim_run_folder,
    resolve_run_dir,
    run_commands,
    start_trackers,
    write_run_files,
)
from trainers.steps import Ending, Steps
from trainers.storing import check_storable, store_result, stored_result
from trainers.writes import DiskFull, writing

Progress = Callable[[dict], None]


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
    their own dtype but rounded to half precision: pass a fresh copy if that matters). A failed
    `push_to_hub` upload raises UploadError once the run is done and stored; its `embedding` is the result.
    """
    home = (Path(home) if home else home_from_environment()).expanduser().resolve()  # commands name it
    store = Store.for_home(home)
    if not cfg.name:
        raise TokensmithError("no name given; pass --name NAME (the prompt trigger becomes <NAME>)")
    if not cfg.images.strip():  # not the current folder: `python -m trainers` with a config that has none
        raise TokensmithError(
            'no images given; pass --images DIR (images = "DIR" in a config file), the folder of your '
            "training images"
        )
    store.path(cfg.name)  # validates the name before anything slow happens
    # local paths stored absolute: a resume or `accelerate launch` from another folder finds them
    cfg = with_absolute_paths(cfg)
    if model is not None:  # the config, its equivalent command and the latent cache name the model trained
        cfg = cfg.replace(model=model.source)
    folder = RunFolder(resolve_run_dir(cfg, home))
    if cfg.resume:  # what the resume leaves to the family's default is the run's own value
        cfg = with_run_values(cfg, folder)
    if cfg.images and folder.root.expanduser().resolve() == Path(cfg.images):
        raise TokensmithError(
            f"--run-dir {folder.root} is the images folder; the run's files would mix with the images "
            "(and be trained on): pass another --run-dir"
        )
    last = (folder.read_progress() or [{}])[-1]
    if cfg.resume and last.get("event") == "done":
        check_train_further(cfg, folder, last)
    elif cfg.resume and (stored := stored_result(cfg, folder, store)) is not None:
        return end_stored(cfg, folder, store, stored, home, echo)  # killed after its store write
    _check_before_loading(cfg, store, model, echo)
    # each image kept only as large as its crops need as soon as it is read, not at a photo's size
    images = load_images(cfg.images, min_images=cfg.min_images, fit_to=largest_resolution(cfg, model))
    check_alpha(images, alpha_weight=cfg.alpha_weight)
    template_set(cfg.templates)  # a missing or bad template file, before a run folder names the run
    main = joined_as_main()  # False in the other processes of an `accelerate launch` run
    stop = StopFlag.install(signal.SIGTERM, signal.SIGINT)
    try:
        if not main:  # they share the main process's folder; it writes the run's files and tells
            return _start(cfg, images, folder, store, model, home, stop, main=False)
        folder = claim_run_folder(cfg, home, folder)
        try:
            return _start(cfg, images, folder, store, model, home, stop, on_progress=on_progress, echo=echo)
        finally:
            folder.release()  # a later run (or a resume) may take the folder, even from this same process
    except DiskFull as exc:  # writing the run's first files (the run's own failures are worded in _run)
        raise disk_full_advice(exc, folder, home) from None
    except StopRequested:  # a Ctrl-C while preparing (a SIGTERM then ends the process: StopFlag)
        stop.record_stop()
        raise RunStopped(stopped_preparing(folder)) from None
    finally:
        stop.uninstall()


class RunStopped(TokensmithError):
    """The run was stopped (Ctrl-C) while it prepared, before a new step: there is no embedding to return."""


def stopped_preparing(folder: RunFolder) -> str:
    """The `stopped` message of a run stopped while it prepared: what --resume will do (nothing, before the
    run folder has its config)."""
    if not folder.config_path.exists():
        return "stopped before the run began; run the same command again"
    step = folder.checkpoint_step()
    if step is None:
        return "stopped while preparing, before any step was taken; run it again with --resume"
    return f"stopped while preparing to resume, nothing more trained; --resume continues from step {step}"


def _start(cfg, images, folder, store, model, home, stop, *, main=True, on_progress=None, echo=None):
    """Create the run folder (checked for a resume), write its files, load the model and run."""
    cfg = cfg.replace(run_dir=str(folder.root))
    folder.create(resume=cfg.resume, main=main)
    if cfg.resume:
        check_resume(cfg, folder, images, home=home)
    elif main:
        folder.write_image_list(image_list(images))
        folder.write_template_record(template_record(cfg.templates))
    # a resume from a checkpoint writes the run's files once the model has loaded and the checkpoint has
    # been compared with the resolved config (_run): a refused resume leaves them the run's own
    continues = cfg.resume and folder.latest_checkpoint() is not None
    if main:
        processes = launch_size()
        write = run_commands if continues else write_run_files
        commands, notes = write(cfg, folder, home=home, processes=processes, cpu=on_cpu())
        # from here a stop while preparing is recorded: --resume finds the run by its config
        stop.on_stop = lambda: folder.event("stopped", stopped_preparing(folder), name=cfg.name)
    if main and echo:
        echo(f"run folder: {folder.root}")
        echo("equivalent command: " + commands[0])
        launch = f"this launch ({processes} processes): " if processes > 1 else "multi-GPU / multi-node: "
        echo(launch + commands[1])
        demo_world = model.family == "demo" if model is not None else on_demo_world(cfg.model)
        found = data_notes(cfg.images, images, cfg.templates, demo_world=demo_world, crop=cfg.crop)
        for note in [*found, *notes, *setting_notes(cfg)]:
            echo(f"note: {note}")
        echo(f"preparing: loading the model, {preparing_what(cfg, folder)}")
    if model is None:
        try:
            model = _load(cfg)
        except BaseException as exc:  # the run folder says why it ended (the studio shows it)
            _record_end(folder, cfg, exc, stop, main=main)
            raise
    if not main:
        on_progress = echo = None
    return _run(cfg, images, folder, store, model, home, stop, on_progress, echo)


def preparing_what(cfg: TrainConfig, folder: RunFolder) -> str:
    """What the run does before its first step, for the 'preparing' line: a resume without a checkpoint
    (killed before its first one, or --save-every 0) starts over, as `tokensmith runs` says."""
    fresh = "caching the images' latents, step 0's validation and previews"
    if not cfg.resume:
        return fresh
    if folder.latest_checkpoint() is None:
        return f"{fresh} (no checkpoint to continue from: the run starts over from step 0)"
    return "the run's cached latents and checkpoint"


LARGEST_NATIVE = {"sd": 768, "sdxl": 1024}  # the largest native resolution of each kind of model


def largest_resolution(cfg: TrainConfig, model) -> int:
    """The training resolution, read before the model loads where it must be: --resolution, the given
    model's, a diffusers folder's native one (UNet sample size × VAE scale factor: the demo world's 32), else
    the largest its kind trains at (768 for SD 1.x/2.x, 1024 for SDXL and a model only loading can tell)."""
    if cfg.resolution:
        return cfg.resolution
    if model is not None:
        return model.resolution
    spec = cfg.model.strip()
    folder = demo_model_dir() if spec == "demo" else Path(spec).expanduser()
    try:
        unet = json.loads((folder / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((folder / "vae" / "config.json").read_text(encoding="utf-8"))
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    keys = planned_encoder_keys(spec, cfg.model_config or None)
    return LARGEST_NATIVE["sd"] if keys == ("emb_params",) else LARGEST_NATIVE["sdxl"]


FP16_NEEDS_A_GPU = (
    "--mixed-precision fp16 needs a GPU (there is no fp16 loss scaling on a CPU); use --mixed-precision no "
    "(bf16 runs on a CPU too, but slowly unless it has bf16 arithmetic)"
)


def _load(cfg: TrainConfig):
    """The run's model, loaded straight in its frozen weights' precision (an SDXL checkpoint in bf16 needs
    half the memory of a float32 load that is cast afterwards)."""
    from trainers.models import load_model

    dtype = weight_dtype(cfg.mixed_precision)
    return load_model(cfg.model, dtype=dtype, config=cfg.model_config or None)


def _run(cfg, images, folder: RunFolder, store, model, home, stop, on_progress, echo) -> Embedding:
    from accelerate.state import AcceleratorState

    tune_malloc()
    # Accelerate keeps one AcceleratorState per process and refuses another precision once one is set; a
    # process that trains twice (the Python API, the test suite) needs a fresh one. Distributed setup is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = accelerator_for(
        mixed_precision=cfg.mixed_precision, trackers=cfg.trackers, project_dir=str(folder.root)
    )
    if echo and accelerator.is_main_process:  # the config decides; a launcher's own settings are said unused
        for note in launcher_notes(mixed_precision=cfg.mixed_precision, grad_accum=cfg.grad_accum):
            echo(f"note: {note}")
    spec = spec_for(model.family)
    check_family_keys(spec.name, model.encoders)
    originals = prepare_model(model, accelerator, cfg)
    conditioner = None
    try:
        stored = stored_init(cfg, spec, store)  # the init embedding, when the init is `<name>`: read once
        resolved = {}  # per-family defaults, resolved now that the family is known; config.toml records them
        if not cfg.vectors:
            resolved["vectors"] = resolve_vectors(cfg, spec, stored)
        for key in PER_FAMILY:
            if getattr(cfg, key) < 0:
                resolved[key] = getattr(spec, key)
        cfg = cfg.replace(**resolved)
        cpu, processes = accelerator.device.type == "cpu", accelerator.num_processes
        if cfg.resume:  # before the run's files change: a refused resume leaves them as they were
            check_resume_loaded(cfg, folder, processes=processes, cpu=cpu, home=home)
        if (resolved or cfg.resume) and accelerator.is_main_process:
            write_run_files(cfg, folder, home=home, processes=processes, cpu=cpu)
        state = RunRecord(cfg=cfg, folder=folder, accelerator=accelerator, on_progress=on_progress, home=home)
        start_trackers(cfg, accelerator)
        if cfg.mixed_precision == "fp16" and accelerator.device.type == "cpu":
            raise TokensmithError(FP16_NEEDS_A_GPU)
        if echo:
            resumed_from = folder.checkpoint_step() if cfg.resume else None
            if note := init_note(cfg, spec, model, stored, resumed_from=resumed_from):
                echo(note)
        conditioner = attach_rows(model, spec, cfg, stored)
        steps = Steps.prepare(cfg, images, model, spec, conditioner, accelerator, state, echo=echo)
        ending = steps.run(stop)
        emb = _finish(cfg, model, spec, conditioner, folder, store, state, ending, metric=steps.metric)
        conditioner = None
        return emb
    except BaseException as exc:
        advice = out_of_memory_advice(exc, cfg) or disk_full_advice(exc, folder, home)
        _record_end(folder, cfg, exc, stop, main=accelerator.is_main_process, advice=advice)
        if advice:
            raise advice from None
        raise
    finally:
        if conditioner is not None:
            for rows in conditioner.rows:
                detach_rows(rows)
        restore_model(model, originals)
        if cfg.trackers:
            accelerator.end_training()


def _check_before_loading(cfg: TrainConfig, store: Store, model, echo) -> None:
    """What would refuse the run later (the store write at the end, a tracker, a path, fp16 on a CPU, the
    init), refused now: before the model loads (minutes for SDXL) and hours of training."""
    if store.exists(cfg.name) and not cfg.overwrite:
        instead = "to replace it with this run's result" if cfg.resume else "or another --name"
        raise TokensmithError(
            f"an embedding named '{cfg.name}' is already stored; pass --overwrite {instead}"
        )
    check_storable(cfg, store)
    check_trackers(cfg)
    if model is None:  # a typo ('Demo', './typo') is refused before a run folder is made
        check_model_spec(cfg.model)
    check_model_config(cfg.model_config)  # local paths a run reads only once the model has loaded
    check_clip_model(cfg.clip_model)
    if echo and model is None and model_config_unused(cfg.model, cfg.model_config):
        echo(f"note: {MODEL_CONFIG_UNUSED}")
    if cfg.mixed_precision == "fp16" and not has_gpu():
        raise TokensmithError(FP16_NEEDS_A_GPU)
    if model is None:  # a given model is checked as it is, once the run starts
        check_init_fits(cfg, store)


def _record_end(folder: RunFolder, cfg, exc: BaseException, stop: StopFlag, *, main: bool, advice=None):
    """The `stopped` or `failed` event (main process) of a run that ended by an exception; from here a signal
    no longer records a stop. A failed upload's run is done and stored (its `done` event says so); a second
    Ctrl-C stops mid-step."""
    if isinstance(exc, StopRequested):
        return  # train() records it (StopFlag.record_stop)
    stop.ended()
    if not main or isinstance(exc, ResumeRefused):  # a refused resume leaves the run resumable as it was
        return
    if isinstance(exc, KeyboardInterrupt):
        folder.event("stopped", "interrupted; resume with --resume (from its last checkpoint)", name=cfg.name)
    elif not isinstance(exc, UploadError):  # our own errors are worded for the user; others name their type
        said = advice or (exc if isinstance(exc, TokensmithError) else None)
        fields = said.event_fields() if isinstance(said, OutOfMemory) else {}
        with contextlib.suppress(DiskFull):  # no room for the event either: the error itself says so
            message = str(said) if said else f"{type(exc).__name__}: {exc}"
            folder.event("failed", message, name=cfg.name, **fields)


# --- the result ---


def _finish(cfg, model, spec, conditioner, folder, store, state, ending: Ending, *, metric) -> Embedding:
    vectors = {rows.key: detach_rows(rows) for rows in conditioner.rows}
    trained = ending.steps
    kept = trained
    if ending.reason != "stopped" and state.accelerator.is_main_process:
        kept = state.kept_step(trained)
    if kept != trained:  # keep = best: an earlier snapshot's previews scored better than the last ones
        vectors = load_canonical(folder.snapshot_path(kept)).vectors
    warning = ""
    if metric is not None and ending.reason != "stopped":
        warning = metric.doubt(state.kept_scores(kept, trained))
    emb = state.embedding(
        vectors,
        model,
        spec,
        steps=kept,
        trained=trained,
        stopper=ending.stopper,
        reason=ending.reason,
        warning=warning,
    )
    if not state.accelerator.is_main_process:
        return emb
    if ending.reason == "stopped":
        folder.event(
            "stopped",
            f"stopped at step {ending.steps}; resume with --resume",
            name=cfg.name,
            step=ending.steps,
        )
        return emb
    # the kept step's preview from the run folder: a run resumed at its last step has drawn none in memory
    preview = open_image(folder.preview_path(kept)) or state.last_preview
    with writing("the run's final snapshot", folder.final_path):
        save_canonical(emb, folder.final_path)
    path = store_result(cfg, folder, store, emb, preview, state.home)
    record_done(cfg, folder, emb, path, preview, state.home)
    return emb
