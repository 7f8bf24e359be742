"""May this run resume? A resume (or a finished run trained further) must compute what the interrupted run
would have: the same config values, the same images. Each refusal names what changed and what to do."""

from __future__ import annotations

import hashlib
import json
import shlex
from pathlib import Path

from embeddings.errors import TokensmithError
from embeddings.files import file_sha256
from trainers import checkpoint as ckpt_io
from trainers import commands
from trainers import config as config_io
from trainers.config import TrainConfig
from trainers.configfile import load as load_config
from trainers.runfolder import RunFolder

# Keys that say where and how a run is kept (and which step is stored, and where a checkpoint's configs
# are), or how much memory it computes with (gradient checkpointing recomputes activations, bit for bit), not
# what it computes: they may change on resume. A checkpoint records none of them (an older one that does is
# read as before: keys missing from the config now are not compared).
KEPT_NOT_COMPUTED = (
    "run_dir",
    "resume",
    "overwrite",
    "trackers",
    "push_to_hub",
    "hub_private",
    "hub_license",
    "keep",
    "model_config",
    "gradient_checkpointing",
)
# Keys that only decide when a run ends: a resume may change them too, to train a run for longer or a finished
# run further. The steps already taken are the same either way (learning rates are a function of the step;
# cosine, whose rates depend on the total, keeps its steps).
ENDING = ("steps", "early_stopping", "min_steps", "dvar_window", "dvar_threshold")


def computed_values(cfg: TrainConfig) -> dict:
    """The config values that decide what a run computes, as JSON values (what a checkpoint records)."""
    values = {k: v for k, v in cfg.to_dict().items() if k not in KEPT_NOT_COMPUTED}
    return json.loads(json.dumps(values))


# Per-family defaults (key: the value that asks for one), resolved once the model is loaded.
RESOLVED_LATER = {"vectors": 0, **dict.fromkeys(config_io.PER_FAMILY, -1)}
# Keys whose value asks for the family's default: a resume that leaves one so takes its run's own value from
# the newest checkpoint (where the numbers are resolved; init "" stays "", the family's word)
LEFT_TO_THE_FAMILY = {"init": "", **RESOLVED_LATER}


class ResumeRefused(TokensmithError):
    """A resume that would compute something else than its run; refused before anything in the run folder
    changes (its config.toml, command.txt and progress.jsonl stay the run's own, so the advice works)."""


def with_run_values(cfg: TrainConfig, folder: RunFolder) -> TrainConfig:
    """`cfg` with its newest checkpoint's values for the keys it leaves to the family's default (vectors 0,
    refine_latents and preview_images -1, init ""): a resume continues the run as it was. A run started
    with `--config run.toml --vectors 3` resumes with `--config run.toml --resume`; its vectors stay 3 (the
    family's 2 would be a change, and refused). Without a checkpoint the run starts over: `cfg` as it is."""
    latest = folder.latest_checkpoint()
    if latest is None:
        return cfg
    saved = ckpt_io.read_meta(latest).get("config", {})
    own = {
        key: saved[key]
        for key, unset in LEFT_TO_THE_FAMILY.items()
        if getattr(cfg, key) == unset and type(saved.get(key)) is type(unset)
    }
    return cfg.replace(**own) if own else cfg


def config_changes(saved: dict, cfg: TrainConfig) -> list[str]:
    """'key: before -> now' for each value a resume may not change (an empty list: the resume is allowed).

    An option added since the checkpoint was written counts as its default then (an option is added with
    the default that keeps the old behaviour); an option this version no longer has is ignored. A per-family
    default not yet resolved is not compared (the check after loading the model compares the number), nor a
    key the schedule does not read.
    """
    now, defaults = computed_values(cfg), computed_values(TrainConfig())
    # what the schedule does not read computes nothing (lr_schedule itself is compared): a run from before
    # such keys were refused resumes once they are dropped
    unused = config_io.unused_by_schedule(cfg.lr_schedule)
    changes = []
    for key, value in now.items():
        if key in ENDING and not (key == "steps" and cfg.lr_schedule == "cosine"):
            continue
        if key in unused:
            continue
        if key in RESOLVED_LATER and value == RESOLVED_LATER[key]:
            continue
        before = saved.get(key, defaults[key])
        if key in config_io.PATH_KEYS and isinstance(before, str):  # a run from before paths were stored
            before = config_io.absolute_path(key, before)  # absolute: as typed, read from here
        if before != value:
            changes.append(f"{key}: {_shown(key, before, cfg)} -> {_shown(key, value, cfg)}")
    return changes


def _shown(key: str, value, cfg: TrainConfig) -> str:
    """A value in a refusal; one that asks for the family's default says which ("'' (the family's default
    'red circle')"), not a bare ''."""
    if key not in LEFT_TO_THE_FAMILY or value != LEFT_TO_THE_FAMILY[key] or isinstance(value, bool):
        return repr(value)
    from trainers.families import planned_defaults
    from trainers.modelprep import init_embedding_name

    if key == "vectors" and init_embedding_name(cfg.init) is not None:
        return f"{value!r} (the init embedding's own count)"

    spec = planned_defaults(cfg.model)
    defaults = {"init": spec.default_init, "vectors": spec.default_vectors}
    default = defaults[key] if key in defaults else getattr(spec, key)
    return f"{value!r} (the family's default {default!r})"


def image_list(images) -> list[list]:
    """[file name, size in bytes, sha256 of the bytes, sha256 of its caption or ""] of each training image:
    what a resume checks is still there, unchanged (an edit that keeps the size, such as swapped colours in
    an uncompressed PNG, too; and its NAME.txt caption, which joins its prompts)."""
    return [
        [image.path.name, image.path.stat().st_size, file_sha256(image.path), _caption_sha256(image.caption)]
        for image in images
    ]


def template_record(templates: str) -> dict | None:
    """{"file", "sha256"} of a .txt template file, what a resume checks is unchanged (its lines are the
    prompts, and the validation set's); None for a named set (object, style, captions)."""
    if templates in config_io.TEMPLATE_SETS:
        return None
    path = Path(templates)
    return {"file": templates, "sha256": file_sha256(path) if path.is_file() else ""}


def _check_template_file(cfg: TrainConfig, folder: RunFolder) -> None:
    """Refuse a resume whose template file (the same path: another path is a config change) was edited."""
    before = folder.read_template_record()
    if before is None or before.get("file") != cfg.templates:
        return
    if (template_record(cfg.templates) or {}).get("sha256") != before.get("sha256"):
        raise ResumeRefused(
            f"the template file {cfg.templates} changed since the run began (the prompts it trains on, and "
            "its validation set, come from it); restore it to resume, or start a new run without --resume"
        )


def _caption_sha256(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest() if caption else ""


def check_resume(cfg: TrainConfig, folder: RunFolder, images, *, home: Path | None = None) -> None:
    """Refuse a resume whose images or config would compute something else than its newest checkpoint,
    before anything in the run folder is rewritten (its config.toml stays the run's own, as advised)."""
    before = folder.read_image_list()
    now = image_list(images)
    if before and len(before[0]) < 4:  # a run from before the list held hashes, or captions: what it holds
        now = [entry[: len(before[0])] for entry in now]
    if before is not None and before != now:
        was = {entry[0]: tuple(entry[1:]) for entry in before}
        is_ = {entry[0]: tuple(entry[1:]) for entry in now}
        both = was.keys() & is_.keys()
        changed = {name for name in both if was[name][:2] != is_[name][:2]}
        recaptioned = {name for name in both if was[name][:2] == is_[name][:2] and was[name] != is_[name]}
        parts = [
            _few("added", is_.keys() - was.keys()),
            _few("removed", was.keys() - is_.keys()),
            _few("changed", changed),
            _few("caption changed", recaptioned),
        ]
        raise ResumeRefused(
            f"the images in {cfg.images} changed since the run began ({len(before)} -> {len(now)} images: "
            f"{'; '.join(filter(None, parts))}); restore them (and their NAME.txt captions) to resume, or "
            "start a new run without --resume"
        )
    _check_template_file(cfg, folder)
    latest = folder.latest_checkpoint()
    if latest is not None:
        meta = ckpt_io.read_meta(latest)
        refuse_changes(latest, folder, meta.get("config", {}), int(meta.get("step", 0)), cfg, home=home)
        _check_cache_format(folder)


def _check_cache_format(folder: RunFolder) -> None:
    """Refuse a resume whose latent cache an older tokensmith wrote: it read the images differently (today's
    crops, colour profiles and SDXL time ids), so encoding them again would train the rest of the run on
    other numbers than its checkpoint's, and it would end unlike the run it continues."""
    from trainers.latents import CACHE_FORMAT, cache_format

    made_by = cache_format(folder.latents_path)  # an unreadable file is simply made again (run_cache)
    if made_by is not None and made_by.startswith("tokensmith-latents/") and made_by != CACHE_FORMAT:
        raise ResumeRefused(
            f"this run's latent cache ({folder.latents_path.name}) is {made_by}, written by an older "
            f"tokensmith that read the images differently (this one writes {CACHE_FORMAT}): continued here, "
            "the run would not end as it would have; start a new run with --run-dir NEW_DIR (or without "
            "--resume)"
        )


def _few(label: str, names: set) -> str:
    shown = sorted(names)
    return f"{label} {', '.join(shown[:3])}{', ...' if len(shown) > 3 else ''}" if shown else ""


def refuse_changes(
    latest: Path, folder: RunFolder, saved: dict, step: int, cfg: TrainConfig, *, home: Path | None = None
) -> None:
    """Refuse a resume whose config computes something else than the checkpoint's (`home`: the run's, named
    in the advice when it is not the default)."""
    changes = config_changes(saved, cfg)
    if changes:
        shown = "; ".join(changes[:6]) + ("; ..." if len(changes) > 6 else "")
        own = shlex.join(
            ["tokensmith", "train", "--config", str(folder.config_path), *commands.home_flags(home)]
        )
        raise ResumeRefused(
            f"the checkpoint in {latest} was made with another config ({shown}); resume with the run's "
            f"own config ({own} --resume). Only where the run is kept, gradient checkpointing and when "
            f"it ends ({', '.join(ENDING)}; not steps under cosine) may change"
        )
    if cfg.steps < step:
        raise ResumeRefused(
            f"the checkpoint in {latest} is at step {step}, past --steps {cfg.steps}; pass --steps {step} "
            "or more"
        )


def check_resume_loaded(cfg: TrainConfig, folder: RunFolder, *, processes: int, cpu: bool, home=None) -> None:
    """Once the model has loaded and the per-family defaults are resolved: refuse a resume whose resolved
    config, or number of processes, differs from its newest checkpoint's, before the run's files are
    rewritten (a refused resume leaves the run folder as it was)."""
    latest = folder.latest_checkpoint()
    if latest is None:  # no checkpoint: the run starts over
        return
    meta = ckpt_io.read_meta(latest)
    refuse_changes(latest, folder, meta.get("config", {}), int(meta.get("step", 0)), cfg, home=home)
    made_by = int(meta.get("stopper", {}).get("processes", 1))
    if made_by != processes:  # each step's batch is the processes' micro-batches
        launch = commands.launch_command(
            folder.config_path, processes=made_by, cpu=cpu, extra=[*commands.home_flags(home), "--resume"]
        )
        raise ResumeRefused(
            f"the checkpoint in {latest} was made by {made_by} process(es) and this resume has {processes}; "
            f"the steps would change size. Resume with the same number of processes: {launch}"
        )


def check_train_further(cfg: TrainConfig, folder: RunFolder, done: dict) -> None:
    """A finished run (its `done` event) resumes only to train further: more steps, or other ending rules."""
    trained = int(done.get("steps") or 0)
    stopped_early = done.get("reason") == "early_stopped"
    try:
        before = load_config(folder.config_path)  # the finished run's resolved config
        changed = any(getattr(before, key) != getattr(cfg, key) for key in ENDING)
        # the same rule on the same validation losses would stop it again before its first new step
        stops_again = (
            stopped_early
            and cfg.early_stopping
            and all(
                getattr(before, key) == getattr(cfg, key)
                for key in ("min_steps", "dvar_window", "dvar_threshold")
            )
        )
    except (OSError, TokensmithError):
        changed = stops_again = False
    if changed and cfg.steps > trained and not stops_again:
        return
    hint = " and --no-early-stopping (it stopped early)" if stopped_early else ""
    raise TokensmithError(
        f"the run in {folder.root} already finished ({done.get('message')}); nothing to resume. To train "
        f"it further, pass --resume with --steps above {trained}{hint}, and --overwrite to replace the "
        "stored embedding"
    )
