"""Sharing: `tokensmith push NAME REPO` uploads a stored embedding, its preview and a model card to the hub
(what `tokensmith train --push-to-hub` does after a run, for any stored embedding, trained here or not)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from studio.cli_embeddings import STORED_NAME, print_json
from studio.cli_options import add_command, store_of


def register(subparsers, common) -> None:
    """Add `push` to the `tokensmith` parser."""
    sub = add_command(
        subparsers,
        common,
        "push",
        "upload a stored embedding with a model card to a Hugging Face hub repo",
        (
            "Examples:\n  tokensmith push my-cat your-name/my-cat\n"
            "  tokensmith push my-cat your-name/my-cat --private\n"
            "  tokensmith push EasyNegative your-name/easynegative --license other\n\n"
            "Uploads the canonical file (tokensmith's own metadata only, local paths cut to their base\n"
            "names), its preview and a model card built from its metadata (what `tokensmith train\n"
            "--push-to-hub` does). The card states the base model's licence for a file trained here on\n"
            "one of SD 1.x/2.x/SDXL's own hub repos, and none otherwise unless --license gives one.\n"
            "--private refuses a repo that already exists and is public; a repo that holds another\n"
            "embedding is refused unless --force. Log in first: `hf auth login`. Prints the repo's URL.\n"
            "--dry-run DIR uploads nothing (no login, no network): it writes those files into DIR (a new or\n"
            "empty folder) to read first, and prints their paths."
        ),
    )
    sub.add_argument("name", metavar="NAME", help=STORED_NAME)
    sub.add_argument("repo", metavar="REPO", help="hub repo id: your-name/repo (created if missing)")
    sub.add_argument("--private", action="store_true", help="create the repo as private")
    sub.add_argument(
        "--license",
        dest="license_id",
        metavar="ID",
        help="the licence the card states, a hub licence id (apache-2.0, cc-by-4.0, other, ...)",
    )
    sub.add_argument(
        "--force",
        action="store_true",
        help="push into a repo that holds another embedding: its .safetensors files are deleted in the same "
        "commit",
    )
    sub.add_argument(
        "--dry-run",
        metavar="DIR",
        help="upload nothing: write the files the upload would hold (the embedding, preview.png, README.md "
        "card) into DIR, a folder holding none of them",
    )
    sub.add_argument(
        "--json",
        action="store_true",
        help="print the repo's URL and the uploaded files as JSON (--dry-run: the folder and files written)",
    )
    sub.set_defaults(run=run_push)


def run_push(args) -> int:
    from studio.cli_options import stored_preview
    from trainers.card import card_license, no_license_note
    from trainers.config import check_repo_id
    from trainers.hub import push_embedding
    from trainers.licenses import check_license

    if args.license_id:
        check_license(args.license_id)
    check_repo_id(args.repo, args.name)  # before the licence note: a refused id uploads nothing
    store = store_of(args)
    emb = store.get(args.name)
    instead = (
        "writing the files without it (delete or replace that file to upload a preview)"
        if args.dry_run is not None
        else "uploading without it (delete or replace that file to upload a preview)"
    )
    preview = stored_preview(store.preview_path(args.name), "push", instead)
    if card_license(emb, args.license_id) is None:
        print(f"tokensmith push: note: {no_license_note(emb)}", file=sys.stderr)
    if args.dry_run is not None:
        return _dry_run(args, store, emb, preview)
    url = push_embedding(
        emb,
        store.path(args.name),
        args.repo,
        private=args.private,
        preview=preview,
        home=args.home,
        license_id=args.license_id,
        force=args.force,
    )
    if args.json:  # the files as write_hub_files makes them, named as the repo holds them
        files = [f"{emb.name}.safetensors", *(["preview.png"] if preview is not None else []), "README.md"]
        print_json({"name": emb.name, "repo": args.repo, "url": url, "uploaded": True, "files": files})
        return 0
    print(url)
    return 0


def _dry_run(args, store, emb, preview) -> int:
    """Write the upload's files into --dry-run DIR (made if missing) and print their paths: the card and the
    public copy can be read before anything leaves the machine. The store's own folder is refused, where the
    public copy would replace the stored file."""
    from embeddings.files import refuse_file_as_folder
    from studio.cli import UsageError
    from trainers.hub import write_hub_files

    if not args.dry_run.strip():
        raise UsageError("--dry-run is empty: give a folder DIR to write the upload's files into")
    folder = Path(args.dry_run).expanduser()
    refuse_file_as_folder(folder, "--dry-run folder")
    if folder.resolve() == store.root.resolve():
        raise ValueError(
            f"--dry-run {args.dry_run} is the store folder, where its public copy would replace the stored "
            "file: give another folder"
        )
    names = [f"{emb.name}.safetensors", "README.md", *(["preview.png"] if preview is not None else [])]
    taken = [name for name in names if os.path.lexists(folder / name)]
    if taken:  # the user's own README.md, or an earlier dry run's files: neither is replaced unasked
        raise FileExistsError(
            f"--dry-run {args.dry_run} already holds {', '.join(taken)}: give a new or empty folder, so that "
            "it holds exactly what the upload would"
        )
    folder.mkdir(parents=True, exist_ok=True)
    written = write_hub_files(
        emb, store.path(args.name), folder, args.repo, preview=preview, license_id=args.license_id
    )
    if args.json:  # as a push's report, with `url` null, and where the files are: `folder`, `paths`
        report = {"name": emb.name, "repo": args.repo, "url": None, "uploaded": False}
        local = {"folder": str(folder), "paths": [str(path) for path in written]}
        print_json(report | {"files": [path.name for path in written]} | local)
    else:
        for path in written:
            print(path)
    print(f"tokensmith push: dry run: nothing was uploaded to {args.repo}", file=sys.stderr)
    return 0
