"""The `import` command: embedding files of every format into the store, resumable when it stops halfway."""

from __future__ import annotations

import sys
from pathlib import Path

from embeddings.errors import StoreError
from embeddings.text import printable
from studio.cli_embeddings import print_json
from studio.cli_options import add_command, store_of


def register(subparsers, common) -> None:
    """Add `import` to the `tokensmith` parser."""
    sub = add_command(
        subparsers,
        common,
        "import",
        "import embedding files (any format) into the store",
        "Examples:\n  tokensmith import bad-hands-5.pt EasyNegative.safetensors\n"
        "  tokensmith import sdxl-run/ --name my-style      # the diffusers SDXL pair in a folder\n"
        "  tokensmith import card.png --force             # A1111 embedding image; replace same name\n\n"
        "Reads diffusers {token: tensor} (.safetensors/.bin, SDXL pair), A1111 .pt and PNG/WebP images,\n"
        "kohya/ComfyUI emb_params and SDXL clip_l/clip_g files. Pickles load with weights_only=True.\n"
        "Prints the stored name(s), one per line (on stderr, FILE -> NAME where a name differs from the\n"
        "file's). An embedding already stored with identical vectors is skipped, so running an import\n"
        "that was interrupted again finishes it.",
    )
    sub.add_argument("paths", nargs="+", metavar="PATH", help="files or folders to import")
    sub.add_argument("--name", help="store under this name (only when importing one embedding)")
    sub.add_argument("--force", action="store_true", help="replace stored embeddings of the same name")
    sub.add_argument("--json", action="store_true", help="print a JSON list of what was stored")
    sub.set_defaults(run=run_import)


def run_import(args) -> int:
    from embeddings import StoreError, validate_name
    from embeddings.importing import distinct_sources, import_sources, lone_pair_half, name_clashes

    store = store_of(args)
    found, skipped = [], []  # found: (the file it came from, embedding)
    for path in args.paths:
        found.extend(import_sources(Path(path), skipped=skipped))
    found = distinct_sources(found)  # `cat.pt ./cat.pt`, or a folder and a file in it: stored once
    # A half of an SDXL pair alone is not the SDXL embedding (the studio's uploads skip it too): stored, it
    # would be an unrelated one-encoder embedding under the concept's name.
    halves = {source: note for source, _ in found if (note := lone_pair_half(source))}
    skipped += [(source, note) for source, note in halves.items()]
    found = [(source, emb) for source, emb in found if source not in halves]
    for path, reason in skipped:
        reason = reason.removeprefix(f"{path}: ")  # the importer's errors already start with the file
        print(f"tokensmith import: skipped {path}: {reason}", file=sys.stderr)
    if not found and halves and len(halves) == len(skipped):
        raise StoreError("nothing imported: each file was a lone half of an SDXL pair (see above)")
    if not found:
        raise StoreError("nothing to import: no file held an embedding")
    if args.name is not None:  # --name '' is an invalid name, not 'no name'
        if len(found) != 1:
            raise StoreError(f"--name applies to one embedding, but {len(found)} were found; drop --name")
        found = [(found[0][0], found[0][1].with_name(validate_name(args.name)))]
    else:
        _say_renamed(found)
    names = [emb.name for _, emb in found]
    clashes = name_clashes(found)
    if clashes:
        raise StoreError(f"{'; '.join(clashes)}; import them one by one with --name, or leave one out")
    # Checked for every file before storing any. Without --force, an embedding already stored with identical
    # vectors is not an error and is not stored again, so running an import that stopped halfway again
    # finishes it; --force replaces it (its header may differ: a family label, the provenance). One look per
    # name: another import may be storing the same files right now.
    stored = [emb for _, emb in found if store.exists(emb.name)]
    same = set() if args.force else {emb.name for emb in stored if store.holds(emb)}
    taken = [emb.name for emb in stored if emb.name not in same]
    if taken and not args.force:
        raise _taken_error(store, taken[0])
    folded = store.folded_names()  # one scan for all the names: a store holds thousands
    for name in names:
        store.check_case_twin(name, folded=folded)  # 'Cat' beside a stored 'cat' is refused even with --force
    if same:
        print(f"tokensmith import: already stored (identical): {_some(names, same)}", file=sys.stderr)
    results = _store_each(store, found, same, overwrite=args.force, as_json=args.json)
    _print_imported(results, as_json=args.json)
    return 0


def _taken_error(store, name: str):
    """The error for a name stored with other vectors: a clash, or a stored file that cannot be read (then
    --force is the repair, not a choice between two embeddings)."""
    from embeddings import EmbeddingFormatError, StoreError
    from embeddings.errors import first_line

    try:
        store.get(name)
    except (EmbeddingFormatError, OSError) as exc:
        why = first_line(exc).removeprefix(f"{store.path(name)}: ")
        return StoreError(
            f"'{name}' is stored, but the stored file cannot be read ({why}); --force replaces it with the "
            "imported one (or use --name NEW to import under another name)"
        )
    return StoreError(
        f"'{name}' already exists in the store with different vectors; use --name NEW or --force to "
        "replace it"
    )


def _say_renamed(found: list[tuple]) -> None:
    """On stderr, each file whose embedding is stored under a name other than the file's own, so the stored
    names can be found: '日本.safetensors -> emb-cf2abf0c5b' (a name made valid, or the file's own)."""
    for source, emb in found:
        if emb.name != Path(source).stem:
            print(f"tokensmith import: {source} -> {emb.name}", file=sys.stderr)


def _some(names: list[str], chosen: set[str] | None = None, *, shown: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more': the names (those in `chosen`, if given) in their order."""
    picked = [n for n in names if chosen is None or n in chosen]
    more = f" and {len(picked) - shown} more" if len(picked) > shown else ""
    return ", ".join(picked[:shown]) + more


def _store_each(store, found, same: set[str], *, overwrite: bool, as_json: bool) -> list[tuple]:
    """Store each (file, embedding) not in `same`; (file, embedding, path, already stored) for each.

    Files are stored one by one, so an error or Ctrl-C can stop the import halfway: what was stored stays
    (it is whole), its names are printed, and the message says which file failed and that running the same
    command again finishes the import (it skips what is already stored). They are stored in a batch, which
    locks and scans the store folder once per few hundred files, not for every file.
    """
    from tqdm import tqdm

    from embeddings import StoreError
    from embeddings.errors import TokensmithError
    from studio.cli import bar_options

    results: list[tuple] = []
    bar = tqdm(found, desc="storing", unit="emb", disable=len(found) < 50, **bar_options())
    source = found[0][0]
    try:
        with store.batch() as batch:
            for item in bar:
                source, emb = item  # `source` names the file in the message if storing it fails
                if emb.name in same:
                    results.append((source, emb, store.path(emb.name), True))
                    continue
                try:
                    results.append((source, emb, batch.put(emb, overwrite=overwrite), False))
                except StoreError:
                    if not store.holds(emb):  # else the same embedding, stored meanwhile by another import
                        if overwrite or not store.exists(emb.name):
                            raise  # refused for its own reason (a letter-case twin, a folder in its place)
                        raise _TakenMeanwhile(emb.name) from None  # other vectors: --force replaces them
                    results.append((source, emb, store.path(emb.name), True))
    except KeyboardInterrupt:
        _print_imported(results, as_json=as_json)
        note = _stopped(f"interrupted while storing {source}", results, len(found))
        print(f"tokensmith import: {note}", file=sys.stderr)
        raise
    except (TokensmithError, OSError, ValueError) as exc:
        if len(found) == 1:
            raise StoreError(f"could not store {source}: {exc}") from exc
        _print_imported(results, as_json=as_json)
        retry = TO_REPLACE if isinstance(exc, _TakenMeanwhile) else TO_FINISH
        raise StoreError(_stopped(f"could not store {source}: {exc}", results, len(found), retry)) from exc
    return results


class _TakenMeanwhile(StoreError):
    """Another process stored an embedding of this name, with other vectors, while the import ran."""

    def __init__(self, name: str):
        super().__init__(
            f"an embedding named '{printable(name)}' was stored by another process while this import ran, "
            "with other vectors; pass --force to replace it"
        )


TO_FINISH = "run the same command again to finish: it skips what is already stored"
TO_REPLACE = "run the same command with --force to finish and replace it (what is already stored is skipped)"


def _stopped(what: str, results: list[tuple], total: int, retry: str = TO_FINISH) -> str:
    new = [emb.name for _, emb, _, already in results if not already]
    stored = f"{len(new)} of {total} were stored ({_some(new)})" if new else "nothing new was stored"
    return f"{what}; {stored}; {retry}"


def _print_imported(results: list[tuple], *, as_json: bool) -> None:
    """The imported names on stdout, one per line (or JSON, with the file each came from): newly stored and
    already stored alike."""
    if as_json:
        print_json(
            [
                {
                    "name": e.name,
                    "path": str(p),
                    "source": str(source),
                    "family": e.family,
                    "already_stored": already,
                }
                for source, e, p, already in results
            ]
        )
    elif results:
        print("\n".join(e.name for _, e, _, _ in results), flush=True)
