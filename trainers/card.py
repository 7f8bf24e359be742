"""The model card of a stored embedding, built from its own metadata, offline: it says what the file
records (trained here, imported from another tool, or blended). trainers/publiccopy.py makes the copy of the
file that goes public with it; trainers/hub.py uploads both.
"""

from __future__ import annotations

import json

from embeddings import Embedding, package_version
from embeddings.doctor import format_title
from embeddings.value import FAMILY_BY_WIDTHS, family_title
from trainers.licenses import BASE_LICENSES
from trainers.models import HUB_ID
from trainers.publiccopy import cut_path, is_local_path, public_value
from trainers.schedules import is_piecewise
from trainers.storing import summary

SD_TOOLS_FAMILIES = ("sd1", "sd2", "sdxl")  # A1111, ComfyUI and InvokeAI load these families' files


def base_license(emb: Embedding) -> str | None:
    """The licence of the base model an embedding was trained on here, when it is one BASE_LICENSES lists."""
    if not _trained_here(summary(emb)):
        return None
    return BASE_LICENSES.get(emb.meta.get("base_model", "").strip().lower())


def card_license(emb: Embedding, license_id: str | None = None) -> str | None:
    """The licence the card states: the one given, else the base model's for an embedding trained here on a
    base model BASE_LICENSES lists; None (no claim) for any other base, imports, blends and the demo world,
    whose terms tokensmith cannot know."""
    return license_id or base_license(emb)


def no_license_note(emb: Embedding) -> str:
    """Why the card of `emb` states no licence (when card_license is None), for the push's note."""
    trainer = summary(emb)
    if _trained_here(trainer) and emb.family == "demo":
        why = "tokensmith states none for a demo-world embedding"
    elif _trained_here(trainer):
        base = cut_path(emb.meta.get("base_model") or "unknown")
        why = (
            f"tokensmith knows the terms of SD 1.x/2.x/SDXL's own base repos only, such as "
            f"runwayml/stable-diffusion-v1-5, and the base model `{base}` is not one of them"
        )
    elif lineage_words(_parent(emb)):
        why = "tokensmith cannot know the terms of a blend's parts"
    elif emb.meta.get("source_format"):
        why = "tokensmith cannot know the terms of an imported embedding"
    else:
        why = "tokensmith cannot know the terms of an embedding it did not train"
    return f"the card states no licence: {why}; pass --license ID to state one"


def _trained_here(trainer: dict) -> bool:
    return str(trainer.get("version", "")).startswith("tokensmith")  # else another tool's file, or none


def _shown(value) -> str:
    """A recorded value as the card shows it, in backticks; '`sd15` (local)' for a local path."""
    return f"`{cut_path(value)}` (local)" if isinstance(value, str) and is_local_path(value) else f"`{value}`"


# --- the model card ---


def loads_in_sd_tools(emb: Embedding) -> bool:
    """Whether A1111, ComfyUI and InvokeAI can load `emb`: an SD 1.x/2.x/SDXL family at that family's own
    widths (a demo-world or a tiny test model's embedding fits no SD checkpoint)."""
    standard = FAMILY_BY_WIDTHS.get(tuple(sorted(emb.widths.items())))
    return emb.family in SD_TOOLS_FAMILIES and standard == emb.family


def _pipeline(emb: Embedding) -> str:
    """The snippet's `pipe` line: the base model's pipeline when the file names it by a hub id, else a
    comment on which pipeline `pipe` must be."""
    base = emb.meta.get("base_model", "")
    if HUB_ID.match(base):
        return f'pipe = DiffusionPipeline.from_pretrained("{base}")  # add .to("cuda") on a GPU'
    if emb.family == "demo":
        return "# pipe: a diffusers pipeline of tokensmith's demo world (its model folder)"
    if loads_in_sd_tools(emb):
        return f"# pipe: a diffusers pipeline of an {family_title(emb.family)} model"
    return "# pipe: a diffusers pipeline of the model this embedding was trained on"


def _usage(emb: Embedding, filename: str, repo_id: str) -> str:
    """The diffusers snippet: copy-paste runnable when the base model is a hub id."""
    token = f"<{emb.name}>"
    from_hub = HUB_ID.match(emb.meta.get("base_model", ""))
    imports = ["from diffusers import DiffusionPipeline"] if from_hub else []
    if set(emb.vectors) == {"clip_l", "clip_g"}:
        indent = " " * len("pipe.load_textual_inversion(")
        imports += ["from huggingface_hub import hf_hub_download", "from safetensors.torch import load_file"]
        load = [
            f'state = load_file(hf_hub_download("{repo_id}", "{filename}"))',
            f'pipe.load_textual_inversion(state["clip_l"], token="{token}", text_encoder=pipe.text_encoder,',
            f"{indent}tokenizer=pipe.tokenizer)",
            f'pipe.load_textual_inversion(state["clip_g"], token="{token}", '
            "text_encoder=pipe.text_encoder_2,",
            f"{indent}tokenizer=pipe.tokenizer_2)",
        ]
    else:
        load = [f'pipe.load_textual_inversion("{repo_id}", weight_name="{filename}", token="{token}")']
    lines = [*imports, *([""] if imports else []), _pipeline(emb), *load]
    return "\n".join(["```python", *lines, f'image = pipe("a photo of {token}").images[0]', "```"])


def _tools(emb: Embedding, filename: str) -> list[str]:
    """How other tools use the file: each one's own prompt syntax for an SD model's embedding; for any other
    family, where it works instead."""
    if loads_in_sd_tools(emb):
        return [
            "## Use in A1111, ComfyUI, InvokeAI",
            "",
            f"Put `{filename}` in the tool's embeddings folder (InvokeAI: install it as an embedding), "
            f"with an {family_title(emb.family)} model, and write in a prompt:",
            "",
            f"- AUTOMATIC1111 / Forge: `{emb.name}`",
            f"- ComfyUI: `embedding:{emb.name}`",
            f"- InvokeAI: `<{emb.name}>`",
            "",
        ]
    if emb.family == "demo":
        where = (
            "This embedding belongs to tokensmith's demo world (text width "
            f"{', '.join(map(str, emb.widths.values()))}): it loads only there (`--model demo`), in no "
            "Stable Diffusion model or UI."
        )
    else:
        where = (
            f"This embedding's widths ({', '.join(f'{k} {w}' for k, w in emb.widths.items())}) fit no "
            "Stable Diffusion 1.x/2.x/SDXL model: it loads only into the model it was trained on."
        )
    return [where, ""]


def model_card(
    emb: Embedding,
    repo_id: str,
    *,
    filename: str | None = None,
    preview: str | None = None,
    license_id: str | None = None,
) -> str:
    """The README.md of a hub repo holding one embedding: front matter, trigger, usage, and where it came
    from, as the file records it (trained here, or imported from another tool's file). Local paths show as
    their base names; `license_id` overrides the licence card_license picks."""
    filename = filename or f"{emb.name}.safetensors"
    trainer = summary(emb)
    base = emb.meta.get("base_model", "")
    front = ["---", "library_name: diffusers"]
    if licence := card_license(emb, license_id):
        front.append(f"license: {licence}")
    if HUB_ID.match(base):  # never a guess: a local path, `demo` or another tool's checkpoint label is no id
        front.append(f"base_model: {base}")
    trained_here = _trained_here(trainer)
    sd = ["stable-diffusion"] if loads_in_sd_tools(emb) else []
    # textual_inversion: the tag the hub reads to offer diffusers' loader for the repo
    tags = ["textual_inversion", *sd, *(["tokensmith"] if trained_here else []), emb.family]
    front += ["tags:", *(f"- {tag}" for tag in tags), "---"]
    widths = ", ".join(f"`{k}` ({emb.num_vectors}, {w})" for k, w in emb.widths.items())
    layout = " (the layout A1111, ComfyUI, kohya and InvokeAI read as is)" if sd else ""
    lines = [
        *front,
        "",
        f"# {emb.name}: a textual-inversion embedding",
        "",
        f"Trigger: **`<{emb.name}>`** in a prompt. Family: {emb.family}. Tensors: {widths} in "
        f"`{filename}`{layout}.",
        "",
    ]
    if preview:
        lines += [f"![samples]({preview})", ""]
    lines += ["## Use with diffusers", "", _usage(emb, filename, repo_id), ""]
    lines += _tools(emb, filename)
    if trained_here:
        lines += _training(emb, trainer)
    else:
        lines += _provenance(emb)
    return "\n".join(lines) + "\n"


def _json(text: str | None) -> dict:
    """A JSON object from the metadata, {} when missing or not one (another tool's key of the same name)."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _imported(emb: Embedding) -> list[str]:
    """'- imported from: ...' when the file came into the store from another file."""
    if not emb.meta.get("source_format"):
        return []
    source = emb.meta.get("source_file", "")
    return [
        f"- imported from: {format_title(emb.meta['source_format'])}"
        + (f" {_shown(source)}" if source else "")
    ]


def _training(emb: Embedding, trainer: dict) -> list[str]:
    """The card's section for an embedding tokensmith trained: its base model, init, steps and settings."""
    meta, config = emb.meta, trainer.get("config", {})
    metrics = _json(meta.get("metrics"))
    lines = ["## Training", "", f"- base model: {_shown(meta.get('base_model') or 'unknown')}"]
    if meta.get("init"):
        lines.append(f"- init: `{meta['init']}`")
    steps = f"- steps: {meta.get('steps', '?')} (ended: {trainer.get('end', '?')})"
    if trainer.get("kept") == "best":
        steps = (
            f"- steps: {meta.get('steps', '?')}, the best-scored snapshot of a run of "
            f"{trainer.get('trained_steps', '?')} (ended: {trainer.get('end', '?')})"
        )
    lines.append(steps)
    settings = {**config, **({"resolution": trainer["resolution"]} if trainer.get("resolution") else {})}
    others = ("batch_size", "grad_accum", "vectors", "templates", "resolution", "seed")
    for key in (*_schedule_keys(settings), *others):
        if key in settings:
            lines.append(f"- {key}: {_setting(key, settings[key])}")
    processes = int(trainer.get("processes", 1))
    # each process takes its own micro-batches: one process would accumulate P times as many
    if processes > 1:
        alone = int(config.get("grad_accum", 1)) * processes
        lines.append(
            f"- processes: {processes}, each with the batch_size and grad_accum above (the same as one "
            f"process with grad_accum {alone})"
        )
    if metrics.get("best_val_loss") is not None:
        lines.append(
            f"- best validation loss: {metrics['best_val_loss']:.5f} at step {metrics['best_val_step']}"
        )
    for label in ("before", "after"):
        if metrics.get(label):
            values = ", ".join(
                f"{k} {v:.3f}" for k, v in metrics[label].items() if isinstance(v, int | float)
            )
            lines.append(f"- samples {label} training: {values}")
    lines += _imported(emb)
    return [*lines, "", _trained_with(trainer)]


def _schedule_keys(settings: dict) -> tuple[str, ...]:
    """The learning-rate settings the run used: a piecewise schedule gives every rate itself (its
    learning_rate was never used), warmup_steps count only where the run warmed up."""
    schedule = str(settings.get("lr_schedule", "constant"))
    if is_piecewise(schedule):
        return ("lr_schedule",)
    warmed = schedule in ("warmup", "cosine") and settings.get("warmup_steps")
    return ("learning_rate", "lr_schedule", *(("warmup_steps",) if warmed else ()))


def _setting(key: str, value) -> str:
    """A training setting as the card shows it: resolution 0 is the base model's native size."""
    if key == "resolution" and value in (0, "0"):
        return "the base model's native size"
    return _shown(value)


def _trained_with(trainer: dict) -> str:
    """The card's last line: the tokensmith that trained the file when it records one, else the one that
    wrote the card (the trainer's `version` is its metadata format, not a release)."""
    if trainer.get("package"):
        return f"Trained with tokensmith {trainer['package']}."
    return f"Trained with tokensmith; card written by tokensmith {package_version()}."


def lineage_words(parent: object) -> str | None:
    """A blend's lineage in words, None when it is not one of ours:
    'a lerp blend of <r1> (weight 0.5) and the word "red" (weight 0.5)'."""
    if not isinstance(parent, dict) or not isinstance(parent.get("operands"), list):
        return None
    parts = []
    for operand in parent["operands"]:
        if not isinstance(operand, dict) or not isinstance(operand.get("weight"), int | float):
            return None
        name = operand.get("name", "?")
        what = f'the word "{name}"' if operand.get("kind") == "word" else f"<{name}>"
        parts.append(f"{what} (weight {operand['weight']:g})")
    if not parts:
        return None
    joined = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + f" and {parts[-1]}"
    words = f"a {parent.get('method', 'lerp')} blend of {joined}"
    if parent.get("keep_norm"):
        words += ", rescaled to the operands' mean norm"
    if parent.get("num_vectors"):
        words += f", cut to {parent['num_vectors']} vector(s)"
    return words


def _provenance(emb: Embedding) -> list[str]:
    """The card's section for an embedding tokensmith did not train: what the file itself records."""
    meta = emb.meta
    lines = ["## Provenance", ""]
    lines += _imported(emb)
    blend = lineage_words(_parent(emb))
    recorded = (("base_model", "base model"), ("steps", "steps"), ("init", "init"))
    for key, label in recorded:
        if meta.get(key) and not (key == "init" and blend):  # a blend's init is its formula: said below
            lines.append(f"- {label} (as the file records it): {_shown(meta[key])}")
    if blend:
        lines.append(f"- made from: {blend}")
    elif meta.get("parent"):
        lines.append(f"- lineage (as the file records it): `{public_value(meta['parent'])}`")
    if len(lines) == 2:
        lines.append("- the file records no training details")
    made = "Blended with tokensmith, not trained" if blend else "Not trained with tokensmith"
    return [*lines, "", f"{made}; this card was written from the file's own metadata."]


def _parent(emb: Embedding) -> object:
    try:
        return emb.parent
    except ValueError:  # another tool's `parent` key that is no JSON
        return None
