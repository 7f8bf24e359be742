"""Sharing: a model card for a trained embedding and `--push-to-hub` through huggingface_hub.

The card is plain text built from the embedding's own metadata, so it is built and checked offline; only
`push_embedding` touches the network.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from embeddings import Embedding
from embeddings.errors import TokensmithError, first_line
from trainers.config import check_repo_id


class UploadError(TokensmithError):
    """The upload to the hub failed; the embedding itself is stored (push it again with `tokensmith push`)."""


FAMILY_BASES = {
    "sd1": "runwayml/stable-diffusion-v1-5",
    "sd2": "stabilityai/stable-diffusion-2-1",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}


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
    """The README.md of a hub repo holding one embedding: front matter, trigger, usage, training facts."""
    filename = filename or f"{emb.name}.safetensors"
    meta = emb.meta
    trainer = json.loads(meta.get("trainer", "{}") or "{}")
    metrics = json.loads(meta.get("metrics", "{}") or "{}")
    config = trainer.get("config", {})
    base = meta.get("base_model", "")
    front = [
        "---",
        "library_name: diffusers",
        "license: openrail++" if emb.family == "sdxl" else "license: openrail",
    ]
    base_id = (
        base
        if base.count("/") == 1 and not base.startswith((".", "/", "~"))
        else FAMILY_BASES.get(emb.family)
    )
    if base_id:
        front.append(f"base_model: {base_id}")
    front += ["tags:", "- textual-inversion", "- stable-diffusion", "- tokensmith", f"- {emb.family}", "---"]
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
    lines += ["## Training", "", f"- base model: `{base or 'unknown'}`", f"- init: `{meta.get('init', '')}`"]
    steps = f"- steps: {meta.get('steps', '?')} (ended: {trainer.get('end', '?')})"
    if trainer.get("kept") == "best":
        steps = (
            f"- steps: {meta.get('steps', '?')}, the best-scored snapshot of a run of "
            f"{trainer.get('trained_steps', '?')} (ended: {trainer.get('end', '?')})"
        )
    lines.append(steps)
    for key in ("learning_rate", "batch_size", "vectors", "templates", "resolution", "seed"):
        if key in config:
            lines.append(f"- {key}: `{config[key]}`")
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
    lines += [
        "",
        f"Trained with [tokensmith](https://github.com/) (`{trainer.get('version', 'tokensmith')}`).",
    ]
    return "\n".join(lines) + "\n"


def push_embedding(
    emb: Embedding, path: Path, repo_id: str, *, private: bool = False, preview=None, api=None
) -> str:
    """Create (or reuse) the hub model repo and upload the embedding file, its card and a preview; its URL."""
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
                f"`tokensmith push {emb.name} {repo_id}`"
            ) from None
    return f"https://huggingface.co/{repo_id}"
