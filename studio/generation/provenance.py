"""Provenance: every PNG carries how it was made, and `replay` makes it again pixel for pixel.

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

from embeddings import Store, package_version
from embeddings.errors import TokensmithError
from embeddings.files import atomic_write_bytes
from embeddings.maths import SLERP_VERSION
from studio.generation.conditioning import installed_partly
from studio.generation.schedule import sampler_title
from trainers.config import MAX_RESOLUTION

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


def save_image(image: Image.Image, path: str | Path, *, overwrite: bool = True) -> Path:
    """A plain PNG (no provenance), atomically."""
    path = Path(path)
    make_folder(path.parent)
    return atomic_write_bytes(path, png_bytes(image, None), overwrite=overwrite)


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


# what request_from and check_replayable read, and the types they need
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


def request_from(prov: dict) -> Any:
    """The GenerateRequest that makes exactly this one image again."""
    from studio.generation.requests import GenerateRequest

    init = prov.get("init_image")
    return GenerateRequest(
        prompt=prov["prompt"],
        negative=prov["negative"],
        seed=int(prov["seed"]),
        steps=int(prov["steps"]),
        guidance=float(prov["guidance"]),
        scheduler=prov["scheduler"],
        width=int(prov["width"]),
        height=int(prov["height"]),
        num_images=1,
        swaps=dict(prov.get("swaps") or {}),
        init_image=init["path"] if init else None,
        strength=float(prov["strength"]) if prov.get("strength") is not None else 0.6,
        guides=tuple(prov.get("guides") or ()),
        step_clock=prov.get("step_clock", "evaluations"),  # images from before it was recorded
        init_reader=init_reader(init),
        clip_sample=prov.get("clip_sample"),  # absent: None, the config's own (how they were sampled)
    )


def slerp_version(prov: dict) -> int:
    """How the image's inline slerp blends were computed: its record's `slerp`, 1 for images made before."""
    return int(prov.get("slerp", 1))


def init_reader(init: dict | None) -> int:
    """How the image's init file was read: its record's `reader`, 1 for images made before it was recorded."""
    return int((init or {}).get("reader", 1))


def check_size(prov: dict, name: str) -> None:
    """ReplayError for a recorded size past MAX_RESOLUTION, generate's limit: the size comes from the file,
    which may have been made by hand to exhaust the memory of the machine that replays it."""
    width, height = int(prov["width"]), int(prov["height"])
    if max(width, height) > MAX_RESOLUTION:
        raise ReplayError(
            f"cannot replay {name}: it asks for a {width}x{height} image, past the {MAX_RESOLUTION} pixels a "
            "side that generate makes too (an image that large would exhaust this machine's memory)"
        )


def check_guide_modules(prov: dict, name: str, *, allowed: bool) -> None:
    """ReplayError unless the user allowed the replay to run the guide modules the image names. Replaying
    one imports and runs code that the file chooses, so it runs only when asked for, after the user has read
    it; the error names each module and the source file its record gives."""
    records = {entry["guide"]: entry for entry in guide_records(prov) if entry["kind"] == "module"}
    if allowed or not records:
        return
    from studio.generation.guidance import guide_module

    what = " and ".join(f"{guide_module(spec)!r} from {entry['path']!r}" for spec, entry in records.items())
    many = len(records) > 1
    raise ReplayError(
        f"cannot replay {name}: it would import and run code that the image names, the guide "
        f"module{'s' * many} {what}; read {'those files' if many else 'that file'} first, then replay it "
        "with `tokensmith replay --allow-guide-modules` to run it (the studio never runs an uploaded "
        "image's guide modules)"
    )


def guide_records(prov: dict) -> list[dict]:
    """The `guide_files` records of the guides the image uses (_malformed has checked each has one)."""
    guides = prov.get("guides") or []
    return [entry for entry in prov.get("guide_files") or [] if entry["guide"] in guides]


def check_replayable(prov: dict, store: Store | None, *, precise: bool = False) -> list[str]:
    """Everything this machine lacks to replay `prov`, in words (empty: all present and unchanged).

    `precise` says of each recorded file whether it is missing, unreadable or changed (the CLI: the user's
    own files); otherwise one wording says all three, so that an image uploaded to the studio cannot probe
    which paths exist on the studio's machine and which of them are images."""
    from studio.generation.guidance import changed_files

    missing = []
    names = store.names() if store is not None else []
    for entry in prov.get("embeddings", []):
        if entry["name"] not in names:
            missing.append(f"embedding <{entry['name']}> (sha256 {entry['sha256'][:12]}) is not in the store")
        elif store.get(entry["name"]).sha256 != entry["sha256"]:
            missing.append(
                f"embedding <{entry['name']}> in the store has changed since "
                f"(was sha256 {entry['sha256'][:12]})"
            )
    missing.extend(changed_files(guide_records(prov), precise=precise))
    init = prov.get("init_image")
    size = (int(prov["width"]), int(prov["height"]))
    if init and (problem := _init_problem(init, size, precise=precise)) is not None:
        missing.append(problem)
    return missing


def _init_problem(init: dict, size: tuple[int, int], *, precise: bool) -> str | None:
    """What keeps the recorded init image from being read as it was, in words (None: nothing)."""
    from studio.generation.guidance import NOT_AS_MADE
    from studio.generation.img2img import InitImageError, load_init_image

    path = Path(init["path"]) if init.get("path") else None
    if path is None or not path.is_file():
        trouble = "is not available"
    else:
        try:
            _, sha256 = load_init_image(path, size, reader=init_reader(init))
        except InitImageError as exc:
            trouble = f"can no longer be read ({exc})"
        else:
            if sha256 == init["sha256"]:
                return None
            trouble = "has changed since"
    return f"init image {init.get('path') or '(given in memory)'} {trouble if precise else NOT_AS_MADE}"


def replay(
    path: str | Path,
    *,
    store: Store | None = None,
    session: Any = None,
    model: str | None = None,
    label: str | None = None,
    cell: int | None = None,
    model_config: str | None = None,
    on_step: Any = None,
    allow_guide_modules: bool = False,
    precise: bool = False,
) -> Any:
    """Re-make the image at `path` (one Result; image `cell`, 1, 2, ... row by row, of a grid, variations
    sheet or trace strip); ReplayError lists whatever is missing or changed.

    Without a `session`, `model` (else the recorded one; a single file with `model_config`'s configs) loads
    only after those checks, so a missing embedding is said without a wait. `on_step` sees each sampling
    step (a progress bar). The image's guide modules are imported and run only with `allow_guide_modules`
    (the CLI's flag; the studio never sets it), from source files whose hashes match the image's records.
    `precise`: name each missing file's trouble exactly (check_replayable; the CLI)."""
    from studio.generation.guidance import importable_guides
    from studio.generation.session import Session
    from trainers.models import load_model

    name = label or str(path)
    prov = read_provenance(path, label=label, cell=cell)
    check_size(prov, name)
    check_guide_modules(prov, name, allowed=allow_guide_modules)
    missing = check_replayable(prov, store, precise=precise)
    if missing:
        raise ReplayError(f"cannot replay {label or path}: " + "; ".join(missing))
    if session is None:
        session = Session(load_model(model or prov["model"], config=model_config))
    encoder = session.encoder
    asked = encoder.partial, encoder.slerp_version
    encoder.partial = bool(prov.get("partial"))  # as the image was made: --partial or not
    encoder.slerp_version = slerp_version(prov)  # and with its slerp
    try:
        with importable_guides(guide_records(prov)):  # a guide module from its recorded folder
            [result] = session.generate(request_from(prov), store=store, on_step=on_step, as_recorded=True)
    finally:
        encoder.partial, encoder.slerp_version = asked
    result.provenance.pop("slerp")  # the replay records the slerp it used: the image's own record
    if "slerp" in prov:
        result.provenance["slerp"] = prov["slerp"]
    return result
