"""How a run meets the store: what the store write at the end would refuse is refused before the run
begins; a name stored meanwhile (by another run or an import) is told in train's words; a run killed after
its store write is recognised by its stored result."""

from __future__ import annotations

import json
import os
import shlex
import tempfile
from pathlib import Path

from embeddings import Embedding, Store, load_canonical
from embeddings.errors import StoreError, TokensmithError
from embeddings.files import PREVIEW_SUFFIX
from embeddings.storewrites import StoreWriteError
from trainers.commands import home_flags, resume_command
from trainers.config import TrainConfig
from trainers.resume import ENDING, config_changes
from trainers.runfolder import RunFolder
from trainers.writes import DiskFull, disk_full, writing


def check_storable(cfg: TrainConfig, store: Store) -> None:
    """Refuse a name that differs from a stored one only in letter case (the store refuses to hold both) and a
    store folder that is a file or cannot be written: the store write comes only after the whole run."""
    _check_writable(store.root)
    twin = store.case_twin(cfg.name)
    if twin is not None:
        same = f"'{twin}' is already stored and differs from '{cfg.name}' only in letter case (prompts read "
        same += f"<{cfg.name}> case-insensitively: they would be the same token)"
        if cfg.resume:  # the name is part of the run's config
            raise TokensmithError(
                f"{same}; this run's name is part of its config: to resume it, move the stored one aside "
                f"first (`tokensmith rename {twin} NEW` or `tokensmith rm {twin}`), or start a new run with "
                "another --name"
            )
        raise TokensmithError(
            f"{same}; start the run with another --name, or with --name {twin} --overwrite to replace it"
        )


def _check_writable(root: Path) -> None:
    """TokensmithError when the store folder `root` is a file or cannot be written (or created)."""
    for folder in (root, *root.parents):
        if folder.is_symlink() and not folder.exists():
            raise TokensmithError(
                f"{folder} is a link to {os.readlink(folder)}, which does not exist (a disk that is not "
                "mounted?), where the store keeps trained embeddings; mount or fix it, or pass another --home"
            )
    there = next(p for p in (root, *root.parents) if p.exists())  # the store folder, or where it will be
    where = "" if there == root else f" (the store folder {root} would be made in it)"
    if not there.is_dir():
        raise TokensmithError(
            f"{there} is a file, where the store keeps trained embeddings in a folder{where}; move the file "
            "away, or pass another --home"
        )
    try:
        with tempfile.TemporaryFile(dir=there):  # permissions, a read-only filesystem: what a write meets
            pass
    except OSError as exc:
        raise TokensmithError(
            f"cannot write in {there} ({exc.strerror}), where the trained embedding is to be stored{where}; "
            "make it writable, or pass another --home"
        ) from None


# --- the store write ---


def store_result(cfg, folder: RunFolder, store: Store, emb: Embedding, preview, home) -> Path:
    """store.put in train's words: when the name (or a case twin) was stored while this run trained (by
    another run, an import, the studio), how to store this run's result, which is kept in the run folder."""
    try:
        with writing(f"the stored file of '{cfg.name}'", store.path(cfg.name)):
            return _put(cfg, store, emb, preview)
    except StoreError:
        twin = store.case_twin(cfg.name)
        if twin is None and not store.exists(cfg.name):  # not a name taken meanwhile: its own words
            raise
        final = folder.final_path
        resume = resume_command(folder.root, home)
        elsewhere = shlex.join(["tokensmith", "import", str(final), "--name", "NEW", *home_flags(home)])
        if twin is None:
            raise TokensmithError(
                f"an embedding named '{cfg.name}' was stored meanwhile (by another run or an import); this "
                f"run's result is kept in {final}: to store it in place of that one, run `{resume} "
                f"--overwrite`, or import it under another name (`{elsewhere}`)"
            ) from None
        raise TokensmithError(
            f"'{twin}' was stored while this run trained and differs from '{cfg.name}' only in letter case "
            f"(prompts read <{cfg.name}> case-insensitively: they would be the same token); this run's "
            f"result is kept in {final}: import it under another name (`{elsewhere}`), or move '{twin}' "
            f"aside (`tokensmith rename {twin} NEW`) and run `{resume}`"
        ) from None


def _put(cfg, store: Store, emb: Embedding, preview) -> Path:
    """store.put, its full-disk error naming the file that failed (the embedding or its thumbnail) with the
    system's words alone: the advice is the trainer's (the resume line), said once."""
    try:
        return store.put(emb, overwrite=cfg.overwrite, preview=preview)
    except StoreWriteError as exc:
        if not disk_full(exc):
            raise
        thumbnail = exc.target.name.endswith(PREVIEW_SUFFIX)
        what = f"the {'thumbnail' if thumbnail else 'stored file'} of '{cfg.name}'"
        raise DiskFull(what, exc.target) from OSError(exc.errno, exc.reason)


def stored_result(cfg: TrainConfig, folder: RunFolder, store: Store) -> Embedding | None:
    """The stored embedding when it is this run's result: the vectors of its `snapshots/final.safetensors`,
    stored by this run (the file's trainer metadata names the run folder) with the config it resumes with."""
    if not (store.exists(cfg.name) and folder.final_path.is_file()):
        return None
    try:
        stored, final = store.get(cfg.name), load_canonical(folder.final_path)
    except (TokensmithError, OSError):  # not this run's result then: the usual checks say what to do
        return None
    made = summary(stored).get("config", {})
    if stored.sha256 != final.sha256 or not made.get("run_dir"):
        return None
    if Path(made["run_dir"]).resolve() != folder.root.resolve():
        return None
    # a finished run resumed to train further, killed before its new result: its config asks for more
    same_ending = all(made.get(key) == getattr(cfg, key) for key in (*ENDING, "keep"))
    return stored if same_ending and not config_changes(made, cfg) else None


def summary(emb: Embedding) -> dict:
    """The trainer's provenance of an embedding as a dict (decoded from its metadata); {} when it has none or
    it is not a JSON object (another tool's key of the same name)."""
    try:
        value = json.loads(emb.meta.get("trainer") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
