"""Sharing: `--push-to-hub` and `tokensmith push` upload a stored embedding, its model card and preview
through huggingface_hub.

The card and the public copy of the file are built offline (trainers/card.py); only `push_embedding` touches
the network, with a bounded wait per request, and its errors say the hub's own reason and what to do about it.
"""

from __future__ import annotations

import contextlib
import glob
import shlex
import tempfile
from pathlib import Path

from embeddings import Embedding
from embeddings.errors import TokensmithError
from trainers.card import model_card
from trainers.commands import home_flags
from trainers.config import check_repo_id
from trainers.licenses import LICENSES_PAGE, check_license
from trainers.network import network_error
from trainers.publiccopy import write_public_copy

# huggingface_hub's client waits for an answer forever; our requests give up after these (seconds), so a
# silent network ends the upload with advice instead of hanging a finished run (uploads are a few KB)
CONNECT_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 60.0


class UploadError(TokensmithError):
    """The upload to the hub failed; the embedding itself is stored (push it again with `tokensmith push`).

    `embedding` is the stored result when a training run's upload failed: train() raises this error after
    the run is done, and its caller still shows the run's result."""

    embedding: Embedding | None = None


# --- the upload ---


def push_command(
    name: str,
    repo_id: str,
    *,
    private: bool = False,
    license_id: str | None = None,
    force: bool = False,
    home=None,
) -> str:
    """The `tokensmith push` that repeats an upload: same repo, visibility, licence and store."""
    flags = [
        *(["--private"] if private else []),
        *(["--license", license_id] if license_id else []),
        *(["--force"] if force else []),
    ]
    return shlex.join(["tokensmith", "push", name, repo_id, *flags, *home_flags(home)])


def failure_reason(exc: BaseException) -> str:
    """The hub's own words for a failed request: 'HTTP 403: You don't have the rights to ...' (its
    server_message, else the error's last non-empty line: huggingface_hub puts its generic lines first)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    said = getattr(exc, "server_message", None) or (lines[-1] if lines else "")
    status = _status(exc)
    return f"HTTP {status}: {said}"[:300] if status else f"{type(exc).__name__}: {said}"[:300]


def _status(exc: BaseException) -> int | None:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def card_refused(exc: BaseException) -> bool:
    """Whether the hub refused the model card's metadata: huggingface_hub checks the README before it
    uploads and raises ValueError('Invalid metadata in README.md. ...') with the hub's reasons."""
    return isinstance(exc, ValueError) and "Invalid metadata" in str(exc)


def failure_advice(exc: BaseException, repo_id: str) -> str:
    """What to do about a failed upload, by its cause: the card (refused metadata), the request (another
    4xx), the login (401), write rights (403), the hub (5xx), the network; both login and network when the
    error does not tell."""
    status = _status(exc)
    login = "`hf auth login` (older huggingface_hub: `huggingface-cli login`)"
    if card_refused(exc):
        if "license" in str(exc).lower():
            return f"the hub refused the card's licence: pick one from {LICENSES_PAGE} (or `other`)"
        return "the hub refused the card's metadata (tokensmith writes it: please report this)"
    if status == 401:
        return f"the hub did not accept your login: log in with {login} or set HF_TOKEN to a valid token"
    if status == 403:
        namespace = repo_id.split("/")[0]
        return (
            f"your login may not write to {repo_id}: push to a repo under your own name or an organisation "
            f"where you have write rights, or log in (`hf auth login`) with a token that may write to "
            f"'{namespace}'"
        )
    if status in (400, 422):
        return "the hub refused the request: fix what it says"
    if status is not None and status >= 500:
        return "the hub had a server error: try again later"
    said = network_error(exc) or ""
    if "timeout" in said.split(":")[0].lower():  # httpx's ConnectTimeout, ReadTimeout, WriteTimeout
        return (
            "the hub did not answer in time: check the network (and HF_ENDPOINT or a proxy, if you set one), "
            "or try again later"
        )
    if said:
        return "the hub could not be reached: check the network (and HF_ENDPOINT or a proxy, if you set one)"
    return f"check the network, and log in with {login}"


@contextlib.contextmanager
def bounded_waits():
    """huggingface_hub's shared client with CONNECT_TIMEOUT_S / READ_TIMEOUT_S for the requests made inside,
    its own timeout given back after: other users of the client in this process keep theirs. (A client
    without a settable timeout, the requests-based huggingface_hub < 1.0, is left as it is.)"""
    from huggingface_hub.utils import get_session

    session = get_session()
    before = getattr(session, "timeout", None)
    if not hasattr(before, "read"):  # no httpx Timeout to replace
        yield
        return
    session.timeout = type(before)(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S)
    try:
        yield
    finally:
        session.timeout = before


def _check_private(info, repo_id: str, *, retry: str, public: str) -> None:
    """Refuse an upload asked to be private into a repo that already exists and is public: create_repo's
    `private` applies to a new repo only, and uploading would publish the file. `info`: the repo's
    repo_info; `retry` and `public`: the push commands with and without --private."""
    private = getattr(info, "private", None)
    if private is True:
        return
    state = "is public" if private is False else "does not say whether it is private"
    raise UploadError(
        f"{repo_id} already exists and {state}, and --private does not change an existing repo: nothing "
        f"was uploaded; make it private on the hub (its Settings page) and run `{retry}`, or run `{public}` "
        "to upload into the public repo"
    )


def other_embeddings(info, filename: str) -> list[str]:
    """The `.safetensors` files of a repo (its repo_info) other than `filename`: another embedding's, which
    the card about to be uploaded would not describe."""
    files = [getattr(sibling, "rfilename", "") for sibling in getattr(info, "siblings", None) or []]
    return sorted(f for f in files if f.endswith(".safetensors") and f != filename)


def _check_others(others: list[str], repo_id: str, *, force: bool, retry: str) -> list[str]:
    """The files to delete with the upload (`force`), or an UploadError when the repo holds `others`: one
    repo holds one embedding and the card that describes it."""
    if not others or force:
        return others
    them = "it" if len(others) == 1 else "them"
    raise UploadError(
        f"{repo_id} already holds another embedding ({', '.join(others)}), and its card would describe only "
        f"this one: nothing was uploaded; push into a repo of its own, or run `{retry}` to replace {them} "
        f"(deleted in the same commit; the repo's history keeps {them})"
    )


def write_hub_files(
    emb: Embedding, path: Path, folder: Path, repo_id: str, *, preview=None, license_id: str | None = None
) -> list[Path]:
    """Write into `folder` what an upload of `emb` (stored at `path`) to `repo_id` holds: NAME.safetensors
    (the public copy), preview.png when there is a preview, and the model card README.md; their paths.
    Offline: `push_embedding` uploads this folder, and `tokensmith push --dry-run DIR` stops here."""
    written = [folder / f"{emb.name}.safetensors"]
    write_public_copy(path, written[0])
    if preview is not None:
        written.append(folder / "preview.png")
        preview.save(written[-1])
    shown = "preview.png" if preview is not None else None
    card = model_card(emb, repo_id, preview=shown, license_id=license_id)
    written.append(folder / "README.md")
    written[-1].write_text(card, encoding="utf-8")
    return written


def push_embedding(
    emb: Embedding,
    path: Path,
    repo_id: str,
    *,
    private: bool = False,
    preview=None,
    api=None,
    home: Path | None = None,
    license_id: str | None = None,
    force: bool = False,
) -> str:
    """Create (or reuse) the hub model repo and upload the embedding file, its card and a preview; its URL.

    The uploaded file is the store's file at `path` without local paths (write_public_copy); the card is
    built from `emb`. `private` refuses an existing public repo. A repo that holds another embedding's
    `.safetensors` is refused, or with `force` those files are deleted in the upload's commit. `home` (the
    store's) is named in the retry command of a failed upload when it is not the default."""
    check_repo_id(repo_id, emb.name)
    if license_id:
        check_license(license_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi()
    retry = push_command(emb.name, repo_id, private=private, license_id=license_id, force=force, home=home)
    with tempfile.TemporaryDirectory() as tmp, bounded_waits():
        folder = Path(tmp)
        filename = write_hub_files(emb, path, folder, repo_id, preview=preview, license_id=license_id)[0].name
        try:
            url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            info = api.repo_info(repo_id, repo_type="model")
            if private:
                public = push_command(emb.name, repo_id, license_id=license_id, force=force, home=home)
                _check_private(info, repo_id, retry=retry, public=public)
            replace = push_command(
                emb.name, repo_id, private=private, license_id=license_id, force=True, home=home
            )
            stale = _check_others(other_embeddings(info, filename), repo_id, force=force, retry=replace)
            api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                commit_message=f"Add <{emb.name}>",
                delete_patterns=[glob.escape(name) for name in stale] or None,  # names, not patterns
            )
        except UploadError:
            raise
        except Exception as exc:  # httpx's network errors, the hub's HTTP and login errors share no base
            if card_refused(exc) and license_id:  # the same licence would be refused again
                retry = push_command(
                    emb.name, repo_id, private=private, license_id="ID", force=force, home=home
                )
            raise UploadError(
                f"upload to {repo_id} failed ({failure_reason(exc)}); {failure_advice(exc, repo_id)}, "
                f"then run `{retry}`"
            ) from None
    return str(url) if url else _default_url(repo_id)  # a RepoUrl: the hub's address, a mirror's too


def _default_url(repo_id: str) -> str:
    from huggingface_hub import constants

    return f"{constants.ENDPOINT.rstrip('/')}/{repo_id}"
