"""Sharing: a model card for a trained embedding and `--push-to-hub` through huggingface_hub.

The card is plain text built from the embedding's own metadata, so it is built and checked offline; only
`push_embedding` touches the network.
"""

from __future__ import annotations

import json
import shlex
import shutil
import tempfile
from pathlib import Path

from embeddings import Embedding
from embeddings.doctor import format_title
from embeddings.errors import TokensmithError, first_line
from trainers.commands import home_flags
from trainers.config import check_repo_id
from trainers.models import HUB_ID
from trainers.storing import summary


class UploadError(TokensmithError):
    """The upload to the hub failed; the embedding itself is stored (push it again with `tokensmith push`)."""


def _usage(emb: Embedding, filename: str, repo_id: str) -> str:
    token = f"<{emb.name}>"
    if set(emb.vectors) == {"clip_l", "clip_g"}:
        return f"""```python
from huggingface_hub import hf_hub_download
from safetensors.torch import load_file

state = load_file(hf_hub_download("{repo_id}", "{filename}"))
pipe.load_textual_inversion(state["clip_l"], token="{token}", text_encoder=pipe.text_encoder,
                            tokenizer=pipe.tokenizer)
pipe.load_textual_inversion(state["clip_g"], token="{token}", text_encoder=pipe.text_encoder_2,
                            tokenizer=pipe.tokenizer_2)
image = pipe("a photo of a {token}").images[0]
```"""
    return f"""```python
pipe.load_textual_inversion("{repo_id}", weight_name="{filename}", token="{token}")
image = pipe("a photo of a {token}").images[0]
```"""


def model_card(
    emb: Embedding, repo_id: str, *, filename: str | None = None, preview: str | None = None
) -> str:
    """The README.md of a hub repo holding one embedding: front matter, trigger, usage, and where it came
    from, as the file records it (trained here, or imported from another tool's file)."""
    filename = filename or f"{emb.name}.safetensors"
    trainer = summary(emb)
    base = emb.meta.get("base_model", "")
    front = [
        "---",
        "library_name: diffusers",
        "license: openrail++" if emb.family == "sdxl" else "license: openrail",
    ]
    if HUB_ID.match(base):  # never a guess: a local path, `demo` or another tool's checkpoint label is no id
        front.append(f"base_model: {base}")
    trained_here = str(trainer.get("version", "")).startswith("tokensmith")  # else another tool's file
    tags = ["textual-inversion", "stable-diffusion", *(["tokensmith"] if trained_here else []), emb.family]
    front += ["tags:", *(f"- {tag}" for tag in tags), "---"]
    widths = ", ".join(f"`{k}` ({emb.num_vectors}, {w})" for k, w in emb.widths.items())
    lines = [
        *front,
        "",
        f"# {emb.name}: a textual-inversion embedding",
        "",
        f"Trigger: **`<{emb.name}>`** in a prompt. Family: {emb.family}. Tensors: {widths} in `{filename}`",
        "(the layout A1111, ComfyUI, kohya and InvokeAI read as is).",
        "",
    ]
    if preview:
        lines += [f"![samples]({preview})", ""]
    lines += ["## Use with diffusers", "", _usage(emb, filename, repo_id), ""]
    lines += ["A1111 / ComfyUI / InvokeAI: put the file in your `embeddings` folder and write its name.", ""]
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
        f"- imported from: {format_title(emb.meta['source_format'])}" + (f" `{source}`" if source else "")
    ]


def _training(emb: Embedding, trainer: dict) -> list[str]:
    """The card's section for an embedding tokensmith trained: its base model, init, steps and settings."""
    meta, config = emb.meta, trainer.get("config", {})
    metrics = _json(meta.get("metrics"))
    lines = ["## Training", "", f"- base model: `{meta.get('base_model') or 'unknown'}`"]
    if meta.get("init"):
        lines.append(f"- init: `{meta['init']}`")
    steps = f"- steps: {meta.get('steps', '?')} (ended: {trainer.get('end', '?')})"
    if trainer.get("kept") == "best":
        steps = (
            f"- steps: {meta.get('steps', '?')}, the best-scored snapshot of a run of "
            f"{trainer.get('trained_steps', '?')} (ended: {trainer.get('end', '?')})"
        )
    lines.append(steps)
    for key in ("learning_rate", "batch_size", "grad_accum", "vectors", "templates", "resolution", "seed"):
        if key in config:
            lines.append(f"- {key}: `{config[key]}`")
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
    return [*lines, "", f"Trained with tokensmith (`{trainer['version']}`)."]


def _provenance(emb: Embedding) -> list[str]:
    """The card's section for an embedding tokensmith did not train: what the file itself records."""
    meta = emb.meta
    lines = ["## Provenance", ""]
    lines += _imported(emb)
    recorded = (("base_model", "base model"), ("steps", "steps"), ("init", "init"))
    for key, label in recorded:
        if meta.get(key):
            lines.append(f"- {label} (as the file records it): `{meta[key]}`")
    if meta.get("parent"):
        lines.append(f"- made from: {meta['parent']}")
    if len(lines) == 2:
        lines.append("- the file records no training details")
    return [*lines, "", "Not trained with tokensmith; this card was written from the file's own metadata."]


def push_embedding(
    emb: Embedding,
    path: Path,
    repo_id: str,
    *,
    private: bool = False,
    preview=None,
    api=None,
    home: Path | None = None,
) -> str:
    """Create (or reuse) the hub model repo and upload the embedding file, its card and a preview; its URL.
    `home` (the store's) is named in the retry command of a failed upload when it is not the default."""
    check_repo_id(repo_id, emb.name)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copy2(path, folder / f"{emb.name}.safetensors")
        if preview is not None:
            preview.save(folder / "preview.png")
        card = model_card(emb, repo_id, preview="preview.png" if preview is not None else None)
        (folder / "README.md").write_text(card, encoding="utf-8")
        try:
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=f"Add <{emb.name}>")
        except Exception as exc:  # httpx's network errors, the hub's HTTP and login errors share no base
            raise UploadError(
                f"upload to {repo_id} failed ({type(exc).__name__}: {first_line(exc)}); check the network "
                "and `hf auth login` (or `huggingface-cli login`), then run "
                f"`{shlex.join(['tokensmith', 'push', emb.name, repo_id, *home_flags(home)])}`"
            ) from None
    return f"https://huggingface.co/{repo_id}"
