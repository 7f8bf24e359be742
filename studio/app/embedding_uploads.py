"""The embeddings a batch of uploaded files holds, each file read as `tokensmith import FILE` reads it, with
one message per upload that is not imported, naming the upload (never the temporary folder it is read from).
No Streamlit here: the Library's Import section draws what this returns."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Uploads:
    """What a batch of uploaded files holds: each embedding with the upload(s) it came from, and the files
    that are not imported (one message each: no embedding, a lone half of an SDXL pair, ...)."""

    found: list[tuple[str, Any]] = field(default_factory=list)  # (file name(s), Embedding)
    problems: list[str] = field(default_factory=list)


def read_uploads(files: Sequence[tuple[str, bytes]]) -> Uploads:
    """The embeddings in uploaded (file name, bytes), each file read on its own as `tokensmith import FILE`
    reads it, so two uploads of one name (every diffusers download is `learned_embeds.safetensors`) never
    replace each other, and a `*.preview.png` or `.hidden.pt` picked by hand is read. The two halves of a
    diffusers SDXL pair uploaded together still make one embedding; a half without its partner is not
    stored (alone it is not the SDXL embedding). Messages name the uploads, never the temporary folder they
    are read from, and uploads of one file name by their place and size; an embedding uploaded twice is kept
    once (`import`'s rule)."""
    from embeddings.importing import distinct_sources, lone_pair_half

    out = Uploads()
    labels = upload_labels(files)
    found: list[tuple[Path, Any]] = []  # (the temporary file or pair folder, embedding)
    uploaded: dict[Path, str] = {}  # temporary path -> the upload(s) it holds
    unpaired: list[str] = []  # halves that could not be told apart: one message for them all
    with tempfile.TemporaryDirectory(prefix="tokensmith-import-") as tmp:
        groups, unmatched = _upload_groups(files, lambda i: _token_of(files[i], Path(tmp) / f"probe-{i}"))
        for g, group in enumerate(groups):
            folder = Path(tmp) / str(g)  # one folder per upload (or pair): equal names cannot clash
            folder.mkdir()
            shown = {folder / written_name(files[i][0]): labels[i] for i in group}
            try:
                for path, i in zip(shown, group, strict=True):
                    path.write_bytes(files[i][1])
            except OSError as exc:  # e.g. a full temporary disk: this upload is not read, the others are
                problem = _without_paths(str(exc), shown)
                out.problems.append(f"{' + '.join(shown.values())}: not imported: {problem}")
                continue
            uploaded |= shown
            if len(group) > 1:
                shown[folder] = uploaded[folder] = " + ".join(labels[i] for i in group)
            elif group[0] in unmatched:
                unpaired.append(labels[group[0]])
                continue
            elif note := lone_pair_half(next(iter(shown))):
                out.problems.append(f"{labels[group[0]]}: not imported: {_without_paths(note, shown)}")
                continue
            read = _read_group(folder if len(group) > 1 else next(iter(shown)), shown, out)
            if len(group) == 1:  # named from the file written: the upload's own name comes back
                read = [(source, _as_uploaded(emb, source, files[group[0]][0])) for source, emb in read]
            found += read
        distinct = distinct_sources(found)  # resolves the paths: inside the folder's lifetime
    if unpaired:
        out.problems.append(
            f"{', '.join(unpaired)}: not imported: these are halves of a diffusers SDXL pair, and which "
            "learned_embeds goes with which learned_embeds_2 could not be told: upload an SDXL pair "
            "(learned_embeds + learned_embeds_2) on its own, apart from other diffusers files"
        )
    out.found = [(uploaded.get(source, source.name), emb) for source, emb in distinct]
    return out


def upload_labels(files: Sequence[tuple[str, bytes]]) -> list[str]:
    """How messages name each upload: its file name, and where several uploads share one (a browser sends
    no folders), their place in the list and size: 'redtok.safetensors (2nd upload, 930 B)'."""
    names = [_file_name(name) for name, _ in files]
    return [
        f"{name} ({_ordinal(i + 1)} upload, {_size_text(len(data))})" if names.count(name) > 1 else name
        for i, (name, (_, data)) in enumerate(zip(names, files, strict=True))
    ]


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _size_text(size: int) -> str:
    """'928 B', '1.2 KB', '3.4 MB'."""
    if size < 1000:
        return f"{size} B"
    return f"{size / 1000:.1f} KB" if size < 1000**2 else f"{size / 1000**2:.1f} MB"


def _file_name(name: str) -> str:
    """The upload's own file name (a browser sends no folders; a name that is only folders gets one)."""
    return Path(name).name or "upload"


def written_name(name: str) -> str:
    """The name an upload is written under to be read: its stem as the store name an import makes of it
    (`safe_name`, which the importer applies to a name taken from the stem anyway), and its suffix if an
    importer reads it ('My Cat (1).pt' -> 'My-Cat-1.pt'). The SDXL pair's names stay as they are: they are
    what pairs the halves. So a name the filesystem cannot hold (over 255 bytes, '..', a NUL byte, a
    separator) is never a path, and the messages keep the upload's own name (`upload_labels`)."""
    from embeddings.formats.diffusers import PAIR_NAMES, PAIR_NAMES_BIN
    from embeddings.names import safe_name

    name = _file_name(name)
    if name in PAIR_NAMES + PAIR_NAMES_BIN:
        return name
    stem, suffix = _split_suffix(name)
    return safe_name(stem) + suffix


def _split_suffix(name: str) -> tuple[str, str]:
    """('My Cat', '.pt') for 'My Cat.pt'; (name, '') where the suffix is none an importer reads."""
    from embeddings.importing import SUFFIXES

    suffix = Path(name).suffix
    if suffix.lower() in SUFFIXES and len(name) > len(suffix):
        return name[: -len(suffix)], suffix
    return name, ""


def _as_uploaded(emb: Any, written: Path, name: str) -> Any:
    """`emb` read from the upload `name` written as `written`, with the facts an import of the file itself
    records: the upload's file name as `source_file`, and its stem as `source_name` where the embedding's
    name came from the stem and an import changes it."""
    name = _file_name(name)
    stem = _split_suffix(name)[0]
    restored = {}
    if emb.meta.get("source_file") == written.name:
        restored["source_file"] = name
    if emb.name == _split_suffix(written.name)[0] != stem and not emb.meta.get("source_name"):
        restored["source_name"] = stem
    return emb.with_meta(**restored) if restored else emb


def _token_of(file: tuple[str, bytes], folder: Path) -> str | None:
    """The token a diffusers file holds (what pairs an SDXL pair's halves), None if it does not read."""
    from embeddings.errors import TokensmithError
    from embeddings.importing import import_file

    folder.mkdir(exist_ok=True)
    path = folder / written_name(file[0])
    path.write_bytes(file[1])
    try:
        return import_file(path).meta.get("token")
    except (TokensmithError, ValueError, OSError):
        return None


def _upload_groups(
    files: Sequence[tuple[str, bytes]], token_of: Callable[[int], str | None]
) -> tuple[list[list[int]], set[int]]:
    """The uploads' indices, one per group, except the halves of a diffusers SDXL pair, read together: the
    one `learned_embeds_2` of a kind with its one `learned_embeds`, or among several of those the one whose
    token (`token_of`) is its own. Also the indices of the pair files that could not be told apart (several
    `learned_embeds_2`, or several `learned_embeds` that hold its token, or none that does)."""
    from embeddings.formats.diffusers import PAIR_NAMES, PAIR_NAMES_BIN

    groups: list[list[int]] = []
    unmatched: set[int] = set()
    for first_name, second_name in (PAIR_NAMES, PAIR_NAMES_BIN):
        firsts = [i for i, (n, _) in enumerate(files) if _file_name(n) == first_name]
        seconds = [i for i, (n, _) in enumerate(files) if _file_name(n) == second_name]
        if len(seconds) == 1 and len(firsts) == 1:  # as a folder pairs them (the import checks the tokens)
            groups.append([firsts[0], seconds[0]])
            continue
        if not (firsts and seconds):
            continue
        tokens = {token_of(i) for i in seconds} - {None}
        matching = [i for i in firsts if token_of(i) in tokens]
        if len(seconds) == 1 and len(matching) == 1:
            groups.append([matching[0], seconds[0]])
        else:  # the other learned_embeds are ordinary diffusers files, read on their own
            unmatched.update(seconds + matching)
    paired = {i for group in groups for i in group}
    return groups + [[i] for i in range(len(files)) if i not in paired], unmatched


def _read_group(path: Path, shown: dict[Path, str], out: Uploads) -> list[tuple[Path, Any]]:
    """The (source, embedding) pairs of `path` (one uploaded file, or the folder of an uploaded pair); what
    it does not hold goes into `out.problems`, naming the upload."""
    from embeddings.errors import TokensmithError
    from embeddings.importing import import_sources

    skipped: list[tuple[Path, str]] = []
    try:
        sources = import_sources(path, skipped=skipped)
    except (TokensmithError, ValueError, OSError) as exc:  # a single file raises what a folder skips
        sources, skipped = [], [(path, str(exc))]
    for source, reason in skipped:
        name = shown.get(source, source.name)
        out.problems.append(f"{name}: {_without_paths(reason, shown).removeprefix(f'{name}: ')}")
    return [  # the pair's embedding names its uploads, not the temporary folder
        (source, emb.with_meta(source_file=shown[path]) if source == path and path.is_dir() else emb)
        for source, emb in sources
    ]


def _without_paths(text: str, shown: dict[Path, str]) -> str:
    """`text` with each temporary path replaced by the upload's name (the longest paths first)."""
    for path in sorted(shown, key=lambda p: len(str(p)), reverse=True):
        text = text.replace(str(path), shown[path])
    return text


def name_clashes(found: Sequence[tuple[str, Any]]) -> list[str]:
    """One message per name that several uploads hold, naming the files (the core's `name_clashes`, the
    rule of `tokensmith import`, which then stores none of them), with the studio's way out."""
    from embeddings.importing import name_clashes as clashes_of

    return [
        f"{clash}. Nothing was imported: import one of them, rename it in the Library, then import the next"
        for clash in clashes_of(found)
    ]
