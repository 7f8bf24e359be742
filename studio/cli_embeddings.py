"""Embedding commands: list, show, export, rename, rm and restore.

`import` is studio/cli_import.py; blend, nearest and doctor (which load a model) are studio/cli_vectors.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from embeddings.canonical import FORMAT_PT
from embeddings.doctorstore import OTHER_FORMAT
from embeddings.files import PREVIEW_SUFFIX, SUFFIX
from embeddings.text import printable, shell_quote
from studio.cli_options import add_command, store_of

EXPORT_FORMATS = ("canonical", "diffusers", "a1111-pt", "a1111-png")
STORED_NAME = "a stored embedding's name (`tokensmith list` shows them)"
# --json of rename, rm and restore: `path` (and `preview`) is where the file is now, `old_path` where it was
MOVED_JSON = {
    "rename": "print the old and new name and path as JSON",
    "rm": "print the name and the file's path in the trash as JSON",
    "restore": "print the name and the restored file's path as JSON",
}


def register(subparsers, common) -> None:
    """Add the embeddings commands to the `tokensmith` parser."""
    sub = add_command(
        subparsers,
        common,
        "list",
        "list stored embeddings (reads file headers only)",
        "Examples:\n  tokensmith list\n  tokensmith list --json | jq '.[].name'",
    )
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_list)

    sub = add_command(
        subparsers,
        common,
        "show",
        "show one stored embedding: metadata, shapes, norms",
        "Example:\n  tokensmith show bad-hands-5 --json",
    )
    sub.add_argument("name", metavar="NAME", help=STORED_NAME)
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_show)

    sub = add_command(
        subparsers,
        common,
        "export",
        "write a stored embedding in another tool's format",
        "Examples:\n  tokensmith export my-cat --format a1111-pt --out my-cat.pt\n"
        "  tokensmith export my-xl --format diffusers --out my-xl/   # SDXL: a folder for the pair\n"
        "  tokensmith export my-cat --format a1111-png --out my-cat.png\n\n"
        'canonical: our file (A1111, ComfyUI, kohya read it as is); diffusers: {"<name>": tensor};\n'
        "a1111-pt: the .pt dict A1111 writes; a1111-png: the preview with the sd-ti-embedding chunk.",
    )
    sub.add_argument("name", metavar="NAME", help=STORED_NAME)
    sub.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS, help="the format to write (see below)"
    )
    sub.add_argument("--out", required=True, metavar="PATH", help="output file (diffusers SDXL: a folder)")
    sub.add_argument("--force", action="store_true", help="replace existing output files")
    sub.add_argument(
        "--json", action="store_true", help="print the name, format, sha256 and the written files as JSON"
    )
    sub.set_defaults(run=run_export)

    for command, helptext, example, fn in (
        ("rename", "rename a stored embedding", "tokensmith rename cat my-cat", run_rename),
        ("rm", "move a stored embedding to the trash", "tokensmith rm my-cat", run_rm),
        ("restore", "bring an embedding back from the trash", "tokensmith restore my-cat", run_restore),
    ):
        sub = add_command(subparsers, common, command, helptext, f"Example:\n  {example}")
        if command == "rename":
            sub.add_argument("name", metavar="OLD", help="the stored name to change")
            sub.add_argument("new", metavar="NEW", help="the new name (one that is not stored yet)")
        elif command == "restore":
            sub.add_argument("name", metavar="NAME", help="the name of an embedding in the trash")
        else:
            sub.add_argument("name", metavar="NAME", help=STORED_NAME)
        sub.add_argument("--json", action="store_true", help=MOVED_JSON[command])
        sub.set_defaults(run=fn)


# --- helpers ---
def print_json(data) -> None:
    """`data` as indented JSON on stdout, keys sorted."""
    print(json.dumps(data, indent=2, sort_keys=True))


# --- commands ---
def run_list(args) -> int:
    problems: list = []
    others: list = []
    store = store_of(args)
    entries = store.list(problems=problems, others=others)
    # file names and header text are a file's: printable, so a name holding an escape cannot draw on the
    # terminal or forge a line; the commands suggested are shell_quote'd to paste as one line
    for path, reason in problems:
        reason = reason.removeprefix(f"{path}: ")  # the reader's errors start with the file, named already
        stem = shell_quote(path.name.removesuffix(".safetensors"))
        hint = (  # a reason that names no command: what the file is, and the way to clear it out
            ""
            if "`tokensmith " in reason
            else f" (`tokensmith doctor {stem}` says more; `tokensmith rm {stem}` moves it to the trash)"
        )
        print(printable(f"tokensmith list: warning: skipped {path.name}: {reason}{hint}"), file=sys.stderr)
    for path in others:
        note = (
            f"tokensmith list: note: not read: {path.name}: {OTHER_FORMAT}; if it is an embedding, "
            f"`tokensmith import {shell_quote(str(path))}` stores a copy in that format"
        )
        print(printable(note), file=sys.stderr)
    if not entries:
        # the folder named: a --home with a typo lists nothing, and says where it looked
        print(
            f"no embeddings in {store.root} yet: `tokensmith import FILE` or `tokensmith train` adds some",
            file=sys.stderr,
        )
    if args.json:
        print_json([entry.to_json() for entry in entries])
        return 0
    if not entries:
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:  # family and created are header metadata, which any file may set
        widths = "+".join(str(w) for w in e.widths.values())
        extra = f"  {printable(e.meta.get('created', '')[:10])}" + ("  [preview]" if e.preview else "")
        family = printable(e.family)
        print(f"{e.name:<{width}}  {family:<6} {e.num_vectors:>3}v  width {widths:<9}{extra}".rstrip())
    return 0


def run_show(args) -> int:
    store = store_of(args)
    name = store.resolve(args.name)  # `show cat` finds 'Cat', as <cat> does in a prompt
    emb = store.get(name)
    entry = store.entry(name)
    data = shown(emb, entry)
    if args.json:  # json.dumps writes control characters as \u001b: the JSON stays the file's own text
        print_json(data)
        return 0
    for line in _show_lines(emb, entry, data):
        print(printable(line))  # metadata is the file's: an escape in it must not draw on the terminal
    return 0


def shown(emb, entry) -> dict:
    """What `show --json` prints of a stored embedding (`entry`: its listing entry): the entry's name, path,
    family, widths, meta and preview, with the vectors' sha256, their norms and the prompt tokens."""
    return {
        **entry.to_json(),
        "sha256": emb.sha256,
        "norms": emb.norms(),
        "tokens": [f"<{emb.name}>"] + [f"<{emb.name}>_{i}" for i in range(1, emb.num_vectors)],
    }


def _show_lines(emb, entry, data: dict) -> list[str]:
    """`show`'s report: the summary, file, tokens and norms, then every metadata key, one line each."""
    lines = [emb.describe(), f"file:    {entry.path}", f"tokens:  {' '.join(data['tokens'])}"]
    for key, norms in data["norms"].items():
        lines.append(f"norms:   {key}: {', '.join(f'{x:.4g}' for x in norms)}")
    meta = sorted((printable(key), value) for key, value in emb.meta.items())  # keys padded as they print
    pad = max((len(key) for key, _ in meta), default=0) + 2
    lines += [f"{key + ':':<{pad}}{value}{_meta_note(key, value)}" for key, value in meta]
    if entry.preview:
        lines.append(f"preview: {entry.preview}")
    return lines


def _meta_note(key: str, value: str) -> str:
    """A word on a header value that reads as something else: safetensors' `format: pt` is its tag for
    torch tensors, not a .pt file."""
    return f"  ({FORMAT_PT})" if (key, value) == ("format", "pt") else ""


def run_export(args) -> int:
    from embeddings.exporting import export, planned_outputs
    from studio.cli_options import stored_preview

    store = store_of(args)
    name = store.resolve(args.name)
    emb = store.get(name)
    root = store.root.resolve()
    targets = planned_outputs(emb, args.format, Path(args.out))
    if args.out.endswith(("/", os.sep)) and targets == [Path(args.out)]:  # Path() drops the slash
        suffix = {"a1111-png": ".png", "a1111-pt": ".pt"}.get(args.format, ".safetensors")
        example = Path(args.out) / (name + suffix)
        raise IsADirectoryError(
            f"--out {args.out} names a folder; give the file to write, e.g. --out {example}"
        )
    for target in targets:
        if target.resolve().is_relative_to(root):
            raise ValueError(
                f"{target} is inside the store ({store.root}), whose files only tokensmith's own commands "
                "write; export to a path outside it"
            )
    image = None
    if args.format == "a1111-png":  # the PNG's job is to carry the embedding, which a plain card does too
        instead = "the PNG carries a plain card instead (replace that file with an image, or delete it)"
        image = stored_preview(store.preview_path(name), "export", instead)
    written = export(emb, args.format, Path(args.out), overwrite=args.force, image=image)
    if args.json:  # `path`: --out (the pair's folder for diffusers SDXL); `files`: each file written
        files = [str(path) for path in written]
        report = {"name": name, "format": args.format, "path": str(Path(args.out)), "files": files}
        print_json(report | {"sha256": emb.sha256})  # the vectors' hash, as `show` gives it
        return 0
    for path in written:
        print(path)
    return 0


def _preview_at(path: Path, name: str) -> str | None:
    """The thumbnail beside the embedding file `path` (in the store or a trash folder), if it has one."""
    preview = path.with_name(name + PREVIEW_SUFFIX)
    return str(preview) if preview.is_file() else None


def run_rename(args) -> int:
    store = store_of(args)
    path = store.rename(args.name, args.new)
    if args.json:
        old_path = store.root / (args.name + SUFFIX)  # a stored name or a stray file's stem: rename took it
        moved = {"old_name": args.name, "old_path": str(old_path), "preview": _preview_at(path, args.new)}
        print_json({"name": args.new, "path": str(path)} | moved)
        return 0
    print(args.new)
    return 0


def run_rm(args) -> int:
    store = store_of(args)
    folder = store.delete(args.name)  # also a stray file's name, pasted from `list`'s $'...' advice
    print(
        f"moved '{printable(args.name)}' to the trash; `tokensmith restore {shell_quote(args.name)}` brings "
        "it back",
        file=sys.stderr,
    )
    if args.json:  # the note above stays on stderr; the trash folder holds the file under its own name
        trashed = folder / (args.name + SUFFIX)
        where = {"old_path": str(store.root / trashed.name), "preview": _preview_at(trashed, args.name)}
        print_json({"name": args.name, "path": str(trashed)} | where)
    return 0


def run_restore(args) -> int:
    path = store_of(args).restore(args.name)
    if args.json:
        print_json({"name": args.name, "path": str(path), "preview": _preview_at(path, args.name)})
        return 0
    print(printable(args.name))
    return 0
