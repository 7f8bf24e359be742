"""Paths a run reads only once its model has loaded (--model-config, --clip-model), checked before it loads:
a typo is a one-line error in a moment, not after minutes of loading or a silently ignored option."""

from __future__ import annotations

from pathlib import Path

from trainers.config import ConfigError

MODEL_CONFIG_UNUSED = (
    "--model-config is only used for a single-file checkpoint --model (.safetensors/.ckpt); ignored"
)


def _hub_id(value: str) -> bool:
    """Whether `value` reads as a hub id ('owner/name'), the way trainers/models.py reads a model spec."""
    from trainers.models import HUB_ID  # imports torch: only once a command runs, never for --help

    return bool(HUB_ID.match(value)) and not value.startswith((".", "/", "~"))


def check_model_config(model_config: str) -> None:
    """A --model-config that names a local path must be a folder that exists; a hub id passes (it is looked
    up when the checkpoint loads). Checked before any model loads, because load_model reads it only for a
    single-file checkpoint and would otherwise ignore a typo without a word."""
    if not model_config:
        return
    path = Path(model_config).expanduser()
    if path.is_dir():
        return
    if path.exists():
        raise ConfigError(
            f"--model-config {model_config} is a file: give the diffusers folder (or hub id) whose configs "
            "describe the single-file --model"
        )
    if not _hub_id(model_config):
        raise ConfigError(
            f"--model-config {model_config} does not exist: give a diffusers folder (or hub id) of the same "
            "architecture as the single-file --model"
        )


def model_config_unused(model: str, model_config: str) -> bool:
    """True when a --model-config is given with a --model that is not a single-file checkpoint: only those
    read it (a diffusers folder, a hub id and the demo world carry their own configs)."""
    return bool(model_config) and not Path(model or "demo").expanduser().is_file()


def check_clip_model(clip_model: str) -> None:
    """--clip-model must be a local CLIP model folder (with its config.json); a hub id passes, for a model in
    the local hub cache. Checked before the model loads and the latents are cached, not at step 0."""
    if not clip_model:
        return
    path = Path(clip_model).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return
    if not path.exists() and _hub_id(clip_model):
        return
    if path.is_dir():
        problem = "has no config.json, so it holds no CLIP model"
    else:
        problem = "is a file, not a folder" if path.exists() else "does not exist"
    raise ConfigError(
        f"--clip-model {clip_model} {problem}: point it at a local CLIP model folder, such as a downloaded "
        "openai/clip-vit-base-patch32"
    )
