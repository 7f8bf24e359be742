"""Export: one Embedding -> the file another tool reads. Every output is written completely or not at all.

canonical   our file; A1111, ComfyUI, kohya and InvokeAI read it as it is
diffusers   {"<name>": (n, dim)}; SDXL: `out` is a folder receiving learned_embeds(_2).safetensors
a1111-pt    the dict A1111 saves (string_to_param, name, step, ...), loadable with weights_only=True
a1111-png   an image carrying the `sd-ti-embedding` chunk (the store's preview, else a plain card)
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from embeddings.canonical import save_canonical
from embeddings.errors import EmbeddingFormatError
from embeddings.files import refuse_file_as_folder
from embeddings.formats.diffusers import PAIR_NAMES, write_diffusers
from embeddings.formats.pickled import write_a1111_pt
from embeddings.formats.png import write_a1111_png
from embeddings.value import SDXL_KEYS, Embedding

FORMATS = ("canonical", "diffusers", "a1111-pt", "a1111-png")


def planned_outputs(emb: Embedding, fmt: str, out: Path) -> list[Path]:
    """The files an export will write."""
    if fmt == "diffusers" and set(emb.vectors) == set(SDXL_KEYS):
        return [Path(out) / name for name in PAIR_NAMES]
    return [Path(out)]


def export(
    emb: Embedding, fmt: str, out_path: Path, *, overwrite: bool = False, image: Image.Image | None = None
) -> list[Path]:
    """Write `emb` in format `fmt` at `out_path`; returns the files written. Refuses to replace files unless
    overwrite=True. `image` is the picture of an a1111-png export.
    """
    if fmt not in FORMATS:
        raise EmbeddingFormatError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    out_path = Path(out_path)
    targets = planned_outputs(emb, fmt, out_path)
    folders = [p for p in targets if p.is_dir()]
    if folders:
        suffix = ".png" if fmt == "a1111-png" else (".pt" if fmt == "a1111-pt" else ".safetensors")
        raise IsADirectoryError(
            f"{folders[0]} is a folder; give the file to write, e.g. --out {folders[0] / (emb.name + suffix)}"
        )
    refuse_file_as_folder(targets[0].parent)  # an SDXL pair's two files share it
    existing = [p for p in targets if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; choose another --out or pass --force")
    try:
        if fmt == "canonical":
            return [save_canonical(emb, out_path)]
        if fmt == "diffusers":
            return write_diffusers(emb, out_path)
        if fmt == "a1111-pt":
            return [write_a1111_pt(emb, out_path)]
        return [write_a1111_png(emb, out_path, image)]
    except OSError as exc:  # name the output, not the temp file beside it
        reason = exc.strerror or str(exc)
        raise OSError(f"cannot write {out_path}: {reason}; choose another --out") from None
