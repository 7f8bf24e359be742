"""A failed or refused upload: the retry keeps where and how it uploads, an existing public repo is not
filled when --private was asked, the hub's own reason and advice by cause, the run's result still shown
after training, and a broken optional preview left out. huggingface_hub.HfApi is a fake throughout."""

import json
import typing
from types import SimpleNamespace

import pytest
import torch
from clirun import run
from huggingface_hub.errors import HfHubHTTPError
from PIL import Image
from tinyrun import square_images

from embeddings import Embedding, Store, save_canonical
from studio.cli import EXIT_ERROR, EXIT_OK
from trainers.hub import UploadError, push_embedding


class Api:
    """A fake HfApi: `fail` (an exception) is raised by create_repo; `existing` is the visibility of a repo
    that already exists; every upload is recorded in Api.uploads (file name -> bytes)."""

    uploads: typing.ClassVar[list] = []
    fail: typing.ClassVar[Exception | None] = None
    existing: typing.ClassVar[str | None] = None

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        if Api.fail is not None:
            raise Api.fail
        return f"https://hub.example.org/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        return SimpleNamespace(private=Api.existing != "public")

    def upload_folder(self, *, repo_id, folder_path, commit_message, delete_patterns=None):
        from pathlib import Path

        Api.uploads.append({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})


@pytest.fixture
def api(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(Api, "uploads", [])
    monkeypatch.setattr(Api, "fail", None)
    monkeypatch.setattr(Api, "existing", None)
    return Api


def http_error(status: int, server_message: str | None, text: str) -> HfHubHTTPError:
    """The error huggingface_hub raises for an HTTP status (its message first says little: 'None.')."""
    response = SimpleNamespace(status_code=status, headers={}, request=None)
    return HfHubHTTPError(text, response=response, server_message=server_message)


class ConnectError(Exception):
    """Like httpx's ConnectError: not an OSError."""


def _stored(tmp_path) -> tuple[Embedding, object]:
    emb = Embedding("my-cat", {"emb_params": torch.ones(1, 768)}, {"family": "sd1"})
    return emb, save_canonical(emb, tmp_path / "my-cat.safetensors")


# --- finding: the retry keeps --private; an existing public repo is refused ---


def test_a_failed_private_push_says_to_push_again_as_private(tmp_path, api):
    emb, path = _stored(tmp_path)
    api.fail = ConnectError("[Errno 111] Connection refused")
    with pytest.raises(UploadError) as info:
        push_embedding(emb, path, "me/my-cat", private=True, license_id="mit", home=tmp_path / "home")
    retry = f"tokensmith push my-cat me/my-cat --private --license mit --home {tmp_path / 'home'}"
    assert str(info.value).endswith(f"then run `{retry}`")


def test_a_private_push_into_an_existing_public_repo_uploads_nothing_and_says_how_to_go_on(tmp_path, api):
    emb, path = _stored(tmp_path)
    api.existing = "public"
    with pytest.raises(UploadError) as info:
        push_embedding(emb, path, "me/my-cat", private=True)
    said = str(info.value)
    assert said.startswith("me/my-cat already exists and is public, and --private does not change")
    assert "`tokensmith push my-cat me/my-cat --private`" in said  # after making it private
    assert "or run `tokensmith push my-cat me/my-cat` to upload into the public repo" in said
    assert api.uploads == []
    api.existing = "private"
    assert push_embedding(emb, path, "me/my-cat", private=True) == "https://hub.example.org/me/my-cat"
    assert len(api.uploads) == 1


# --- finding: the hub's own reason, and advice by cause ---

CREATE_403 = (
    "403 Forbidden: None.\nCannot access content at: https://huggingface.co/api/repos/create.\n"
    "Make sure your token has the correct permissions.\n"
    'You don\'t have the rights to create a model under the namespace "other"'
)


@pytest.mark.parametrize(
    ("error", "reason", "advice"),
    [
        (
            http_error(
                403, 'You don\'t have the rights to create a model under the namespace "other"', CREATE_403
            ),
            'HTTP 403: You don\'t have the rights to create a model under the namespace "other"',
            "your login may not write to other/my-cat: push to a repo under your own name or an organisation",
        ),
        (
            http_error(
                401, None, "Client error '401 Unauthorized'\n\nInvalid credentials in Authorization header"
            ),
            "HTTP 401: Invalid credentials in Authorization header",
            "the hub did not accept your login: log in with `hf auth login`",
        ),
        (
            http_error(500, "Internal Error", "Server error '500 Internal Server Error'\n\nInternal Error"),
            "HTTP 500: Internal Error",
            "the hub had a server error: try again later",
        ),
        (
            ConnectError("[Errno 111] Connection refused"),
            "ConnectError: [Errno 111] Connection refused",
            "the hub could not be reached: check the network",
        ),
        (
            ConnectionError("Failed to establish a new connection"),
            "ConnectionError: Failed to establish a new connection",
            "the hub could not be reached: check the network",
        ),
    ],
)
def test_a_failed_upload_gives_the_hubs_reason_and_advice_for_its_cause(tmp_path, api, error, reason, advice):
    emb, path = _stored(tmp_path)
    api.fail = error
    with pytest.raises(UploadError) as info:
        push_embedding(emb, path, "other/my-cat")
    said = str(info.value)
    assert said.startswith(f"upload to other/my-cat failed ({reason}); {advice}")
    assert said.endswith("then run `tokensmith push my-cat other/my-cat`")
    assert ("check the network" in said) == ("could not be reached" in advice)


# --- finding: a failed push after training still shows the run's result ---


def _train(tmp_path, tiny_model_dir, *flags):
    images = square_images(tmp_path / "images")
    return ["train", "--images", images, "--name", "thing", "--model", tiny_model_dir, "--steps", "2",
            "--batch-size", "2", "--preview-images", "1", "--preview-steps", "2", "--init", "a",
            "--push-to-hub", "me/thing", *flags]  # fmt: skip


def test_a_failed_push_after_training_prints_the_result_and_the_error_then_exits_1(
    tmp_path, tiny_model_dir, api, capsys, tokensmith_home
):
    api.fail = http_error(403, "Forbidden: you must be a member of me to write", CREATE_403)
    code, out, err = run(capsys, *_train(tmp_path, tiny_model_dir, "--json"))
    assert code == EXIT_ERROR
    result = json.loads(out)  # the whole result, with the upload's outcome
    assert result["name"] == "thing" and result["steps"] == 2 and result["end"] == "finished"
    assert result["run_dir"] == str(tokensmith_home / "runs" / "thing")
    assert result["uploaded"] is False and "url" not in result
    assert result["upload_error"].startswith("upload to me/thing failed (HTTP 403: Forbidden: you must be")
    assert err.rstrip().splitlines()[-1] == f"tokensmith train: error: {result['upload_error']}"
    assert Store.for_home(tokensmith_home).exists("thing")


def test_a_push_after_training_prints_the_url_and_the_json_has_it(
    tmp_path, tiny_model_dir, api, capsys, tokensmith_home
):
    code, out, _ = run(capsys, *_train(tmp_path, tiny_model_dir))
    assert code == EXIT_OK
    assert out.splitlines()[0].startswith("learned <thing> (finished)")
    assert out.splitlines()[1] == "uploaded to https://hub.example.org/me/thing"
    assert sorted(api.uploads[0]) == ["README.md", "preview.png", "thing.safetensors"]
    # the run's record has it too: the studio and `tokensmith runs` read it there
    done = json.loads((tokensmith_home / "runs" / "thing" / "progress.jsonl").read_text().splitlines()[-1])
    assert done["url"] == "https://hub.example.org/me/thing"


def test_a_push_after_training_under_json_has_the_url(monkeypatch, tmp_path, api, capsys):
    import studio.cli_train
    import trainers.trainer
    from studio.cli import build_parser
    from trainers.runfolder import RunFolder

    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    folder.event("done", "stored cat", name="cat", url="https://hub.example.org/me/cat")

    def fake_train(cfg, *, home, on_progress, echo):
        trainer = {"end": "finished", "trained_steps": 3, "config": {"run_dir": str(folder.root)}}
        return Embedding(cfg.name, {"emb_params": torch.zeros(1, 8)}, {"trainer": json.dumps(trainer)})

    monkeypatch.setattr(trainers.trainer, "train", fake_train)
    argv = ["train", "--images", "x", "--name", "cat", "--push-to-hub", "me/cat", "--json"]
    assert studio.cli_train.run_train(build_parser().parse_args(argv)) == EXIT_OK
    result = json.loads(capsys.readouterr().out)
    assert (result["uploaded"], result["url"]) == (True, "https://hub.example.org/me/cat")


# --- finding: a broken optional preview is left out with a warning ---


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_push_leaves_out_a_broken_preview_with_a_warning(api, capsys, tokensmith_home, damage):
    store = Store.for_home(tokensmith_home)
    store.put(Embedding("cat", {"emb_params": torch.ones(1, 768)}, {"family": "sd1"}), preview=None)
    preview = store.preview_path("cat")
    Image.new("RGB", (64, 64), (200, 30, 30)).save(preview)
    data = preview.read_bytes()
    preview.write_bytes(b"garbage\n" if damage == "garbage" else data[: len(data) // 2])
    code, out, err = run(capsys, "push", "cat", "me/cat")
    assert (code, out.strip()) == (EXIT_OK, "https://hub.example.org/me/cat")
    assert f"tokensmith push: warning: the preview {preview} cannot be read (" in err
    assert "uploading without it" in err
    assert sorted(api.uploads[0]) == ["README.md", "cat.safetensors"]
    assert b"![samples]" not in api.uploads[0]["README.md"]


def test_push_license_is_stated_on_the_card_and_a_bad_one_is_refused(api, capsys, tokensmith_home):
    Store.for_home(tokensmith_home).put(
        Embedding("neg", {"emb_params": torch.ones(2, 768)}, {"family": "sd1"})
    )
    code, _, err = run(capsys, "push", "neg", "me/neg")
    assert code == EXIT_OK and "the card states no licence" in err and "--license ID" in err
    assert b"license:" not in api.uploads[0]["README.md"]
    code, _, err = run(capsys, "push", "neg", "me/neg", "--license", "cc-by-4.0")
    assert code == EXIT_OK and "no licence" not in err
    assert b"\nlicense: cc-by-4.0\n" in api.uploads[1]["README.md"]
    code, _, err = run(capsys, "push", "neg", "me/neg", "--license", "My License")
    assert code == EXIT_ERROR and "give a hub licence id such as apache-2.0" in err and len(api.uploads) == 2


def test_train_hub_license_reaches_the_card_and_the_retry(tmp_path, tiny_model_dir, api, capsys):
    licence = ("--hub-license", "cc-by-4.0")
    code, _, _ = run(capsys, *_train(tmp_path, tiny_model_dir, *licence))
    assert code == EXIT_OK
    assert "license: cc-by-4.0" in api.uploads[0]["README.md"].decode()
    Api.fail = ConnectError("[Errno 111] Connection refused")
    code, _, err = run(capsys, *_train(tmp_path, tiny_model_dir, *licence, "--name", "two"))
    assert code == 1 and "`tokensmith push two me/thing --license cc-by-4.0" in err
    code, _, err = run(capsys, "train", "--images", tmp_path / "images", "--name", "x", licence[0], "mit")
    refused = "--hub-license mit / hub_license = 'mit' is for an upload: add --push-to-hub USER/REPO"
    assert code != 0 and refused in err
    code, _, err = run(capsys, *_train(tmp_path, tiny_model_dir, "--hub-license", "Not A Licence"))
    assert code != 0 and "give a hub licence id such as apache-2.0" in err


def test_python_m_trainers_says_the_result_then_the_failed_upload(tmp_path, tiny_model_dir, api, capsys):
    from trainers.__main__ import main as trainers_main

    config = tmp_path / "run.toml"
    config.write_text(
        f'images = "{square_images(tmp_path / "images")}"\nname = "launched"\nmodel = "{tiny_model_dir}"\n'
        f'steps = 2\nbatch_size = 2\npreview_images = 0\ninit = "a"\npush_to_hub = "me/launched"\n'
    )
    Api.fail = ConnectError("[Errno 111] Connection refused")
    assert trainers_main(["--config", str(config), "--home", str(tmp_path / "home")]) == 1
    lines = capsys.readouterr().err.rstrip().splitlines()
    assert lines[-2] == "learned <launched> (finished); use it in a prompt as <launched>"  # as train says it
    assert lines[-1].startswith("python -m trainers: error: upload to me/launched failed (ConnectError")
