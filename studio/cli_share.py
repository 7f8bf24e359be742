"""Sharing: `tokensmith push NAME REPO` uploads a stored embedding, its preview and a model card to the hub
(what `tokensmith train --push-to-hub` does after a run, for any stored embedding, trained here or not)."""

from __future__ import annotations

import argparse


def register(subparsers, common) -> None:
    """Add `push` to the `tokensmith` parser."""
    sub = subparsers.add_parser(
        "push",
        parents=[common],
        help="upload a stored embedding with a model card to a Hugging Face hub repo",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Examples:\n  tokensmith push my-cat your-name/my-cat\n"
            "  tokensmith push my-cat your-name/my-cat --private\n\n"
            "Uploads the canonical file, its preview and a model card built from its metadata (what\n"
            "`tokensmith train --push-to-hub` does). Log in first: `hf auth login`. Prints the repo's URL."
        ),
    )
    sub.add_argument("name", metavar="NAME")
    sub.add_argument("repo", metavar="REPO", help="hub repo id: your-name/repo (created if missing)")
    sub.add_argument("--private", action="store_true", help="create the repo as private")
    sub.set_defaults(run=run_push)


def run_push(args) -> int:
    from PIL import Image

    from embeddings import Store
    from trainers.hub import push_embedding

    store = Store.for_home(args.home)
    emb = store.get(args.name)
    preview_path = store.preview_path(args.name)
    preview = None
    if preview_path.is_file():
        with Image.open(preview_path) as opened:
            preview = opened.convert("RGB")
    path = store.path(args.name)
    print(push_embedding(emb, path, args.repo, private=args.private, preview=preview, home=args.home))
    return 0
