"""Model loading for every command: `demo`, a diffusers folder, a single-file checkpoint or a hub id.

    model = load_model("demo")                       # the shipped demo world (default everywhere)
    model = load_model("/models/sd15")               # a local diffusers folder
    model = load_model("/models/sd15.safetensors")   # a single-file checkpoint (diffusers' from_single_file)
    model = load_model("stabilityai/sdxl-turbo")     # a hub id (needs a network or a cached copy)
    model.family      # "demo" | "sd1" | "sd2" | "sdxl" (or "w<width>" for other single-encoder models)
    model.encoders    # [(key, tokenizer, text_encoder), ...] what the embeddings core installs into

The readers of a folder, a hub id and a checkpoint are in `trainers/loaders.py`; tiny random pipelines for
tests live beside it, in `trainers/tiny.py`.
This module lives in trainers/ (not studio/) because both the trainer and the generation engine load
models, and trainers may not import studio.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from embeddings.value import SINGLE_KEY, family_from_widths
from trainers.loaders import (
    ModelLoadError,
    index_is_sdxl,
    load_folder,
    load_hub,
    load_single_file,
    looks_sdxl,
    resolve_image_processors,
)

DEMO_MARKER = "tokensmith_demo.json"  # a marker file that makes any folder count as the demo world
DEMO_WORLD_FILE, DEMO_WORLD_NAME = "world.json", "tokensmith demo world"  # what demo.build writes
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class LoadedModel:
    """A loaded pipeline plus what the rest of tokensmith needs to know about it."""

    pipe: Any  # diffusers StableDiffusionPipeline | StableDiffusionXLPipeline
    family: str  # "demo" | "sd1" | "sd2" | "sdxl" | "w<width>"
    source: str  # what was loaded: "demo", an absolute path, or a hub id (provenance records it)

    @property
    def encoders(self) -> list[tuple[str, Any, Any]]:
        """(key, tokenizer, text_encoder) triples in the order the embeddings core expects."""
        return pipeline_encoders(self.pipe)

    @property
    def prediction_type(self) -> str:
        """What the UNet predicts ("epsilon" | "v_prediction" | "sample"), read from the scheduler."""
        return self.pipe.scheduler.config.get("prediction_type", "epsilon")

    @property
    def is_sdxl(self) -> bool:
        return getattr(self.pipe, "text_encoder_2", None) is not None

    @property
    def resolution(self) -> int:
        """The native image size in pixels (UNet sample size × VAE scale factor)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    @property
    def widths(self) -> dict[str, int]:
        """Input-embedding width per encoder key: {"emb_params": 768} or {"clip_l": 768, "clip_g": 1280}."""
        return {key: int(te.get_input_embeddings().weight.shape[1]) for key, _tok, te in self.encoders}


def pipeline_encoders(pipe: Any) -> list[tuple[str, Any, Any]]:
    """The (key, tokenizer, text_encoder) triples of a pipeline: one for SD/demo, clip_l + clip_g for SDXL."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return [
            ("clip_l", pipe.tokenizer, pipe.text_encoder),
            ("clip_g", pipe.tokenizer_2, pipe.text_encoder_2),
        ]
    return [("emb_params", pipe.tokenizer, pipe.text_encoder)]


def planned_encoder_keys(spec: str, config: str | None = None) -> tuple[str, ...] | None:
    """The encoder keys `load_model(spec)` will give, read from the model's files without loading it:
    ('clip_l', 'clip_g') for SDXL, ('emb_params',) otherwise; None when only loading can tell (a hub id, or
    a path that is not a model: load_model says why). Lets a command refuse, in a moment, what cannot fit
    the model (an SD 1.x `--init <name>` for an SDXL run) before minutes of loading."""
    single = ("emb_params",)
    if spec.strip() == "demo":
        return single
    path = Path(spec.strip()).expanduser()
    try:
        if path.is_dir():
            sdxl = index_is_sdxl(json.loads((path / "model_index.json").read_text(encoding="utf-8")))
        elif path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            sdxl = looks_sdxl(path, config)
        else:
            return None
    except (OSError, ValueError, AttributeError, ModelLoadError):
        return None
    return ("clip_l", "clip_g") if sdxl else single


def planned_encoder_widths(spec: str) -> dict[str, int] | None:
    """{key: width} of a diffusers folder's text encoders (the demo world's too), read from their
    config.json without loading them; None where only loading can tell (a single file, a hub id)."""
    folder = demo_model_dir() if spec.strip() == "demo" else Path(spec.strip()).expanduser()
    keys = planned_encoder_keys(spec)
    if keys is None or not folder.is_dir():
        return None
    widths = {}
    for key, sub in zip(keys, ("text_encoder", "text_encoder_2"), strict=False):
        try:
            config = json.loads((folder / sub / "config.json").read_text(encoding="utf-8"))
            widths[key] = int(config["hidden_size"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
    return widths


# --- family detection ---


def demo_model_dir() -> Path:
    """The shipped demo model folder (read when called, so a test may point demo.DEMO_MODEL_DIR elsewhere)."""
    import demo

    return Path(demo.DEMO_MODEL_DIR)


def on_demo_world(spec: str) -> bool:
    """Whether load_model(spec) gives the demo world, read without loading it ('demo' or a copy of its
    folder)."""
    spec = str(spec).strip()
    return spec == "demo" or is_demo_folder(Path(spec).expanduser())


def is_demo_folder(folder: str | Path) -> bool:
    """True for the shipped demo model folder, or any copy of it (it carries the demo marker file)."""
    folder = Path(folder)
    if (folder / DEMO_MARKER).is_file() or _world_name(folder / DEMO_WORLD_FILE) == DEMO_WORLD_NAME:
        return True
    try:
        return folder.resolve() == demo_model_dir().resolve()
    except OSError:
        return False


def _world_name(path: Path) -> str | None:
    try:
        return json.loads(path.read_text()).get("name")
    except (OSError, ValueError, AttributeError):
        return None


def detect_family(pipe: Any) -> str:
    """'sdxl' (two text encoders), 'demo' (the demo world), else by text width: 768 → 'sd1', 1024 → 'sd2'.

    Other widths give 'w<width>' (e.g. 'w32' for a tiny test pipeline): the embeddings core's naming, so a
    file trained here names the family its widths do.
    """
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    origin = getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None)
    if origin and os.path.isdir(origin) and is_demo_folder(origin):
        return "demo"
    width = int(pipe.text_encoder.get_input_embeddings().weight.shape[1])
    return family_from_widths({SINGLE_KEY: width})


# --- loading ---


def load_model(
    spec: str = "demo", *, device: str = "cpu", dtype: torch.dtype = torch.float32, config: str | None = None
) -> LoadedModel:
    """Load `spec` ("demo", a diffusers folder, a .safetensors/.ckpt file, or a hub id) onto `device`.

    `config` (single-file checkpoints only) names a diffusers folder or hub id whose configs describe the
    checkpoint, for machines without a network. Raises ModelLoadError with what to do when it cannot load.
    """
    resolve_image_processors()  # before any of the loaders below imports diffusers' pipelines
    check_model_spec(spec)
    spec = str(spec).strip()
    if spec == "demo":
        folder = demo_model_dir()
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(
                f"the demo model is not built yet (no {folder / 'model_index.json'}): "
                "run `python -m demo.build`"
            )
        pipe = load_folder(folder, dtype)
        return _finish(LoadedModel(pipe=pipe, family="demo", source="demo"), device)
    path = Path(spec).expanduser()
    if path.is_dir():
        pipe = load_folder(path, dtype)
        family = "demo" if is_demo_folder(path) else detect_family(pipe)
        return _finish(LoadedModel(pipe=pipe, family=family, source=str(path.resolve())), device)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(
                f"{path} is not a model: give a diffusers folder or a single-file checkpoint "
                f"({', '.join(SINGLE_FILE_SUFFIXES)})"
            )
        pipe = load_single_file(path, dtype, config)
        return _finish(LoadedModel(pipe=pipe, family=detect_family(pipe), source=str(path.resolve())), device)
    if not _is_hub_id(spec):  # something that exists but is neither a folder nor a file
        raise ModelLoadError(f"{spec} is not a model: give a diffusers folder or a single-file checkpoint")
    pipe = load_hub(spec, dtype)
    return _finish(LoadedModel(pipe=pipe, family=detect_family(pipe), source=spec), device)


def _is_hub_id(spec: str) -> bool:
    return bool(HUB_ID.match(spec)) and not spec.startswith((".", "/", "~"))


def check_model_spec(spec: str) -> None:
    """Refuse, without loading anything, a --model that `load_model` could only refuse: empty, or none of
    'demo', an existing folder or file, or a hub id ('Demo', './typo'). `train` checks it before it makes a
    run folder, so a typo leaves nothing behind."""
    spec = str(spec).strip()
    if not spec:
        raise ModelLoadError(
            "empty --model: give 'demo', a diffusers folder, a .safetensors/.ckpt file or a hub id"
        )
    if spec == "demo" or Path(spec).expanduser().exists() or _is_hub_id(spec):
        return
    hint = "; did you mean 'demo'?" if spec.lower() == "demo" else ""
    raise ModelLoadError(
        f"no model {spec!r}: it is not 'demo', an existing folder or file, or a hub id like "
        f"'owner/name'{hint}"
    )


def _finish(model: LoadedModel, device: str) -> LoadedModel:
    model.pipe.to(device)
    model.pipe.set_progress_bar_config(disable=True)  # tokensmith draws its own progress bar
    for _key, _tok, te in model.encoders:
        te.requires_grad_(False)
    model.pipe.unet.requires_grad_(False)
    model.pipe.vae.requires_grad_(False)
    return model
