"""Replay: make an image again from its provenance chunk (studio/generation/provenance.py reads it), after
checking everything it names: the chunk's own shape, its size, the embeddings in the store, the init image
and the files its guides read, and, before any guide module is imported, that the user allowed it.

An image may come from anyone, so nothing it names runs or is read past these checks: a guide module only
with `allow_guide_modules` and a matching hash, a size only up to generate's limit.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embeddings import Store
from embeddings.files import file_sha256
from studio.generation.guidance import (
    MATCH_READER,
    GuideError,
    guide_module,
    importable_guides,
    match_reader,
    recorded_root,
    reference_image,
)
from studio.generation.guide_modules import module_source
from studio.generation.img2img import image_sha256
from studio.generation.provenance import ReplayError, read_provenance
from trainers.config import MAX_RESOLUTION

# A replay's one wording for a recorded file that is missing, unreadable or changed (without `precise`): an
# image uploaded to the studio must not learn which of the three, so which paths exist there.
NOT_AS_MADE = "is missing, unreadable or changed since: a replay needs the very file it was made with"


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
            f"cannot replay {name}: it asks for an image of {width}x{height}, past the {MAX_RESOLUTION} "
            "pixels a side that generate makes too (an image that large would exhaust this machine's memory)"
        )


def check_guide_modules(prov: dict, name: str, *, allowed: bool) -> None:
    """ReplayError unless the user allowed the replay to run the guide modules the image names. Replaying
    one imports and runs code that the file chooses, so it runs only when asked for, after the user has read
    it; the error names each module and the source file its record gives."""
    records = {entry["guide"]: entry for entry in guide_records(prov) if entry["kind"] == "module"}
    if allowed or not records:
        return
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


# --- the files the image's guides read: checked as files, before anything is imported ---


def changed_files(records: list[dict], *, precise: bool = False) -> list[str]:
    """What replaying with guides recorded by `Guide.record` would find missing or changed, in words.

    `precise` says which of missing, unreadable or changed (the CLI, on the user's own files); otherwise
    one wording says all three, so that an image uploaded to the studio cannot probe which paths exist on
    the studio's machine. Nothing is imported: a module's source is found and hashed as a file."""
    problems = []
    for entry in records:
        if entry["kind"] == "match":
            problems.extend(_changed_match(entry, precise=precise))
        elif entry["kind"] == "module":
            problems.extend(_changed_module(entry, precise=precise))
    return problems


def _changed_match(entry: dict, *, precise: bool) -> list[str]:
    """What keeps a match guide's recorded image from being read as it was (empty: nothing)."""
    path = Path(entry["path"])
    if entry.get("reader", 1) not in range(1, MATCH_READER + 1):
        return [
            f"match image {path} was read by a newer tokensmith (reader {entry['reader']!r}): "
            "update tokensmith to replay this image"
        ]
    if not path.is_file():
        return [f"match image {path} is missing" if precise else f"match image {path} {NOT_AS_MADE}"]
    try:
        same = image_sha256(reference_image(path, match_reader(entry))) == entry["sha256"]
    except GuideError:
        same = False
    if same:
        return []
    return [f"match image {path} has changed since" if precise else f"match image {path} {NOT_AS_MADE}"]


def _changed_module(entry: dict, *, precise: bool) -> list[str]:
    """What keeps a module guide's recorded source from being the one a replay imports (empty: nothing)."""
    module_name, source = guide_module(entry["guide"]), replay_source(entry)
    if source is not None and file_sha256(source) == entry["sha256"]:
        return []
    if not precise:
        return [f"guide module {module_name} ({entry['path']}) {NOT_AS_MADE}"]
    if source is not None:
        return [f"guide module {module_name} ({source}) has changed since"]
    return [
        f"guide module {module_name} ({entry['path']}) cannot be found: run replay from the folder that "
        f"holds {module_name.replace('.', '/')}.py, or add that folder to PYTHONPATH"
    ]


def replay_source(entry: dict) -> Path | None:
    """The source file a replay imports a module guide's record from, found without importing anything: as
    the module imports by name from here, else from the folder its recorded file imports from (a replay from
    another folder, which importable_guides puts on the path). changed_files compares its hash."""
    module_name = guide_module(entry["guide"])
    source = module_source(module_name)
    if source is None and (root := recorded_root(entry)) is not None:
        source = module_source(module_name, folders=[root])
    return source
