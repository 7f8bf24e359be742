"""TrainConfig: the one training configuration, filled from a TOML/YAML file and/or CLI flags.

A config file holds the same keys as the dataclass fields (`batch_size = 4`); a CLI flag is the key with
dashes (`--batch-size 4`). Unknown keys are an error that lists the valid ones. Every run writes its
resolved config (`config.toml`) and the equivalent command (trainers/commands.py), so any run can be repeated
exactly. Files and flags are read into it by trainers/configfile.py.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from embeddings.errors import TokensmithError
from trainers.licenses import check_license
from trainers.schedules import ScheduleError, is_piecewise, schedule_for

TEMPLATE_SETS = ("object", "style", "captions")
CROPS = ("center", "random", "bucket")
PRECISIONS = ("no", "fp16", "bf16")
TRACKERS = ("tensorboard", "wandb")
KEEPS = ("best", "last")


# Keys whose -1 means "the model family's default" (trainers/families.py), resolved once the model is loaded.
PER_FAMILY = ("refine_latents", "preview_images")
MAX_RESOLUTION = 4096  # pixels a side: past any SD model (SDXL: 1024), and a guard against a typo's memory
MAX_SEED = 2**32 - 1  # diffusers' and A1111's range (a micro-step's generator takes seed * 1_000_003 + k)


class ConfigError(TokensmithError, ValueError):
    """A training config key or value is wrong; the message says which and what is valid."""


def _opt(default, help: str, *, choices: tuple[str, ...] | None = None, flag: bool = True, metavar: str = ""):
    """A dataclass field with its CLI help (allowed values, and the flag's value name) next to the default."""
    metadata = {"help": help, "choices": choices, "flag": flag, "metavar": metavar}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass(frozen=True)
class TrainConfig:
    """Everything one textual-inversion run needs; defaults learn a demo-world concept in <= 150 steps."""

    # --- what to learn ---
    images: str = _opt(
        "", "folder of training images (PNG/JPEG/WebP; optional NAME.txt captions)", metavar="DIR"
    )
    name: str = _opt("", "the embedding's name; the prompt trigger is <name>")
    init: str = _opt(
        "",
        "init from a word, a phrase, or a stored embedding as <name> (default: per family)",
        metavar="TEXT",
    )
    vectors: int = _opt(
        0,
        "vectors per token (<name>, <name>_1, ...); 0: an init embedding's own count, else the family's "
        "(on --resume: the run's own)",
    )
    templates: str = _opt(
        "object", "prompt templates: object, style, captions, or a .txt file with [name]/[filewords]"
    )
    model: str = _opt("demo", "base model: demo, a diffusers folder, a .safetensors/.ckpt file, or a hub id")
    model_config: str = _opt(
        "",
        "configs for a single-file --model offline: a diffusers folder (or hub id) of the same architecture",
    )
    # --- data ---
    resolution: int = _opt(0, "training resolution in pixels (0: the model's native size)")
    crop: str = _opt("center", "how other aspect ratios fit: center, random crop, or bucket", choices=CROPS)
    flip: bool = _opt(True, "random horizontal flips (both flips are cached)")
    alpha_weight: bool = _opt(False, "weight the loss by the images' alpha channel")
    refine_latents: int = _opt(
        -1,
        "steps fitting each cached latent to its image through the VAE decoder, so the targets decode to "
        "the images' own colours (0: the encoder's latents; -1: the family's default, demo 50, else 0)",
        metavar="STEPS",
    )
    min_images: int = _opt(1, "refuse to train on fewer images than this")
    # --- optimisation ---
    steps: int = _opt(150, "maximum optimisation steps")
    batch_size: int = _opt(4, "images per step")
    grad_accum: int = _opt(1, "gradient accumulation steps")
    learning_rate: float = _opt(2e-2, "peak learning rate (AdamW on the new rows only)")
    lr_schedule: str = _opt(
        "constant", "constant, warmup, cosine, or A1111's piecewise string like '0.005:100, 1e-3:1000'"
    )
    warmup_steps: int = _opt(0, "linear warm-up steps (warmup and cosine schedules)")
    weight_decay: float = _opt(0.0, "AdamW weight decay on the new rows")
    max_grad_norm: float = _opt(0.0, "clip the gradient norm of the new rows (0: off)")
    min_snr_gamma: float = _opt(0.0, "min-SNR loss weighting gamma (0: off; 5 is the paper's value)")
    mixed_precision: str = _opt("no", "no, fp16 or bf16 (through Accelerate)", choices=PRECISIONS)
    gradient_checkpointing: bool = _opt(False, "trade compute for memory in the UNet")
    seed: int = _opt(0, "seed for data order, noise, timesteps and previews (0 to 4294967295)")
    # --- knowing when it has learned ---
    validate_every: int = _opt(10, "deterministic validation loss every N steps (0: off)", metavar="N")
    validation_size: int = _opt(8, "fixed (image, noise, timestep) triples in the validation set")
    early_stopping: bool = _opt(True, "stop when the validation loss stops improving (DVAR-style)")
    dvar_window: int = _opt(6, "validation points in the DVAR rolling window")
    dvar_threshold: float = _opt(0.1, "stop when var(window) / var(all) falls below this")
    min_steps: int = _opt(60, "never stop early before this many steps")
    clip_model: str = _opt("", "local CLIP model folder for image/text similarity on real models")
    keep: str = _opt(
        "best",
        "what is stored: the snapshot whose previews scored best (judge or CLIP; without a metric the "
        "last), or the last",
        choices=KEEPS,
    )
    # --- run folder and sharing ---
    run_dir: str = _opt("", "run folder (default: HOME/runs/NAME)")
    resume: bool = _opt(False, "continue the run in run_dir from its last checkpoint")
    save_every: int = _opt(
        25,
        "snapshot + preview + checkpoint every N steps (0: only at the end); keep = best picks among them",
        metavar="N",
    )
    preview_prompt: str = _opt("a [name]", "prompt of the fixed-seed preview images")
    preview_steps: int = _opt(20, "sampling steps of preview images")
    preview_images: int = _opt(
        -1,
        "fixed-seed samples per preview, also scored by the judge or CLIP to pick the stored step "
        "(0: none; -1: the family's default, demo 8, else 4)",
        metavar="N",
    )
    preview_guidance: float = _opt(0.0, "guidance scale of previews (0: the family's default)")
    overwrite: bool = _opt(False, "replace an existing stored embedding of the same name")
    trackers: list[str] = _opt([], "Accelerate trackers besides the JSONL: tensorboard, wandb")  # noqa: RUF009
    push_to_hub: str = _opt(
        "", "upload the embedding and a model card to this hub repo (user/repo)", metavar="REPO"
    )
    hub_private: bool = _opt(False, "create the hub repo as private")
    hub_license: str = _opt(
        "",
        "the licence the model card states (a hub licence id; default: the base model's for SD 1.x/2.x/SDXL, "
        "none for the demo world)",
        metavar="ID",
    )

    def __post_init__(self) -> None:
        # a schedule's name as typed ('Cosine ', from a form or a YAML file) is the schedule: one spelling
        # kept, so the config.toml, the resume check and the card all read 'cosine'
        object.__setattr__(self, "lr_schedule", schedule_name(self.lr_schedule))
        check(self)

    def replace(self, **changes) -> TrainConfig:
        """A copy with `changes` applied and checked (configs are never mutated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def schedule_name(value: str) -> str:
    """`lr_schedule` as stored: stripped, a name lower-cased ('Cosine ' -> 'cosine'); piecewise strings
    keep their own spelling ('0.005:100, 1e-3')."""
    value = str(value).strip()
    return value if is_piecewise(value) else value.lower()


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
TYPES = typing.get_type_hints(TrainConfig)


def default_of(name: str):
    """The default value of config key `name`."""
    f = FIELDS[name]
    return f.default_factory() if f.default is dataclasses.MISSING else f.default


def check(cfg: TrainConfig) -> None:
    """Raise ConfigError for values no run could use (names of keys are checked in `from_mapping`)."""
    for name, f in FIELDS.items():
        choices = f.metadata.get("choices")
        if choices and getattr(cfg, name) not in choices:
            raise ConfigError(f"{name} = {getattr(cfg, name)!r} is not one of {', '.join(choices)}")
    positive = (
        "steps",
        "batch_size",
        "grad_accum",
        "validation_size",
        "dvar_window",
        "min_images",
        "preview_steps",
    )
    for name in positive:
        if getattr(cfg, name) < 1:
            raise ConfigError(f"{name} must be at least 1, got {getattr(cfg, name)}")
    non_negative = (
        "vectors",
        "resolution",
        "warmup_steps",
        "validate_every",
        "save_every",
        "min_steps",
    )
    for name in (*non_negative, "weight_decay", "max_grad_norm", "min_snr_gamma", "preview_guidance"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"{name} must not be negative, got {getattr(cfg, name)}")
    for name in PER_FAMILY:
        if getattr(cfg, name) < -1:
            raise ConfigError(f"{name} must be -1 (the family's default) or more: {getattr(cfg, name)}")
    for name in ("learning_rate", "weight_decay", "max_grad_norm", "min_snr_gamma", "dvar_threshold"):
        if not math.isfinite(getattr(cfg, name)):
            raise ConfigError(f"{name} must be a finite number, got {getattr(cfg, name)}")
    if cfg.learning_rate <= 0:
        raise ConfigError(f"learning_rate must be positive, got {cfg.learning_rate}")
    if not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(
            f"seed = {cfg.seed}: give a whole number from 0 to {MAX_SEED}; a run's seed is fixed, so that it "
            "can be repeated and resumed (there is no random seed: pick another number for another draw)"
        )
    if cfg.resolution > MAX_RESOLUTION:
        raise ConfigError(
            f"resolution = {cfg.resolution} is larger than any Stable Diffusion model trains at (at most "
            f"{MAX_RESOLUTION}); use 0 for the model's native size (512 for SD 1.x, 768 SD 2.x, 1024 SDXL)"
        )
    if cfg.push_to_hub:
        check_repo_id(cfg.push_to_hub, cfg.name or "my-token")
    # the same config comes from flags or a file: each message names both spellings
    upload = "add --push-to-hub USER/REPO (in a config file: push_to_hub = USER/REPO)"
    if cfg.hub_private and not cfg.push_to_hub:
        raise ConfigError(f"--hub-private / hub_private is for an upload: {upload}, or drop it")
    if cfg.hub_license:
        if not cfg.push_to_hub:
            raise ConfigError(
                f"--hub-license {cfg.hub_license} / hub_license = {cfg.hub_license!r} is for an upload: "
                f"{upload}, or drop it"
            )
        try:
            check_license(cfg.hub_license)
        except TokensmithError as exc:
            raise ConfigError(str(exc)) from None
    init = cfg.init.strip()
    if ("<" in init or ">" in init) and not (init[:1] == "<" and init[-1:] == ">" and init.count("<") == 1):
        raise ConfigError(  # '<base', 'blue <base>': neither one stored embedding nor plain words
            f"init = {init!r}: to start from a stored embedding write its name alone in brackets (<base>); "
            "otherwise give a word or phrase without < >"
        )
    try:  # read the schedule now, not after the model has loaded and the latents are cached
        schedule_for(cfg.lr_schedule, cfg.learning_rate, total_steps=cfg.steps, warmup_steps=cfg.warmup_steps)
    except ScheduleError as exc:
        raise ConfigError(f"lr_schedule: {exc}") from None
    _check_schedule_keys(cfg)
    for tracker in cfg.trackers:
        if tracker not in TRACKERS:
            raise ConfigError(f"tracker {tracker!r} is not one of {', '.join(TRACKERS)}")
    if "[name]" not in cfg.preview_prompt:
        raise ConfigError(
            f"preview_prompt = {cfg.preview_prompt!r} has no [name]: previews (and the step kept) would "
            "not show the token; write e.g. 'a photo of [name]'"
        )
    if cfg.templates not in TEMPLATE_SETS and not cfg.templates.lower().endswith(".txt"):  # MY.TXT too
        raise ConfigError(
            f"templates = {cfg.templates!r}: use object, style, captions, or a path to a .txt template file"
        )


def unused_by_schedule(lr_schedule: str) -> tuple[str, ...]:
    """The keys a schedule does not read: a piecewise string gives every rate itself, and only warmup and
    cosine warm up."""
    if is_piecewise(lr_schedule):
        return ("learning_rate", "warmup_steps")
    return ("warmup_steps",) if lr_schedule == "constant" else ()


def _check_schedule_keys(cfg: TrainConfig) -> None:
    """Refuse a learning_rate or warmup_steps that the schedule would ignore: the run would not do what the
    config says."""
    piecewise = is_piecewise(cfg.lr_schedule)
    if piecewise and cfg.learning_rate != default_of("learning_rate"):
        raise ConfigError(
            f"learning_rate = {cfg.learning_rate} is not used: the piecewise lr_schedule "
            f"{cfg.lr_schedule!r} gives every step's rate; drop learning_rate, or put the rate in the "
            "schedule"
        )
    if cfg.warmup_steps and (piecewise or cfg.lr_schedule == "constant"):
        schedule = f"the piecewise lr_schedule {cfg.lr_schedule!r}" if piecewise else "lr_schedule constant"
        raise ConfigError(
            f"warmup_steps = {cfg.warmup_steps} does nothing under {schedule}; use lr_schedule warmup or "
            "cosine to warm up, or drop warmup_steps"
        )


def setting_notes(cfg: TrainConfig) -> list[str]:
    """What to know about settings that are allowed but turn something else off (printed as notes)."""
    notes = []
    if cfg.early_stopping and not cfg.validate_every:
        notes.append(
            "--validate-every 0 (validate_every = 0) turns off the validation loss, and early stopping with "
            f"it (it reads those losses): the run goes to step {cfg.steps}; validate every N steps to stop "
            "early"
        )
    if cfg.lr_schedule == "warmup" and not cfg.warmup_steps:
        notes.append(
            "--lr-schedule warmup with --warmup-steps 0 (warmup_steps = 0) is a constant rate: give "
            "--warmup-steps N to warm up over N steps"
        )
    return notes


def check_repo_id(repo_id: str, name: str) -> None:
    """A hub repo id is 'owner/repo' (`--push-to-hub`, `tokensmith push`) by the hub's own rules (offline:
    huggingface_hub's validate_repo_id), so a run never trains for an upload the hub would refuse."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    example = f"give a repo id like 'your-name/{name}'"
    if repo_id.count("/") != 1 or " " in repo_id or repo_id.startswith("/") or repo_id.endswith("/"):
        raise ConfigError(f"hub repo {repo_id!r}: {example}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as exc:
        said = str(exc).split("\n")[0].rstrip(".")
        raise ConfigError(f"hub repo {repo_id!r} is not one the hub accepts ({said}): {example}") from None


# --- paths ---

# Keys that may name a local file or folder. A run stores them absolute, so its config.toml, command.txt and
# `accelerate launch --config RUN/config.toml` work from any folder (a resume from elsewhere finds its run).
PATH_KEYS = ("images", "run_dir", "model", "model_config", "clip_model", "templates")


def absolute_path(key: str, value: str) -> str:
    """`value` of path key `key`, absolute when it is a local path, else as given: 'demo', a template set,
    and a hub id (`runwayml/stable-diffusion-v1-5`) that is no file or folder here stay as they are, the
    way trainers/models.py reads a model spec. images and run_dir are always folders."""
    if not value or (key == "model" and value == "demo") or (key == "templates" and value in TEMPLATE_SETS):
        return value
    path = Path(value).expanduser()
    if key in ("images", "run_dir") or path.exists():
        return str(path.resolve())
    return value


def with_absolute_paths(cfg: TrainConfig) -> TrainConfig:
    """A copy of `cfg` whose local paths are absolute (see PATH_KEYS)."""
    return cfg.replace(**{key: absolute_path(key, getattr(cfg, key)) for key in PATH_KEYS})
