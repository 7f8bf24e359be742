"""Model loading for every command: `demo`, a diffusers folder, a single-file checkpoint or a hub id.

    model = load_model("demo")                       # the shipped demo world (default everywhere)
    model = load_model("/models/sd15")               # a local diffusers folder
    model = load_model("/models/sd15.safetensors")   # a single-file checkpoint (diffusers' from_single_file)
    model = load_model("stabilityai/sdxl-turbo")     # a hub id (needs a network or a cached copy)
    model.family      # "demo" | "sd1" | "sd2" | "sdxl" (or "w<width>" for other single-encoder models)
    model.encoders    # [(key, tokenizer, text_encoder), ...] what the embeddings core installs into

Tiny random pipelines for tests live beside it, in `trainers/tiny.py`.
This module lives in trainers/ (not studio/) because both the trainer and the generation engine load
models, and trainers may not import studio.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from embeddings.errors import EmbeddingFormatError, TokensmithError, first_line
from embeddings.formats.pickled import load_pickle
from trainers.network import hub_unreachable, network_error, offline_by_choice

DEMO_MARKER = "tokensmith_demo.json"  # a marker file that makes any folder count as the demo world
DEMO_WORLD_FILE, DEMO_WORLD_NAME = "world.json", "tokensmith demo world"  # what demo.build writes
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
FAMILY_BY_WIDTH = {768: "sd1", 1024: "sd2"}


class ModelLoadError(TokensmithError):
    """A model that could not be found or loaded; the message says what to do."""


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
            sdxl = _index_is_sdxl(json.loads((path / "model_index.json").read_text(encoding="utf-8")))
        elif path.is_file() and path.suffix.lower() in SINGLE_FILE_SUFFIXES:
            sdxl = _looks_sdxl(path, config)
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
    """The shipped demo model folder (demo.DEMO_MODEL_DIR when the demo package defines it)."""
    import demo

    default = Path(demo.__file__).resolve().parent / "model"
    return Path(getattr(demo, "DEMO_MODEL_DIR", default))


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

    Other widths give 'w<width>' (e.g. 'w32' for a tiny test pipeline), matching the embeddings core's naming.
    """
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    origin = getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", None)
    if origin and os.path.isdir(origin) and is_demo_folder(origin):
        return "demo"
    width = int(pipe.text_encoder.get_input_embeddings().weight.shape[1])
    return FAMILY_BY_WIDTH.get(width, f"w{width}")


# --- loading ---


def load_model(
    spec: str = "demo", *, device: str = "cpu", dtype: torch.dtype = torch.float32, config: str | None = None
) -> LoadedModel:
    """Load `spec` ("demo", a diffusers folder, a .safetensors/.ckpt file, or a hub id) onto `device`.

    `config` (single-file checkpoints only) names a diffusers folder or hub id whose configs describe the
    checkpoint, for machines without a network. Raises ModelLoadError with what to do when it cannot load.
    """
    _resolve_image_processors()  # before any of the loaders below imports diffusers' pipelines
    check_model_spec(spec)
    spec = str(spec).strip()
    if spec == "demo":
        folder = demo_model_dir()
        if not (folder / "model_index.json").is_file():
            raise ModelLoadError(
                f"the demo model is not built yet (no {folder / 'model_index.json'}): "
                "run `python -m demo.build`"
            )
        pipe = _load_folder(folder, dtype)
        return _finish(LoadedModel(pipe=pipe, family="demo", source="demo"), device)
    path = Path(spec).expanduser()
    if path.is_dir():
        pipe = _load_folder(path, dtype)
        family = "demo" if is_demo_folder(path) else detect_family(pipe)
        return _finish(LoadedModel(pipe=pipe, family=family, source=str(path.resolve())), device)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(
                f"{path} is not a model: give a diffusers folder or a single-file checkpoint "
                f"({', '.join(SINGLE_FILE_SUFFIXES)})"
            )
        pipe = _load_single_file(path, dtype, config)
        return _finish(LoadedModel(pipe=pipe, family=detect_family(pipe), source=str(path.resolve())), device)
    if not _is_hub_id(spec):  # something that exists but is neither a folder nor a file
        raise ModelLoadError(f"{spec} is not a model: give a diffusers folder or a single-file checkpoint")
    pipe = _load_hub(spec, dtype)
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


@contextlib.contextmanager
def _quiet_loading() -> Iterator[None]:
    """Hide diffusers'/transformers' per-component loading bars: loading is one step to the user.

    diffusers' warnings are hidden too (unless DIFFUSERS_VERBOSITY asks for them): a single-file load
    warns about fp32 modules it then handles, and offline it announces a download it cannot make, before
    tokensmith's own error says what to do.
    """
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    level = diffusers_logging.get_verbosity()
    if not os.environ.get("DIFFUSERS_VERBOSITY"):
        diffusers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        diffusers_logging.enable_progress_bar()
        transformers_logging.enable_progress_bar()
        diffusers_logging.set_verbosity(level)


def _resolve_image_processors() -> None:
    """Look up the image processors diffusers imports, with transformers' warnings off.

    Without torchvision, transformers falls back to its PIL image processors for CLIP and SigLIP (the ones an
    SD pipeline's feature extractor uses anyway). The first lookup of each name warns that it does; the
    warning tells a tokensmith user nothing they can act on. After this lookup transformers keeps the fallback
    and no later import of the names warns."""
    import transformers
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        for name in ("CLIPImageProcessor", "SiglipImageProcessor"):
            getattr(transformers, name, None)
    finally:
        transformers_logging.set_verbosity(level)


def _pipeline_class(model_index: dict) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if _index_is_sdxl(model_index) else StableDiffusionPipeline


def _index_is_sdxl(model_index: dict) -> bool:
    """Whether a model_index.json names a second text encoder (SDXL)."""
    return "text_encoder_2" in model_index and model_index["text_encoder_2"] not in (None, [None, None])


def _load_folder(folder: Path, dtype: torch.dtype) -> Any:
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ModelLoadError(
            f"{folder} is not a diffusers model folder (no model_index.json): give a folder written by "
            "`save_pretrained`, a single-file checkpoint, or a hub id"
        )
    try:
        model_index = json.loads(index_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{index_path} is unreadable ({exc}): re-copy or re-download the model") from exc
    cls = _pipeline_class(model_index)
    kwargs = (
        {"safety_checker": None, "requires_safety_checker": False}
        if cls.__name__ == "StableDiffusionPipeline"
        else {}
    )
    try:
        with _quiet_loading():
            pipe = cls.from_pretrained(str(folder), dtype=dtype, local_files_only=True, **kwargs)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"could not load the diffusers model in {folder}: {first_line(exc)} "
            "(is a component folder or weight file missing or truncated? re-copy the model)"
        ) from exc
    return pipe


def _load_hub(repo_id: str, dtype: torch.dtype) -> Any:
    from diffusers import DiffusionPipeline

    offline = offline_by_choice()
    unreachable = None if offline else hub_unreachable()
    local_only = offline or unreachable is not None  # the cache alone, as huggingface_hub falls back to
    try:
        with warnings.catch_warnings():  # diffusers passes hf_hub_download an argument it deprecated
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks", category=UserWarning)
            index = DiffusionPipeline.load_config(repo_id, local_files_only=local_only)
        cls = _pipeline_class(index)
        kwargs = (
            {"safety_checker": None, "requires_safety_checker": False} if "XL" not in cls.__name__ else {}
        )
        with _quiet_loading():
            return cls.from_pretrained(repo_id, dtype=dtype, local_files_only=local_only, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        if offline:
            raise ModelLoadError(
                f"hub model {repo_id!r} is not in the local cache and HF_HUB_OFFLINE=1: download it on a "
                f"machine with a network (`huggingface-cli download {repo_id}`) or pass a local folder"
            ) from exc
        network = unreachable or network_error(exc)
        if network:
            raise ModelLoadError(
                f"cannot reach the Hugging Face hub for {repo_id!r} ({network}) and it is not in the local "
                "cache: connect to a network, or download it elsewhere (`hf download "
                f"{repo_id}`) and pass its folder, or set HF_HUB_OFFLINE=1 to use the cache only"
            ) from exc
        raise ModelLoadError(
            f"could not load hub model {repo_id!r}: {first_line(exc)} (check the id, your network and any "
            "access token: `hf auth login`)"
        ) from exc


def _load_single_file(path: Path, dtype: torch.dtype, config: str | None) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if _looks_sdxl(path, config) else StableDiffusionPipeline
    kwargs: dict[str, Any] = {"torch_dtype": dtype}  # from_single_file still names it torch_dtype
    if config is not None:
        kwargs["config"] = config
    if cls is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    local_only = offline_by_choice() or hub_unreachable() is not None
    try:
        with _quiet_loading():
            return cls.from_single_file(str(path), local_files_only=local_only, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError, SafetensorError) as exc:
        hint = (
            "single-file loading needs the model's configs: from the Hugging Face hub (network or cache), or "
            "pass a diffusers folder of the same architecture as `config` (CLI: --model-config DIR)"
        )
        raise ModelLoadError(f"could not load checkpoint {path}: {first_line(exc)}; {hint}") from exc


def _looks_sdxl(path: Path, config: str | None = None) -> bool:
    """SDXL or not: the config folder's pipeline class when one is given, else whether the checkpoint has a
    second text encoder (conditioner.embedders.1); only key names are read (a .ckpt is memory-mapped)."""
    index = Path(config).expanduser() / "model_index.json" if config else None
    if index is not None and index.is_file():
        try:
            return "XL" in str(json.loads(index.read_text(encoding="utf-8")).get("_class_name", ""))
        except (OSError, ValueError):
            pass  # an unreadable config is diffusers' to report; fall back to the keys
    return any(key.startswith("conditioner.embedders.1.") for key in _checkpoint_keys(path))


def _checkpoint_keys(path: Path) -> list[str]:
    """The tensor names of a single-file checkpoint; .ckpt/.pt/.bin are read with weights_only=True."""
    if path.suffix.lower() == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                return list(handle.keys())
        except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
            message = f"{path} is not a readable safetensors file ({exc}): re-download it"
            raise ModelLoadError(message) from exc
    try:
        state = load_pickle(path, mmap=True)  # weights_only=True: a .ckpt that would run code is refused
    except EmbeddingFormatError as exc:
        raise ModelLoadError(
            f"{exc}; a .ckpt must hold tensors only (it is read with weights_only=True): convert it to "
            ".safetensors or re-download it"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    return [str(key) for key in state] if isinstance(state, dict) else []
