"""Embedding maths and checks against a model's vocabulary: blend, nearest and doctor."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from embeddings.text import printable
from studio.cli import at_least_one
from studio.cli_embeddings import STORED_NAME, print_json, shown
from studio.cli_options import (
    add_command,
    check_model_options,
    load_model_noting,
    model_config_option,
    store_of,
)


def register(subparsers, common) -> None:
    """Add blend, nearest and doctor to the `tokensmith` parser."""
    _add_blend(subparsers, common)
    _add_nearest(subparsers, common)
    _add_doctor(subparsers, common)


def _add_blend(subparsers, common) -> None:
    sub = add_command(
        subparsers,
        common,
        "blend",
        "make a new embedding from a weighted mix of embeddings and words",
        'Examples:\n  tokensmith blend "0.5*<cat> + 0.5*<dog>" --name catdog\n'
        '  tokensmith blend "slerp(<cat>, <dog>, 0.3)" --name mostly-cat --keep-norm\n'
        '  tokensmith blend "0.6*red + 0.4*yellow" --name orange-ish --model demo\n\n'
        "<name> is a stored embedding; a bare word is its token embedding in --model, and must be one\n"
        "token of its vocabulary (a word it splits into pieces is refused: the mix would be of letter\n"
        "fragments); 'a quoted phrase' is all its tokens, one vector each. Each word's tokens are\n"
        "printed on stderr. Shorter operands are zero-padded to the longest; SDXL blends act per encoder.",
    )
    sub.add_argument(
        "expr", metavar="EXPR", help='the blend, e.g. "0.5*<cat> + 0.5*<dog>" (quote it for the shell)'
    )
    sub.add_argument("--name", required=True, help="name of the new embedding")
    sub.add_argument("--model", help="model whose vocabulary gives words their vectors (default: demo)")
    model_config_option(sub)
    sub.add_argument("--keep-norm", action="store_true", help="keep the operands' mean vector norm")
    sub.add_argument(
        "--vectors", type=at_least_one, metavar="N", help="crop or zero-pad the result to N vectors"
    )
    sub.add_argument("--force", action="store_true", help="replace an embedding of the same name")
    sub.add_argument(
        "--json", action="store_true", help="print what was stored as JSON (the object `show --json` prints)"
    )
    sub.set_defaults(run=run_blend)


def _add_nearest(subparsers, common) -> None:
    sub = add_command(
        subparsers,
        common,
        "nearest",
        "show the vocabulary tokens closest to each vector of an embedding",
        "Examples:\n  tokensmith nearest my-cat --model demo -k 5\n  tokensmith nearest my-cat --json\n\n"
        "Scores are cosines. Tokens read: 'cat' a word, 'squar…' a piece that a word goes on from,\n"
        "'\\x07' a byte that is not text, and '#id' after two that would look alike. --json adds the\n"
        "partial-fit note (null when it fits), each key's source key in the embedding and its tokens.",
    )
    sub.add_argument("name", metavar="NAME", help=STORED_NAME)
    sub.add_argument("--model", default="demo", help="model whose vocabulary to search (default: demo)")
    model_config_option(sub)
    sub.add_argument("-k", type=at_least_one, default=10, help="tokens per vector (default 10)")
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_nearest)


def _add_doctor(subparsers, common) -> None:
    sub = add_command(
        subparsers,
        common,
        "doctor",
        "explain what an embedding file is and whether it fits a model",
        "Examples:\n  tokensmith doctor bad-hands-5.pt\n"
        "  tokensmith doctor my-xl.safetensors --model ./sd15\n"
        "  tokensmith doctor my-cat --model demo   # a stored name works too\n\n"
        "A folder gets a report per embedding in it and its subfolders (--json: a list).\n"
        "Exit code 0 when the file is readable and fits (or no --model was given; a partial fit prints\n"
        "how to use it), 1 when it is unreadable or does not fit (for a folder: when any file is).",
    )
    sub.add_argument(
        "path",
        metavar="PATH",
        type=not_empty,
        help="an embedding file (any format), a folder, or a stored name",
    )
    sub.add_argument("--model", help="check the fit with this model")
    model_config_option(sub)
    sub.add_argument("--json", action="store_true", help="print JSON")
    sub.set_defaults(run=run_doctor)


def not_empty(text: str) -> str:
    """An argparse type for PATH: '' is a usage error (exit 2), not Path('') (which is '.', the folder this
    runs in, doctored with all its subfolders)."""
    if not text:
        raise argparse.ArgumentTypeError(
            "is empty; give a file, a folder ('.' for this one) or a stored name"
        )
    return text


def run_blend(args) -> int:
    """Parse EXPR, load --model when a word needs its vocabulary (or a fit is asked for), print each word's
    tokens on stderr, then blend the operands as the Blend page does (embeddings.blendparts) and store it."""
    from embeddings import StoreError, validate_name
    from embeddings.blend_expr import parse_blend
    from embeddings.blendparts import bare_words, resolve_operands, word_texts, word_tokens
    from embeddings.maths import blend, labelled_with_vocabulary

    store = store_of(args)
    validate_name(args.name)
    if store.exists(args.name) and not args.force:
        raise StoreError(f"'{args.name}' already exists; choose another --name or pass --force")
    spec = parse_blend(args.expr)
    check_model_options(args.model, args.model_config, "blend")
    model = (
        load_model_noting(args.model or "demo", args.model_config) if spec.needs_model or args.model else None
    )
    for text in word_texts(spec):  # "'red' -> red (1 token)": what each word blends, before any refusal
        print(word_tokens(text, model.encoders[0][1]).line(), file=sys.stderr)
    encoders, family = (model.encoders, model.family) if model else (None, None)
    parts = resolve_operands(spec, store, encoders, model_family=family, bare=bare_words(args.expr))
    result = blend(parts, args.name, method=spec.method, keep_norm=args.keep_norm, num_vectors=args.vectors)
    if model is not None:
        result = labelled_with_vocabulary(result, parts, base_model=model.source, family=model.family)
    store.put(result, overwrite=args.force)
    if args.json:  # `show NAME --json`'s object: import's entries name a source file, which a blend has not
        print_json(shown(store.get(args.name), store.entry(args.name)))
        return 0
    print(args.name)
    return 0


def run_nearest(args) -> int:
    """Per encoder: each vector's nearest tokens and the norms; --json the same, with the note of a partial
    fit (null when it fits), the `<name>_k` tokens and, per encoder key, the embedding's `source` key."""
    from embeddings import token_names
    from embeddings.inject import fitting_halves
    from embeddings.maths import nearest_tokens, norm_report

    store = store_of(args)
    emb = store.get(store.resolve(args.name))
    check_model_options(args.model, args.model_config, "nearest")
    model = load_model_noting(args.model, args.model_config)
    shown, note = fitting_halves(emb, model.encoders, model_family=model.family)
    tokens = token_names(emb)
    result = {}
    for (key, tok, te), vectors in shown:
        rows = nearest_tokens(vectors, tok, te, k=args.k)
        result[key] = {
            "source": source_key(emb, key),
            "tokens": tokens,
            "neighbours": [[vars(n) for n in row] for row in rows],
            "norms": norm_report(vectors, tok, te),
        }
    if args.json:
        print_json({**result, "note": note})
        return 0
    for key, found in result.items():
        vocab = found["norms"]["vocab"]
        print(
            f"{key} (vocabulary norm: mean {vocab['mean']:.3g}, {vocab['min']:.3g}..{vocab['max']:.3g}), "
            "nearest tokens by cosine:"
        )
        for token, row, norm in zip(tokens, found["neighbours"], found["norms"]["norms"], strict=True):
            near = ", ".join(f"{n['label']} {n['cosine']:.3f}" for n in row)
            near = near or "(a zero vector: no direction)"
            print(f"  {token} (norm {norm:.3g}): {near}")
    if note:
        print(f"note: {note}")
    return 0


def source_key(emb, encoder_key: str) -> str:
    """The key of `emb` whose vectors fitting_halves showed in the model's `encoder_key`: the same key, else
    (an SDXL file on an SD 1.x model) its clip_l half, else (a one-key file) its only key."""
    if encoder_key in emb.vectors:
        return encoder_key
    return "clip_l" if "clip_l" in emb.vectors else next(iter(emb.vectors))


def run_doctor(args) -> int:
    from embeddings.doctor import diagnose, diagnose_each
    from embeddings.formats.diffusers import pair_of

    path = Path(args.path)
    store = store_of(args)  # a file in it under a name the store refuses gets the rename advice
    if not path.exists():
        store_path = store.stored_file(store.resolve(args.path))  # also a hand-copied 'EasyNegative (1)'
        if store_path is None:
            raise FileNotFoundError(f"{path}: no such file, and no stored embedding of that name")
        path = store_path
    check_model_options(args.model, args.model_config, "doctor")
    model = load_model_noting(args.model, args.model_config) if args.model else None
    encoders, family = (model.encoders, model.family) if model else (None, None)
    # a folder: every embedding in it and its subfolders, a JSON list however many (a diffusers SDXL pair's
    # own folder is one embedding, reported as a file is)
    folder = path.is_dir() and pair_of(path) is None
    if path.is_dir():
        reports = diagnose_each(path, encoders, model_family=family, store_root=store.root)
    else:
        reports = [diagnose(path, encoders, model_family=family, store_root=store.root)]
    if args.json:
        print_json([r.to_json() for r in reports] if folder else reports[0].to_json())
    else:  # a report quotes the file's metadata and names: printable, so an escape in them cannot draw
        for i, report in enumerate(reports):
            if len(reports) > 1:
                print(("\n" if i else "") + f"== {printable(report.path)}")
            for line in report.lines:
                print(printable(line))
            for warning in report.warnings:
                print(printable(f"warning: {warning}"))
    return 1 if any(report.fit in ("unreadable", "no") for report in reports) else 0
