"""Embedding commands: list, show, export, rename, rm, restore, blend, nearest and doctor.

`import` is studio/cli_import.py.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from studio.cli import at_least_one
from studio.cli_options import check_model_options

EXPORT_FORMATS = ("canonical", "diffusers", "a1111-pt", "a1111-png")
STORED_NAME = "a stored embedding's name (`tokensmith list` shows them)"


def epilog(text: str) -> dict:
    """add_parser keyword arguments for an epilog kept as written (examples, line breaks)."""
    return {"epilog": text, "formatter_class": argparse.RawDescriptionHelpFormatter}


def described(help_text: str) -> dict:
    """add_parser keyword arguments for a command's help line, and the same as the sentence under `usage:`."""
    return {"help": help_text, "description": help_text[0].upper() + help_text[1:] + "."}


def register(subparsers, common) -> None:
    """Add the embeddings commands to the `tokensmith` parser."""
    sub = subparsers.add_parser(
        "list",
        parents=[common],
        **described("list stored embeddings (reads file headers only)"),
        **epilog("Examples:\n  tokensmith list\n  tokensmith list --json | jq '.[].name'"),
    )
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_list)

    sub = subparsers.add_parser(
        "show",
        parents=[common],
        **described("show one stored embedding: metadata, shapes, norms"),
        **epilog("Example:\n  tokensmith show bad-hands-5 --json"),
    )
    sub.add_argument("name", metavar="NAME", help=STORED_NAME)
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_show)

    sub = subparsers.add_parser(
        "export",
        parents=[common],
        **described("write a stored embedding in another tool's format"),
        **epilog(
            "Examples:\n  tokensmith export my-cat --format a1111-pt --out my-cat.pt\n"
            "  tokensmith export my-xl --format diffusers --out my-xl/   # SDXL: a folder for the pair\n"
            "  tokensmith export my-cat --format a1111-png --out my-cat.png\n\n"
            'canonical: our file (A1111, ComfyUI, kohya read it as is); diffusers: {"<name>": tensor};\n'
            "a1111-pt: the .pt dict A1111 writes; a1111-png: the preview with the sd-ti-embedding chunk."
        ),
    )
    sub.add_argument("name", metavar="NAME", help=STORED_NAME)
    sub.add_argument(
        "--format", required=True, choices=EXPORT_FORMATS, help="the format to write (see below)"
    )
    sub.add_argument("--out", required=True, metavar="PATH", help="output file (diffusers SDXL: a folder)")
    sub.add_argument("--force", action="store_true", help="replace existing output files")
    sub.set_defaults(run=run_export)

    for command, helptext, example, fn in (
        ("rename", "rename a stored embedding", "tokensmith rename cat my-cat", run_rename),
        ("rm", "move a stored embedding to the trash", "tokensmith rm my-cat", run_rm),
        ("restore", "bring an embedding back from the trash", "tokensmith restore my-cat", run_restore),
    ):
        sub = subparsers.add_parser(
            command, parents=[common], **described(helptext), **epilog(f"Example:\n  {example}")
        )
        if command == "rename":
            sub.add_argument("name", metavar="OLD", help="the stored name to change")
            sub.add_argument("new", metavar="NEW", help="the new name (one that is not stored yet)")
        elif command == "restore":
            sub.add_argument("name", metavar="NAME", help="the name of an embedding in the trash")
        else:
            sub.add_argument("name", metavar="NAME", help=STORED_NAME)
        sub.set_defaults(run=fn)

    sub = subparsers.add_parser(
        "blend",
        parents=[common],
        **described("make a new embedding from a weighted mix of embeddings and words"),
        **epilog(
            'Examples:\n  tokensmith blend "0.5*<cat> + 0.5*<dog>" --name catdog\n'
            '  tokensmith blend "slerp(<cat>, <dog>, 0.3)" --name mostly-cat --keep-norm\n'
            '  tokensmith blend "0.6*red + 0.4*yellow" --name orange-ish --model demo\n\n'
            "<name> is a stored embedding; a bare word is its token embedding in --model, and must be one\n"
            "token of its vocabulary (a word it splits into pieces is refused: the mix would be of letter\n"
            "fragments); 'a quoted phrase' is all its tokens, one vector each. Each word's tokens are\n"
            "printed on stderr. Shorter operands are zero-padded to the longest; SDXL blends act per encoder."
        ),
    )
    sub.add_argument(
        "expr", metavar="EXPR", help='the blend, e.g. "0.5*<cat> + 0.5*<dog>" (quote it for the shell)'
    )
    sub.add_argument("--name", required=True, help="name of the new embedding")
    sub.add_argument("--model", help="model whose vocabulary gives words their vectors (default: demo)")
    _model_config_option(sub)
    sub.add_argument("--keep-norm", action="store_true", help="keep the operands' mean vector norm")
    sub.add_argument(
        "--vectors", type=at_least_one, metavar="N", help="crop or zero-pad the result to N vectors"
    )
    sub.add_argument("--force", action="store_true", help="replace an embedding of the same name")
    sub.set_defaults(run=run_blend)

    sub = subparsers.add_parser(
        "nearest",
        parents=[common],
        **described("show the vocabulary tokens closest to each vector of an embedding"),
        **epilog(
            "Examples:\n  tokensmith nearest my-cat --model demo -k 5\n  tokensmith nearest my-cat --json"
        ),
    )
    sub.add_argument("name", metavar="NAME", help=STORED_NAME)
    sub.add_argument("--model", default="demo", help="model whose vocabulary to search (default: demo)")
    _model_config_option(sub)
    sub.add_argument("-k", type=at_least_one, default=10, help="tokens per vector (default 10)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_nearest)

    sub = subparsers.add_parser(
        "doctor",
        parents=[common],
        **described("explain what an embedding file is and whether it fits a model"),
        **epilog(
            "Examples:\n  tokensmith doctor bad-hands-5.pt\n"
            "  tokensmith doctor my-xl.safetensors --model ./sd15\n"
            "  tokensmith doctor my-cat --model demo   # a stored name works too\n\n"
            "Exit code 0 when the file is readable and fits (or no --model was given; a partial fit prints\n"
            "how to use it), 1 when it is unreadable or does not fit."
        ),
    )
    sub.add_argument(
        "path", metavar="PATH", help="an embedding file (any format), a folder, or a stored name"
    )
    sub.add_argument("--model", help="check the fit with this model")
    _model_config_option(sub)
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_doctor)


# --- helpers ---
def _model_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-config", metavar="DIR", help="configs for a single-file checkpoint --model (offline)"
    )


def store_of(args):
    """The store under the command's --home."""
    from embeddings import Store

    return Store.for_home(args.home)


def print_json(data) -> None:
    """`data` as indented JSON on stdout, keys sorted."""
    print(json.dumps(data, indent=2, sort_keys=True))


def _load_model(spec: str, config: str | None = None):
    from trainers.models import load_model

    print(f"loading model {spec} ...", file=sys.stderr)
    return load_model(spec, config=config)


# --- commands ---
def run_list(args) -> int:
    problems: list = []
    entries = store_of(args).list(problems=problems)
    for path, reason in problems:
        print(
            f"tokensmith list: warning: skipped {path.name}: {reason} (see `tokensmith doctor`)",
            file=sys.stderr,
        )
    if args.json:
        print_json([entry.to_json() for entry in entries])
        return 0
    if not entries:
        print("no embeddings yet: `tokensmith import FILE` or `tokensmith train` adds some", file=sys.stderr)
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:
        widths = "+".join(str(w) for w in e.widths.values())
        extra = f"  {e.meta.get('created', '')[:10]}" + ("  [preview]" if e.preview else "")
        print(f"{e.name:<{width}}  {e.family:<6} {e.num_vectors:>3}v  width {widths:<9}{extra}".rstrip())
    return 0


def run_show(args) -> int:
    store = store_of(args)
    emb = store.get(args.name)
    entry = store.entry(args.name)
    data = {
        **entry.to_json(),
        "sha256": emb.sha256,
        "norms": emb.norms(),
        "tokens": [f"<{emb.name}>"] + [f"<{emb.name}>_{i}" for i in range(1, emb.num_vectors)],
    }
    if args.json:
        print_json(data)
        return 0
    print(emb.describe())
    print(f"file:    {entry.path}")
    print(f"tokens:  {' '.join(data['tokens'])}")
    for key, norms in data["norms"].items():
        print(f"norms:   {key}: {', '.join(f'{x:.4g}' for x in norms)}")
    pad = max(len(key) for key in emb.meta) + 2 if emb.meta else 0
    for key in sorted(emb.meta):
        print(f"{key + ':':<{pad}}{emb.meta[key]}")
    if entry.preview:
        print(f"preview: {entry.preview}")
    return 0


def run_export(args) -> int:
    from PIL import Image

    from embeddings.exporting import export, planned_outputs

    store = store_of(args)
    emb = store.get(args.name)
    root = store.root.resolve()
    for target in planned_outputs(emb, args.format, Path(args.out)):
        if target.resolve().is_relative_to(root):
            raise ValueError(
                f"{target} is inside the store ({store.root}), whose files only tokensmith's own commands "
                "write; export to a path outside it"
            )
    image = None
    preview = store.preview_path(args.name)
    if args.format == "a1111-png" and preview.is_file():
        with Image.open(preview) as opened:
            image = opened.convert("RGB")
    for path in export(emb, args.format, Path(args.out), overwrite=args.force, image=image):
        print(path)
    return 0


def run_rename(args) -> int:
    store_of(args).rename(args.name, args.new)
    print(args.new)
    return 0


def run_rm(args) -> int:
    store_of(args).delete(args.name)
    print(
        f"moved '{args.name}' to the trash; `tokensmith restore {args.name}` brings it back", file=sys.stderr
    )
    return 0


def run_restore(args) -> int:
    store_of(args).restore(args.name)
    print(args.name)
    return 0


def run_blend(args) -> int:
    from embeddings import StoreError, validate_name, vectors_for_encoders
    from embeddings.blend_expr import parse_blend
    from embeddings.maths import blend, word_operand

    store = store_of(args)
    validate_name(args.name)
    if store.exists(args.name) and not args.force:
        raise StoreError(f"'{args.name}' already exists; choose another --name or pass --force")
    spec = parse_blend(args.expr)
    check_model_options(args.model, args.model_config, "blend")
    model = _load_model(args.model or "demo", args.model_config) if spec.needs_model or args.model else None
    if spec.needs_model:
        check_word_operands(spec, args.expr, model.encoders[0][1])
    parts = []
    for operand, weight in spec.parts:
        if operand.kind == "embedding":
            parts.append((store.get(operand.text), weight))
        else:
            parts.append((word_operand(operand.text, model.encoders), weight))
    result = blend(parts, args.name, method=spec.method, keep_norm=args.keep_norm, num_vectors=args.vectors)
    if model is not None:
        vectors_for_encoders(
            result, model.encoders, model_family=model.family
        )  # a clear error now if the result does not fit --model
        if spec.needs_model:
            result = result.with_meta(base_model=model.source, family=model.family)
    store.put(result, overwrite=args.force)
    print(args.name)
    return 0


def check_word_operands(spec, expr: str, tokenizer) -> None:
    """Print each word operand's tokens on stderr ("'red' -> red (1 token)"), then refuse an unquoted word
    that is not one token of the vocabulary: the model splits a word it does not know into pieces
    ('keyboard' -> k, e, y, bo, a, r, d), and a blend of those is of letter fragments, not of the word.
    A quoted phrase blends all its tokens on purpose."""
    from embeddings.blend_expr import TOKEN

    bare = {match.group("word") for match in TOKEN.finditer(expr) if match.group("word")}
    refused = []
    for text in dict.fromkeys(operand.text for operand, _ in spec.parts if operand.kind == "word"):
        ids = tokenizer(text, add_special_tokens=False).input_ids
        pieces = [piece.replace("</w>", "") for piece in tokenizer.convert_ids_to_tokens(ids)]
        print(f"{text!r} -> {', '.join(pieces)} ({len(ids)} token{'s' * (len(ids) != 1)})", file=sys.stderr)
        if text in bare and (len(ids) > 1 or tokenizer.unk_token_id in ids):
            refused.append((text, pieces))
    if refused:
        text, pieces = refused[0]
        how = (
            f"it splits into {len(pieces)} pieces ({', '.join(pieces)}), so the blend would mix those "
            "fragments"
            if len(pieces) > 1
            else "it reads as the unknown token, so the blend would mix that"
        )
        raise ValueError(
            f"{text!r} is not a word of this model's vocabulary: {how}, not the word; use a word the model "
            f"knows as one token, or quote it ('{text}') to blend its pieces on purpose"
        )


def run_nearest(args) -> int:
    from embeddings import token_names, vectors_for_encoders
    from embeddings.maths import nearest_tokens, norm_report

    emb = store_of(args).get(args.name)
    check_model_options(args.model, args.model_config, "nearest")
    model = _load_model(args.model, args.model_config)
    try:
        per_encoder, partial = vectors_for_encoders(emb, model.encoders, model_family=model.family), False
    except ValueError:  # an SD 1.x embedding on SDXL (or the reverse): look at the half that fits
        per_encoder = vectors_for_encoders(emb, model.encoders, partial=True, model_family=model.family)
        partial = True
    result, left_out = {}, []
    for (key, tok, te), vectors in zip(model.encoders, per_encoder, strict=True):
        if partial and not vectors.any():
            left_out.append(key)  # the zero half of a partial install has no neighbours worth showing
            continue
        rows = nearest_tokens(vectors, tok, te, k=args.k)
        result[key] = {
            "neighbours": [[vars(n) for n in row] for row in rows],
            "norms": norm_report(vectors, tok, te),
        }
    if args.json:
        print_json(result)
        return 0
    tokens = token_names(emb)
    for key, found in result.items():
        vocab = found["norms"]["vocab"]
        print(f"{key} (vocabulary norm: mean {vocab['mean']:.3g}, {vocab['min']:.3g}..{vocab['max']:.3g}):")
        for token, row, norm in zip(tokens, found["neighbours"], found["norms"]["norms"], strict=True):
            near = ", ".join(f"{n['token']} {n['cosine']:.3f}" for n in row)
            near = near or "(a zero vector: no direction)"
            print(f"  {token} (norm {norm:.3g}): {near}")
    if partial:
        print(_partial_note(emb, left_out, [key for key, _tok, _te in model.encoders]))
    return 0


def _partial_note(emb, left_out: list[str], model_keys: list[str]) -> str:
    """Why a partial fit's nearest tokens cover one encoder only."""
    if left_out:
        return (
            f"note: '{emb.name}' fits this model only partly (generate --partial): {', '.join(left_out)} "
            "would get zero vectors, so it is not shown"
        )
    unused = [key for key in emb.vectors if key not in model_keys and key != "clip_l"]
    return (
        f"note: '{emb.name}' fits this model only partly (generate --partial): only its clip_l half is "
        f"used and shown; this model has no encoder for {', '.join(unused) or 'the rest'}"
    )


def run_doctor(args) -> int:
    from embeddings import Store, StoreError
    from embeddings.doctor import diagnose

    path = Path(args.path)
    if not path.exists():
        try:
            store_path = Store.for_home(args.home).path(args.path)
        except StoreError:
            store_path = None
        if store_path is None or not store_path.exists():
            raise FileNotFoundError(f"{path}: no such file, and no stored embedding of that name")
        path = store_path
    check_model_options(args.model, args.model_config, "doctor")
    model = _load_model(args.model, args.model_config) if args.model else None
    encoders, family = (model.encoders, model.family) if model else (None, None)
    report = diagnose(path, encoders, model_family=family)
    if args.json:
        print_json(report.to_json())
    else:
        for line in report.lines:
            print(line)
        for warning in report.warnings:
            print(f"warning: {warning}")
    return 1 if report.fit in ("unreadable", "no") else 0
