"""Sharing: `tokensmith push NAME REPO` uploads a stored embedding, its preview and a model card to the hub
(what `tokensmith train --push-to-hub` does after a run, for any stored embedding, trained here or not)."""

from __future__ import annotations

import argparse
import sys


def register(subparsers, common) -> None:
    """Add `push` to the `tokensmith` parser."""
    sub = subparsers.add_parser(
        "push",
        parents=[common],
        help="upload a stored embedding with a model card to a Hugging Face hub repo",
        description="Upload a stored embedding with a model card to a Hugging Face hub repo.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Examples:\n  tokensmith push my-cat your-name/my-cat\n"
            "  tokensmith push my-cat your-name/my-cat --private\n"
            "  tokensmith push EasyNegative your-name/easynegative --license other\n\n"
            "Uploads the canonical file (local paths in its metadata cut to their base names), its\n"
            "preview and a model card built from its metadata (what `tokensmith train --push-to-hub`\n"
            "does). The card states the base model's licence for a file trained here on SD 1.x/2.x/SDXL,\n"
            "and none for imports, blends and the demo world unless --license gives one. --private\n"
            "refuses a repo that already exists and is public. Log in first: `hf auth login`. Prints the\n"
            "repo's URL."
        ),
    )
    sub.add_argument("name", metavar="NAME", help="a stored embedding's name (`tokensmith list` shows them)")
    sub.add_argument("repo", metavar="REPO", help="hub repo id: your-name/repo (created if missing)")
    sub.add_argument("--private", action="store_true", help="create the repo as private")
    sub.add_argument(
        "--license",
        dest="license_id",
        metavar="ID",
        help="the licence the card states, a hub licence id (apache-2.0, cc-by-4.0, other, ...)",
    )
    sub.set_defaults(run=run_push)


def run_push(args) -> int:
    from embeddings import Store
    from trainers.card import card_license, check_license
    from trainers.hub import push_embedding

    if args.license_id:
        check_license(args.license_id)
    store = Store.for_home(args.home)
    emb = store.get(args.name)
    preview = _preview(store.preview_path(args.name))
    if card_license(emb, args.license_id) is None:
        print(
            "tokensmith push: note: the card states no licence (tokensmith cannot know the terms of an "
            "imported, blended or demo-world embedding); pass --license ID to state one",
            file=sys.stderr,
        )
    url = push_embedding(
        emb,
        store.path(args.name),
        args.repo,
        private=args.private,
        preview=preview,
        home=args.home,
        license_id=args.license_id,
    )
    print(url)
    return 0


def _preview(path):
    """The stored thumbnail as RGB, or None when there is none or it cannot be read: it is optional, so a
    broken one is a warning and the upload goes on without it."""
    from PIL import Image

    if not path.is_file():
        return None
    try:
        with Image.open(path) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        print(
            f"tokensmith push: warning: the preview {path} cannot be read ({exc}); uploading without it "
            "(delete or replace that file to upload a preview)",
            file=sys.stderr,
        )
        return None
