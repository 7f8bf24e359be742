"""Sharing, as a reviewer found it: other tools' metadata kept off the hub, a licence only for a known base
repo, each tool's own prompt syntax (and none for a demo-world file), repo ids and licences the hub would
refuse caught before anything runs, a silent hub and a stop during the upload, and a repo that holds another
embedding. huggingface_hub.HfApi is a fake, or a local server that never answers."""

import json
import os
import signal
import socket
import threading
import time
import typing
from types import SimpleNamespace

import pytest
import torch
from clirun import run
from huggingface_hub.errors import HfHubHTTPError
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Embedding, Store, import_path, load_canonical, save_canonical
from embeddings.errors import TokensmithError
from studio.cli import EXIT_ERROR, EXIT_OK
from trainers import train
from trainers.card import model_card
from trainers.config import ConfigError, TrainConfig, check_repo_id
from trainers.hub import UploadError, failure_advice, push_embedding
from trainers.licenses import check_license
from trainers.publiccopy import public_meta
from trainers.runfolder import RunFolder


class Api:
    """A fake HfApi: `files` are the repo's files when it exists; `on_create` runs in create_repo; every
    upload is recorded in Api.uploads (file name -> bytes, and the delete_patterns)."""

    uploads: typing.ClassVar[list] = []
    files: typing.ClassVar[list] = []
    on_create: typing.ClassVar[object] = None

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        if Api.on_create is not None:
            Api.on_create()
        return f"https://hub.example.org/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        siblings = [SimpleNamespace(rfilename=name) for name in Api.files]
        return SimpleNamespace(private=False, siblings=siblings)

    def upload_folder(self, *, repo_id, folder_path, commit_message, delete_patterns=None):
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        Api.uploads.append({**files, "deleted": delete_patterns})


@pytest.fixture
def api(monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(Api, "uploads", [])
    monkeypatch.setattr(Api, "files", [])
    monkeypatch.setattr(Api, "on_create", None)
    return Api


def _trained(vectors: dict, **meta) -> Embedding:
    """A file trained here (its trainer metadata), with `meta`."""
    trainer = {"version": "tokensmith-ti/1", "end": "finished", "config": {"seed": 3}}
    return Embedding("my-cat", vectors, {"trainer": json.dumps(trainer), "steps": "10", **meta})


SD1 = {"emb_params": torch.zeros(1, 768)}
SDXL = {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}


def _front(card: str) -> str:
    return card.split("---")[1]


# --- 1: other tools' metadata does not go public ---


def test_a_kohya_header_and_an_a1111_checkpoint_name_reach_the_hub_without_local_paths(
    tmp_path, api, capsys, tokensmith_home
):
    import safetensors.torch

    kohya = {
        "ss_output_dir": "/home/ann/secret/out",
        "ss_dataset_dirs": json.dumps({"/home/ann/photos/of/my/kid": {"n_repeats": 1}}),
        "ss_sd_model_name": "/home/ann/models/realvis.safetensors",
    }
    safetensors.torch.save_file(
        {"emb_params": torch.randn(2, 768)}, tmp_path / "kohya-thing.safetensors", metadata=kohya
    )
    pt = {"string_to_param": {"*": torch.randn(1, 768)}, "name": "pt-thing", "step": 5}
    torch.save(
        {**pt, "sd_checkpoint_name": "/home/ann/models/x.ckpt", "sd_checkpoint": "abc"}, tmp_path / "p.pt"
    )
    store = Store.for_home(tokensmith_home)
    for path in ("kohya-thing.safetensors", "p.pt"):
        (emb,) = import_path(tmp_path / path)
        store.put(emb)
    for name in ("kohya-thing", "p"):
        assert run(capsys, "push", name, f"me/{name}")[0] == EXIT_OK
    for upload, name in zip(api.uploads, ("kohya-thing", "p"), strict=True):
        assert b"/home/ann" not in upload[f"{name}.safetensors"] and b"/home/ann" not in upload["README.md"]
        (tmp_path / "up").mkdir(exist_ok=True)
        (tmp_path / "up" / f"{name}.safetensors").write_bytes(upload[f"{name}.safetensors"])
        public = load_canonical(tmp_path / "up" / f"{name}.safetensors")
        assert not any(key.startswith(("ss_", "modelspec.")) for key in public.meta)
        assert public.meta["sha256"] == store.get(name).sha256  # the same tensors
    assert store.get("kohya-thing").meta["ss_output_dir"] == "/home/ann/secret/out"  # the store keeps it
    public = load_canonical(tmp_path / "up" / "p.safetensors")
    assert public.meta["base_model"] == "x.ckpt [abc]"
    # the A1111 keys tokensmith's own importer wrote go up with their paths cut: a re-import of the pushed
    # copy exports the same A1111 checkpoint name and hash
    assert public.meta["a1111.sd_checkpoint_name"] == "x.ckpt" and public.meta["a1111.sd_checkpoint"] == "abc"


def test_public_meta_cuts_local_paths_inside_json_keys_and_values():
    parent = json.dumps({"operands": [{"name": "a", "source": "/home/ann/a.pt"}], "/home/ann/k": 1})
    meta = {"parent": parent, "init": "cat", "ss_x": "1", "source_file": "C:\\Users\\ann\\x.pt"}
    assert public_meta(meta) == {
        "parent": json.dumps({"operands": [{"name": "a", "source": "a.pt"}], "k": 1}),
        "init": "cat",
        "source_file": "x.pt",
    }


# --- 2: a licence only for a known base repo ---


def test_the_card_states_a_licence_only_for_a_base_repo_whose_terms_are_known(api, capsys, tokensmith_home):
    turbo = _trained(SDXL, family="sdxl", base_model="stabilityai/sdxl-turbo")
    assert "license:" not in _front(model_card(turbo, "me/x"))  # Stability's non-commercial terms
    base = _trained(SDXL, family="sdxl", base_model="stabilityai/stable-diffusion-xl-base-1.0")
    assert "license: openrail++" in _front(model_card(base, "me/x"))
    local = _trained(SD1, family="sd1", base_model="/home/ann/models/my-finetune")
    assert "license:" not in _front(model_card(local, "me/x"))
    Store.for_home(tokensmith_home).put(turbo)
    code, _, err = run(capsys, "push", "my-cat", "me/my-cat")
    assert code == EXIT_OK
    assert "the card states no licence: tokensmith knows the terms of SD 1.x/2.x/SDXL's own base repos" in err
    assert "`stabilityai/sdxl-turbo` is not one of them; pass --license ID" in err
    assert "imported, blended or demo-world" not in err


# --- 3: each tool's own syntax; no SD tools for a demo-world or unknown-family file ---


def test_the_card_gives_each_tools_prompt_syntax_and_a_runnable_diffusers_snippet():
    card = model_card(_trained(SD1, family="sd1", base_model="runwayml/stable-diffusion-v1-5"), "me/my-cat")
    assert "- textual_inversion\n- stable-diffusion\n" in _front(card)
    assert "- AUTOMATIC1111 / Forge: `my-cat`\n- ComfyUI: `embedding:my-cat`\n- InvokeAI: `<my-cat>`" in card
    assert 'pipe = DiffusionPipeline.from_pretrained("runwayml/stable-diffusion-v1-5")' in card
    assert (
        "A1111 / ComfyUI / InvokeAI: put the file in your `embeddings` folder and write its name" not in card
    )


def test_a_demo_world_or_unknown_family_card_claims_no_stable_diffusion_tool():
    demo = model_card(Embedding("orange", {"emb_params": torch.zeros(1, 64)}, {"family": "demo"}), "me/o")
    assert "stable-diffusion" not in _front(demo) and "ComfyUI" not in demo and "A1111" not in demo
    assert "it loads only there (`--model demo`)" in demo
    w32 = model_card(_trained({"emb_params": torch.zeros(1, 32)}, base_model="/tmp/tiny"), "me/w")
    assert "stable-diffusion" not in _front(w32) and "ComfyUI" not in w32
    assert "it loads only into the model it was trained on" in w32


# --- 4: repo ids the hub refuses, before anything runs ---


@pytest.mark.parametrize("repo", ["me/x--y", "me/a@b", "me/-x", "me/..x", "me/" + "a" * 97])
def test_a_repo_id_the_hub_refuses_is_refused_before_training(repo, api, capsys, tokensmith_home):
    with pytest.raises(ConfigError, match="is not one the hub accepts"):
        check_repo_id(repo, "cat")
    with pytest.raises(ConfigError, match="is not one the hub accepts"):
        TrainConfig(images="imgs", name="cat", push_to_hub=repo)
    Store.for_home(tokensmith_home).put(Embedding("cat", {"emb_params": torch.ones(1, 768)}))
    code, _, err = run(capsys, "push", "cat", repo)
    assert code == EXIT_ERROR and "is not one the hub accepts" in err
    assert "check the network" not in err and "note:" not in err and api.uploads == []


# --- 5: licences the hub refuses, and its refusal of the card ---


def test_a_licence_the_hub_does_not_list_is_refused_before_training(capsys):
    assert check_license("cc-by-nc-sa-4.0") == "cc-by-nc-sa-4.0"
    with pytest.raises(TokensmithError, match=r"'gpl-2\.0-or-later' is not one the hub accepts"):
        TrainConfig(images="imgs", name="cat", push_to_hub="me/cat", hub_license="gpl-2.0-or-later")
    code, _, err = run(capsys, "push", "cat", "me/cat", "--license", "MIT")
    assert code == EXIT_ERROR and "(did you mean mit?)" in err


def test_a_refused_card_says_so_not_network_or_login(tmp_path, api, monkeypatch):
    refused = ValueError(
        'Invalid metadata in README.md.\n- "license" must be one of [apache-2.0, mit, other]'
    )

    def create(*args):
        raise refused

    monkeypatch.setattr(Api, "on_create", create)
    emb = Embedding("cat", {"emb_params": torch.ones(1, 768)}, {"family": "sd1"})
    path = save_canonical(emb, tmp_path / "cat.safetensors")
    with pytest.raises(UploadError) as info:
        push_embedding(emb, path, "me/cat", license_id="mit")
    said = str(info.value)
    assert 'failed (ValueError: - "license" must be one of [apache-2.0, mit, other]); the hub refused' in said
    assert "pick one from https://huggingface.co/docs/hub/repositories-licenses" in said
    assert said.endswith("then run `tokensmith push cat me/cat --license ID`")
    assert "check the network" not in said and "log in" not in said
    response = SimpleNamespace(status_code=422, headers={}, request=None)
    bad = HfHubHTTPError("422", response=response, server_message="name is invalid")
    assert failure_advice(bad, "me/cat") == "the hub refused the request: fix what it says"


# --- 6: a hub that never answers, and a stop during the upload ---


@pytest.fixture
def silent_hub(monkeypatch):
    """The address of a local server that takes connections and never answers."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    thread = threading.Thread(target=lambda: held.append(server.accept()), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for connection, _ in held:
        connection.close()


def test_a_hub_that_never_answers_ends_the_upload_with_advice(tmp_path, silent_hub, monkeypatch):
    from huggingface_hub import HfApi
    from huggingface_hub.utils import get_session

    import trainers.hub

    monkeypatch.setattr(trainers.hub, "READ_TIMEOUT_S", 0.5)
    monkeypatch.setattr(trainers.hub, "CONNECT_TIMEOUT_S", 0.5)
    before = get_session().timeout
    emb = Embedding("cat", {"emb_params": torch.ones(1, 768)}, {"family": "sd1"})
    path = save_canonical(emb, tmp_path / "cat.safetensors")
    started = time.monotonic()
    with pytest.raises(UploadError) as info:
        push_embedding(emb, path, "me/cat", api=HfApi(endpoint=silent_hub, token="x"))
    assert time.monotonic() - started < 10
    said = str(info.value)
    assert "ReadTimeout" in said and "the hub did not answer in time: check the network" in said
    assert said.endswith("then run `tokensmith push cat me/cat`")
    assert get_session().timeout == before  # the shared client is given back as it was


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_during_a_finished_runs_upload_ends_it_and_says_how_to_push_later(tmp_path, api, signum):
    def stopped_while_waiting():
        os.kill(os.getpid(), signum)
        time.sleep(30)  # a hub that does not answer: the stop ends the wait

    api.on_create = stopped_while_waiting
    home = tmp_path / "home"
    cfg = quick_config(square_images(tmp_path / "images"), tmp_path / "run", push_to_hub="me/thing")
    started = time.monotonic()
    with pytest.raises(UploadError) as info:
        train(cfg, home=home, model=tiny_model("sd1"))
    assert time.monotonic() - started < 25
    said = str(info.value)
    assert said.startswith("the upload to me/thing was stopped; the embedding is stored (")
    assert said.endswith(f"push it later with `tokensmith push thing me/thing --home {home}`")
    assert info.value.embedding is not None and Store.for_home(home).exists("thing")
    done = RunFolder(tmp_path / "run").read_progress()[-1]
    assert done["event"] == "done" and "not uploaded: the upload to me/thing was stopped" in done["message"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the run's handlers are gone


# --- 8: a repo that holds another embedding ---


def test_a_repo_holding_another_embedding_is_refused_unless_forced(api, capsys, tokensmith_home):
    Store.for_home(tokensmith_home).put(Embedding("cat", {"emb_params": torch.ones(1, 768)}))
    api.files = ["README.md", "old-cat.safetensors", "preview.png", "cat.safetensors"]
    code, _, err = run(capsys, "push", "cat", "me/cats")
    assert code == EXIT_ERROR and api.uploads == []
    assert "me/cats already holds another embedding (old-cat.safetensors)" in err
    assert "run `tokensmith push cat me/cats --force" in err and "` to replace it (deleted in the same" in err
    code, _, _ = run(capsys, "push", "cat", "me/cats", "--force")
    assert code == EXIT_OK and api.uploads[0]["deleted"] == ["old-cat.safetensors"]
    api.files = ["README.md", "cat.safetensors"]  # a re-push of the same embedding deletes nothing
    assert run(capsys, "push", "cat", "me/cats")[0] == EXIT_OK and api.uploads[1]["deleted"] is None


def test_force_deletes_another_embedding_by_its_name_even_with_pattern_characters(
    api, capsys, tokensmith_home
):
    """The hub reads delete_patterns as fnmatch patterns: 'cat [v1].safetensors' must match itself."""
    import fnmatch

    Store.for_home(tokensmith_home).put(Embedding("cat", {"emb_params": torch.ones(1, 768)}))
    api.files = ["README.md", "cat [v1].safetensors", "cat.safetensors"]
    assert run(capsys, "push", "cat", "me/cats", "--force")[0] == EXIT_OK
    (pattern,) = api.uploads[0]["deleted"]
    assert fnmatch.fnmatch("cat [v1].safetensors", pattern) and not fnmatch.fnmatch(
        "cat v.safetensors", pattern
    )


# --- polish: flag wording ---


def test_hub_flags_without_push_to_hub_are_refused_in_flag_words(tmp_path, capsys):
    code, _, err = run(capsys, "train", "--images", tmp_path, "--name", "x", "--hub-private")
    assert code != 0 and "--hub-private / hub_private is for an upload: add --push-to-hub USER/REPO" in err
