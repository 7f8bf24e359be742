"""The end of a stored run: its `done` event, the upload when asked, and what every door says of the step it
kept. A run killed between its store write and its `done` event ends here too, with nothing trained or stored
again."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

from embeddings import Embedding, Store
from trainers.hub import UploadError, push_command, push_embedding
from trainers.processes import launch_rank
from trainers.runfolder import RunFolder
from trainers.session import claim_run_folder
from trainers.storing import summary


def record_done(cfg, folder: RunFolder, emb: Embedding, path: Path, preview, home) -> None:
    """Upload when asked, then the `done` event of a stored run (its facts from the file's metadata)."""
    info = summary(emb)
    kept = int(emb.meta.get("steps", 0))
    trained, reason, warning = int(info.get("trained_steps", kept)), info.get("end", ""), info.get("warning")
    how = "; ".join(filter(None, [reason.replace("_", " "), kept_note(kept, trained)]))
    message = f"stored {cfg.name} after {trained} steps ({how}) at {path}"
    if warning:
        message += f"; warning: {warning}"
    failed_upload, upload = None, {}
    if cfg.push_to_hub:  # a failed upload leaves the run done and its embedding stored: push that again
        try:
            with stop_ends_upload():
                url = push_embedding(
                    emb,
                    path,
                    cfg.push_to_hub,
                    private=cfg.hub_private,
                    preview=preview,
                    home=home,
                    license_id=cfg.hub_license or None,
                )
            message += f"; uploaded to {url}"
            upload = {"url": url}
        except (UploadError, UploadStopped) as exc:
            failed_upload = exc if isinstance(exc, UploadError) else stopped_upload(cfg, path, home)
            message += f"; not uploaded: {failed_upload}"
            upload = {"upload_error": str(failed_upload)}
    folder.event(
        "done",
        message,
        name=cfg.name,
        path=str(path),
        steps=trained,
        kept=kept,
        reason=reason,
        **({"warning": warning} if warning else {}),
        **upload,
    )
    if failed_upload:  # after the `done` event: the run's caller gets the stored result with the error
        failed_upload.embedding = emb
        raise failed_upload


class UploadStopped(BaseException):
    """SIGTERM or Ctrl-C during a finished run's upload. A BaseException, like KeyboardInterrupt, so that no
    `except Exception` in huggingface_hub swallows it."""


@contextlib.contextmanager
def stop_ends_upload():
    """SIGTERM and Ctrl-C end the upload at once (UploadStopped) while it runs: the run is done and its
    embedding stored, so there is no step to stop after, and waiting on a slow hub is what the user is
    stopping. The run's own handlers (trainers/session.py's StopFlag) are given back after."""

    def stop(signum, frame):
        raise UploadStopped

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        # not the main thread (e.g. a UI thread): ValueError, and the upload runs as it would without this
        with contextlib.suppress(ValueError):
            previous[signum] = signal.signal(signum, stop)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stopped_upload(cfg, path: Path, home) -> UploadError:
    """The error of a run whose upload was stopped: the embedding is stored, and the push that sends it."""
    push = push_command(
        cfg.name, cfg.push_to_hub, private=cfg.hub_private, license_id=cfg.hub_license or None, home=home
    )
    return UploadError(
        f"the upload to {cfg.push_to_hub} was stopped; the embedding is stored ({path}): push it later with "
        f"`{push}`"
    )


def end_stored(cfg, folder: RunFolder, store: Store, emb: Embedding, home: Path, echo) -> Embedding:
    """Finish a run that was killed after storing its result: its `done` event (and upload), nothing trained
    or stored again."""
    if launch_rank() != 0:  # the main process alone writes the run's files
        return emb
    folder = claim_run_folder(cfg, home, folder)  # refused while a live process holds the run
    try:
        if echo:
            echo(f"run folder: {folder.root}")
            echo(f"the run stored its result ({store.path(cfg.name)}) before it ended: recording it as done")
        preview = open_image(folder.preview_path(int(emb.meta.get("steps", 0))))
        if preview is not None and not same_pixels(stored_thumbnail(store, cfg.name), preview):
            # missing (the write failed, or a kill came before it) or another embedding's (one stored by
            # an older tokensmith, which replaced the embedding before its thumbnail)
            store.set_preview(cfg.name, preview)
        record_done(cfg, folder, emb, store.path(cfg.name), preview, home)
    finally:
        folder.release()
    return emb


def open_image(path: Path):
    """The PNG at `path` loaded into memory, or None when it is missing (previews were off)."""
    from PIL import Image

    if not path.is_file():
        return None
    with Image.open(path) as image:
        return image.copy()


def stored_thumbnail(store: Store, name: str):
    """The stored thumbnail of `name`, or None when it is missing or unreadable (written again then)."""
    try:
        return open_image(store.preview_path(name))
    except OSError:  # PIL's UnidentifiedImageError, a truncated file
        return None


def same_pixels(a, b) -> bool:
    """Whether two images (None: missing) have the same pixels (a thumbnail is a run preview saved again)."""
    if a is None or b is None:
        return False
    return (a.mode, a.size) == (b.mode, b.size) and a.tobytes() == b.tobytes()


def kept_note(kept: int, trained: int) -> str:
    """How every door tells which step was stored: '' when the last, else 'kept step 75 of 150, ...'."""
    return "" if kept == trained else f"kept step {kept} of {trained}, whose previews scored best"
