"""Provenance: every PNG carries how it was made (written and read here), and `replay` (replaying.py) makes it
again pixel for pixel.

Two text chunks: `tokensmith` (JSON: prompt, negative, model and family, each embedding's name and sha256,
those installed partly (--partial), blends and the slerp they were computed with, swaps, guides, scheduler,
steps, guidance, seed, size, init image hash, version) and `parameters` (the AUTOMATIC1111 infotext, so
other tools show the settings too).

A sheet of images (a grid, variations, a trace strip) carries one `tokensmith` chunk with a `sheet` kind and
its `cells`: each generated image's provenance and where it sits, row by row, so `replay --cell K` makes
one of them again.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from embeddings import package_version
from embeddings.errors import TokensmithError
from embeddings.files import atomic_write_bytes
from embeddings.maths import SLERP_VERSION
from studio.generation.conditioning import installed_partly
from studio.generation.schedule import sampler_title

CHUNK = "tokensmith"
A1111_CHUNK = "parameters"
FORMAT = 1
SHEET_WORDS = {"grid": "grid", "variations": "variations sheet", "trace": "trace strip"}


class ReplayError(TokensmithError):
    """An image that cannot be replayed here; the message says what is missing."""


def provenance_dict(
    *,
    req: Any,
    guides: list,
    model: Any,
    prompt_as_run: str,
    negative_as_run: str,
    embeddings: list,
    blends: list[str],
    init_sha256: str | None,
    seed: int,
    index: int,
) -> dict:
    """The JSON chunk's content for one image of a request."""
    init_path = str(Path(req.init_image).resolve()) if isinstance(req.init_image, str | Path) else None
    partly = [e.name for e in embeddings if installed_partly(e)]
    return {
        "format": FORMAT,
        "tokensmith": package_version(),
        "prompt": req.prompt,
        "negative": req.negative,
        "prompt_as_run": prompt_as_run,  # after swaps
        "negative_as_run": negative_as_run,
        "model": model.source,
        "family": model.family,
        "embeddings": [{"name": e.name, "sha256": e.sha256} for e in embeddings],
        # installed clip_l-only (--partial); replay installs them so again. Absent when none was.
        **({"partial": partly} if partly else {}),
        "blends": blends,
        # how inline slerp blends were computed (maths.SLERP_VERSION); absent in images made with slerp 1
        "slerp": SLERP_VERSION,
        "swaps": dict(req.swaps),
        "guides": [g.run_spec for g in guides],  # match's path resolved, so a replay elsewhere finds it
        "guide_files": [g.record() for g in guides if g.file is not None],
        "scheduler": req.scheduler,
        "steps": req.steps,
        "step_clock": req.step_clock,
        "guidance": req.guidance,
        "seed": seed,
        "batch_seed": req.seed,
        "batch_index": index,
        "width": req.width,
        "height": req.height,
        # reader: how the file was read (img2img.INIT_READER); absent in images made by reader 1
        "init_image": None
        if init_sha256 is None
        else {"path": init_path, "sha256": init_sha256, "reader": req.init_reader},
        "strength": req.strength if init_sha256 is not None else None,
        # DDIM/DDPM's clipping of x̂0 (schedule.make_scheduler); absent in images made before it was turned
        # off, which replay with the model config's own setting (null)
        "clip_sample": req.clip_sample,
    }


def a1111_parameters(prov: dict) -> str:
    """The AUTOMATIC1111 infotext: prompt, 'Negative prompt: ...', then 'Steps: 20, Sampler: ..., ...'."""
    fields = [
        f"Steps: {prov['steps']}",
        f"Sampler: {sampler_title(prov['scheduler'])}",
        f"CFG scale: {prov['guidance']:g}",
        f"Seed: {prov['seed']}",
        f"Size: {prov['width']}x{prov['height']}",
        f"Model: {_model_label(prov['model'])}",
    ]
    if prov.get("strength") is not None:
        fields.append(f"Denoising strength: {prov['strength']:g}")
    if prov["embeddings"]:
        hashes = ", ".join(f"{e['name']}: {e['sha256'][:12]}" for e in prov["embeddings"])
        fields.append(f'TI hashes: "{hashes}"')
    fields.append(f"Version: tokensmith {prov['tokensmith']}")
    lines = [prov["prompt_as_run"]]
    if prov["negative_as_run"]:
        lines.append(f"Negative prompt: {prov['negative_as_run']}")
    lines.append(", ".join(fields))
    return "\n".join(lines)


def _model_label(source: str) -> str:
    """A folder or file's name (hub ids and 'demo' as they are)."""
    return Path(source).name if Path(source).exists() else source


def png_bytes(image: Image.Image, prov: dict | None) -> bytes:
    """PNG bytes with the provenance chunks: one image's (and its A1111 infotext), or a sheet's."""
    info = PngImagePlugin.PngInfo()
    if prov is not None:
        info.add_text(CHUNK, json.dumps(prov, sort_keys=True))
        if "sheet" not in prov:  # a sheet's cells have their own settings: no one infotext fits
            info.add_text(A1111_CHUNK, a1111_parameters(prov))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def save_png(result: Any, path: str | Path, *, overwrite: bool = True) -> Path:
    """Write `result.image` with its provenance chunks; the file is written completely or not at all."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise TokensmithError(f"{path}: images are written as PNG (with provenance); use a .png name")
    make_folder(path.parent)
    return atomic_write_bytes(path, png_bytes(result.image, result.provenance), overwrite=overwrite)


def make_folder(folder: Path) -> None:
    """`folder` and those above it, or NotADirectoryError naming the one that is a file (never a
    FileExistsError, which the doors read as "the image's own name is taken")."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocking = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise NotADirectoryError(f"{blocking} is a file, not a folder: choose another --out") from None


def read_provenance(path: str | Path, *, label: str | None = None, cell: int | None = None) -> dict:
    """The JSON chunk of a tokensmith PNG, or ReplayError saying why there is none (naming the file as
    `label`, e.g. an upload's own name, when given). For a sheet (grid, variations, trace strip), the
    provenance of its image number `cell` (1, 2, ... row by row); a sheet without `cell` is a ReplayError
    that says how many images it holds."""
    name = label or str(path)
    prov = read_chunk(Path(path), name)
    if "sheet" in prov or cell is not None:
        prov = _sheet_cell(prov, name, cell)
    if problem := _malformed(prov):
        raise ReplayError(f"{name}: the provenance chunk {problem}; it was changed after tokensmith wrote it")
    return prov


def read_chunk(path: Path, name: str) -> dict:
    """The `tokensmith` chunk of the PNG at `path` as JSON of a format this version reads."""
    if not path.exists():
        raise ReplayError(f"cannot read {name}: it does not exist")
    try:
        with Image.open(path) as image:
            text = image.text.get(CHUNK) if hasattr(image, "text") else None
    except Image.DecompressionBombError as exc:  # not an OSError; and past any size tokensmith writes
        raise ReplayError(f"cannot read {name}: it is far too large to be an image tokensmith wrote") from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise ReplayError(f"cannot read {name}: it is not a readable PNG ({type(exc).__name__})") from exc
    if not text:
        raise ReplayError(
            f"{name} has no tokensmith provenance chunk: only the images tokensmith generates can be "
            "replayed (and the grids, variations and trace strips that record their cells)"
        )
    try:
        prov = json.loads(text)
    except ValueError as exc:
        raise ReplayError(f"{name}: the provenance chunk is not valid JSON ({exc})") from exc
    if not isinstance(prov, dict) or prov.get("format") != FORMAT:
        found = prov.get("format") if isinstance(prov, dict) else None
        raise ReplayError(f"{name}: provenance format {found!r} is not one this version reads")
    return prov


def _sheet_cell(prov: dict, name: str, cell: int | None) -> dict:
    """The provenance of image `cell` of the sheet `prov`, or ReplayError saying how to choose one."""
    if "sheet" not in prov:
        raise ReplayError(f"{name} is one image, not a grid: replay it without --cell")
    cells = prov.get("cells")
    if not isinstance(cells, list) or not all(isinstance(c, dict) and "provenance" in c for c in cells):
        raise ReplayError(f"{name}: the provenance chunk has a bad 'cells' list; it was changed since")
    what = SHEET_WORDS.get(prov["sheet"], "sheet")
    if prov["sheet"] == "trace":
        how = "replay the image it traces with --cell 1"
    else:
        how = f"replay one of them with --cell K (1 to {len(cells)}, row by row)"
    if cell is None and prov["sheet"] == "trace":
        raise ReplayError(f"{name} is a {what}, not an image: {how}")
    if cell is None:
        raise ReplayError(f"{name} is a {what} of {len(cells)} images, not one image: {how}")
    if not 1 <= cell <= len(cells):
        raise ReplayError(f"{name} has no cell {cell}: {how}")
    chosen = cells[cell - 1]["provenance"]
    if not isinstance(chosen, dict):
        raise ReplayError(f"{name}: cell {cell} has no provenance record; it was changed since")
    return chosen


# what replaying.request_from and check_replayable read, and the types they need
REQUIRED = {"prompt": str, "negative": str, "scheduler": str, "model": str}
WHOLE = ("seed", "steps", "width", "height")
RECORD_KEYS = ("kind", "guide", "path", "sha256")  # of each guide_files entry (Guide.record)
FILE_KINDS = ("match", "module")  # the guides that read a file, which a replay checks first


def _malformed(prov: dict) -> str | None:
    """What makes a chunk unusable for a replay ('lacks 'prompt'', 'has a bad 'width': "abc"'), else None."""
    for key, kind in REQUIRED.items():
        if key not in prov:
            return f"lacks {key!r}"
        if not isinstance(prov[key], kind):
            return f"has a bad {key!r}: {json.dumps(prov[key])}"
    for key in (*WHOLE, "guidance"):
        value = prov.get(key)
        if value is None:
            return f"lacks {key!r}"
        whole = isinstance(value, int) and not isinstance(value, bool)
        if not (whole if key in WHOLE else isinstance(value, int | float) and not isinstance(value, bool)):
            return f"has a bad {key!r}: {json.dumps(value)}"
    entries = prov.get("embeddings", [])
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str) and isinstance(e.get("sha256"), str)
        for e in entries
    ):
        return "has a bad 'embeddings' list"
    slerp = prov.get("slerp", 1)
    if isinstance(slerp, bool) or slerp not in range(1, SLERP_VERSION + 1):
        return f"has a bad 'slerp': {json.dumps(slerp)}"
    init = prov.get("init_image")
    if init is not None and not (
        isinstance(init, dict)
        and isinstance(init.get("sha256"), str)
        and isinstance(init.get("path"), str | None)
        and init.get("reader", 1) in (1, 2, 3)
    ):
        return "has a bad 'init_image'"
    if not isinstance(prov.get("clip_sample"), bool | None):
        return f"has a bad 'clip_sample': {json.dumps(prov['clip_sample'])}"
    return _malformed_guides(prov)


def _malformed_guides(prov: dict) -> str | None:
    """What is wrong with the chunk's `guides` and `guide_files`, else None. Every guide that reads a file
    (match=, module=) has the record tokensmith writes of that file: without one, nothing could be checked
    before the replay reads the image or imports the module."""
    from studio.generation.guidance import guide_kind

    guides, records = prov.get("guides") or [], prov.get("guide_files") or []
    if not isinstance(guides, list) or not all(isinstance(spec, str) for spec in guides):
        return "has a bad 'guides' list"
    if not isinstance(records, list) or not all(
        isinstance(entry, dict) and all(isinstance(entry.get(key), str) for key in RECORD_KEYS)
        for entry in records
    ):
        return "has a bad 'guide_files' list"
    recorded = {(entry["kind"], entry["guide"]) for entry in records}
    for spec in guides:
        if (kind := guide_kind(spec)) in FILE_KINDS and (kind, spec) not in recorded:
            return f"has the guide {json.dumps(spec)} without its 'guide_files' record"
    return None
