"""--push-to-hub: the model card is built offline from the embedding's metadata; the upload is a fake here."""

import json
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

from embeddings import Embedding, save_canonical
from embeddings.errors import TokensmithError
from trainers.card import model_card
from trainers.hub import push_embedding


def _emb(vectors):
    trainer = {
        "version": "tokensmith-ti/1",
        "end": "early_stopped",
        "config": {"learning_rate": 0.02, "seed": 3},
    }
    metrics = {"best_val_loss": 0.12345, "best_val_step": 90, "after": {"metric": 12.5}}
    meta = {
        "family": "sdxl" if "clip_l" in vectors else "sd1",
        "base_model": "stabilityai/sdxl-turbo",
        "init": "cat",
        "steps": "120",
        "trainer": json.dumps(trainer),
        "metrics": json.dumps(metrics),
    }
    return Embedding("my-cat", vectors, meta)


def test_card_for_sdxl_explains_both_encoders_and_the_training():
    card = model_card(_emb({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}), "me/my-cat")
    assert card.startswith("---\nlibrary_name: diffusers\n")
    assert "base_model: stabilityai/sdxl-turbo" in card and "- textual_inversion" in card
    assert 'state["clip_g"], token="<my-cat>", text_encoder=pipe.text_encoder_2' in card
    assert "`clip_l` (2, 768), `clip_g` (2, 1280)" in card
    assert (
        "- steps: 120 (ended: early_stopped)" in card and "best validation loss: 0.12345 at step 90" in card
    )


def test_card_for_sd1_uses_load_textual_inversion():
    card = model_card(_emb({"emb_params": torch.zeros(1, 768)}), "me/my-cat")
    assert (
        'pipe.load_textual_inversion("me/my-cat", weight_name="my-cat.safetensors", token="<my-cat>")' in card
    )


class FakeApi:
    """Records the calls; `existing` is the visibility of a repo that already exists ("public", "private")."""

    def __init__(self, existing=None):
        self.calls, self.existing = [], existing

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return f"https://hub.example.org/{repo_id}"  # a RepoUrl is a str: a mirror's address here

    def repo_info(self, repo_id, **kwargs):
        self.calls.append(("repo_info", repo_id))
        return SimpleNamespace(private=self.existing != "public")

    def upload_folder(self, *, repo_id, folder_path, commit_message, delete_patterns=None):
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, sorted(files), commit_message))
        self.files, self.deleted = files, delete_patterns


def test_push_uploads_the_file_card_and_preview(tmp_path):
    emb = _emb({"emb_params": torch.ones(1, 768)})
    path = save_canonical(emb, tmp_path / "my-cat.safetensors")
    api = FakeApi()
    url = push_embedding(emb, path, "me/my-cat", private=True, preview=Image.new("RGB", (8, 8)), api=api)
    assert url == "https://hub.example.org/me/my-cat"  # what create_repo answered, not a guess
    assert api.calls[0] == (
        "create_repo",
        "me/my-cat",
        {"repo_type": "model", "private": True, "exist_ok": True},
    )
    assert api.calls[1] == ("repo_info", "me/my-cat")  # --private: the repo is checked before the upload
    assert api.calls[2][2] == ["README.md", "my-cat.safetensors", "preview.png"]
    assert api.files["my-cat.safetensors"] == path.read_bytes()
    assert b"![samples](preview.png)" in api.files["README.md"]


def test_push_rejects_a_bad_repo_id(tmp_path):
    emb = _emb({"emb_params": torch.ones(1, 768)})
    with pytest.raises(TokensmithError, match="your-name/my-cat"):
        push_embedding(emb, tmp_path / "x", "no-slash", api=FakeApi())


def test_card_says_when_an_earlier_snapshot_was_kept():
    emb = _emb({"emb_params": torch.zeros(1, 768)})
    trainer = {**json.loads(emb.meta["trainer"]), "kept": "best", "trained_steps": 150}
    card = model_card(Embedding("my-cat", emb.vectors, {**emb.meta, "trainer": json.dumps(trainer)}), "me/x")
    assert "- steps: 120, the best-scored snapshot of a run of 150 (ended: early_stopped)" in card


def test_card_of_an_a1111_import_says_where_it_came_from_and_claims_no_training(tmp_path):
    from embeddings import import_path
    from embeddings.exporting import export

    made = Embedding(
        "neg", {"emb_params": torch.randn(2, 768)}, {"steps": "1419", "base_model": "v1-5-pruned"}
    )
    export(made, "a1111-pt", tmp_path / "bad-hands.pt")
    (imported,) = import_path(tmp_path / "bad-hands.pt")
    card = model_card(imported, "me/bad-hands")
    front = card.split("---")[1]
    assert "base_model" not in front  # an A1111 checkpoint label is no hub id; no default is guessed
    assert "- tokensmith" not in front
    assert "## Provenance" in card and "## Training" not in card
    assert "- imported from: AUTOMATIC1111 .pt (string_to_param) `bad-hands.pt`" in card
    assert "- base model (as the file records it): `v1-5-pruned`" in card
    assert "- steps (as the file records it): `1419`" in card
    assert "Trained with" not in card and "init: ``" not in card and "steps: ?" not in card
    assert "https://github.com/" not in card


def test_card_of_a_file_that_records_nothing_says_so():
    card = model_card(Embedding("plain", {"emb_params": torch.zeros(1, 768)}), "me/plain")
    assert "- the file records no training details" in card
    assert "base_model" not in card.split("---")[1] and "Trained with" not in card


def test_card_of_a_trained_file_names_no_hub_base_for_a_local_model_and_no_placeholder_link():
    emb = _emb({"emb_params": torch.zeros(1, 768)})
    local = Embedding("my-cat", emb.vectors, {**emb.meta, "base_model": "/models/sd15", "family": "sd1"})
    card = model_card(local, "me/my-cat")
    assert "base_model" not in card.split("---")[1]
    assert "- base model: `sd15` (local)" in card and "- init: `cat`" in card
    assert "/models" not in card  # a local path names the user's folders: only its base name goes public
    assert (
        "Trained with tokensmith; card written by tokensmith " in card and "https://github.com/" not in card
    )


def test_card_of_a_multi_process_run_records_its_processes():
    emb = _emb({"emb_params": torch.zeros(1, 768)})
    trainer = json.loads(emb.meta["trainer"])
    trainer.update(processes=2, config={**trainer["config"], "batch_size": 2, "grad_accum": 1})
    card = model_card(Embedding("my-cat", emb.vectors, {**emb.meta, "trainer": json.dumps(trainer)}), "me/x")
    assert "- batch_size: `2`" in card and "- grad_accum: `1`" in card
    each = "each with the batch_size and grad_accum above"
    assert f"- processes: 2, {each} (the same as one process with grad_accum 2)" in card


class FailingApi(FakeApi):
    def create_repo(self, repo_id, **kwargs):
        raise ConnectionError("no network")


def test_a_failed_upload_says_how_to_push_again_into_the_same_home(tmp_path):
    from trainers.hub import UploadError

    emb = _emb({"emb_params": torch.ones(1, 768)})
    path = save_canonical(emb, tmp_path / "my-cat.safetensors")
    with pytest.raises(UploadError) as info:
        push_embedding(emb, path, "me/my-cat", api=FailingApi(), home=tmp_path / "home")
    assert f"`tokensmith push my-cat me/my-cat --home {tmp_path / 'home'}`" in str(info.value)


def _trained(family: str, **changes) -> Embedding:
    """A file trained here on `family` (its trainer metadata), with `changes` to the metadata."""
    widths = {"sd1": 768, "sd2": 1024, "demo": 64}
    vectors = (
        {"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}
        if family == "sdxl"
        else {"emb_params": torch.zeros(1, widths[family])}
    )
    emb = _emb(vectors)
    return Embedding("my-cat", vectors, {**emb.meta, "family": family, **changes})


def _licence(card: str) -> str | None:
    front = card.split("---")[1].splitlines()
    return next((line.removeprefix("license: ") for line in front if line.startswith("license:")), None)


def test_card_states_the_base_models_licence_and_none_it_cannot_know():
    sd15, sd21 = "runwayml/stable-diffusion-v1-5", "stabilityai/stable-diffusion-2-1"
    xl = "stabilityai/stable-diffusion-xl-base-1.0"
    assert _licence(model_card(_trained("sd1", base_model=sd15), "me/x")) == "creativeml-openrail-m"
    assert _licence(model_card(_trained("sd2", base_model=sd21), "me/x")) == "openrail++"
    assert _licence(model_card(_trained("sdxl", base_model=xl), "me/x")) == "openrail++"
    assert _licence(model_card(_trained("demo", base_model="demo"), "me/x")) is None
    imported = Embedding("neg", {"emb_params": torch.zeros(2, 768)}, {"family": "sd1", "source_format": "pt"})
    assert _licence(model_card(imported, "me/neg")) is None  # another author's file: their terms
    assert _licence(model_card(imported, "me/neg", license_id="cc-by-4.0")) == "cc-by-4.0"


def test_card_shows_the_native_resolution_in_words_and_the_release_that_trained_it():
    trainer = {"version": "tokensmith-ti/1", "package": "0.3.1", "config": {"resolution": 0, "seed": 3}}
    card = model_card(_trained("sd1", trainer=json.dumps(trainer)), "me/x")
    assert "- resolution: the base model's native size" in card and "resolution: `0`" not in card
    assert "Trained with tokensmith 0.3.1." in card and "tokensmith-ti/1" not in card
    trainer["config"]["resolution"] = 384
    assert "- resolution: `384`" in model_card(_trained("sd1", trainer=json.dumps(trainer)), "me/x")


def test_card_of_a_blend_says_its_lineage_in_words_and_claims_no_licence():
    from embeddings.maths import blend

    r1 = Embedding("r1", {"emb_params": torch.ones(2, 64)}, {"family": "demo", "base_model": "demo"})
    red = Embedding("red", {"emb_params": torch.zeros(1, 64)}, {"operand": "word"})
    card = model_card(blend([(r1, 0.6), (red, 0.4)], "mix", keep_norm=True), "me/mix")
    made = (
        '- made from: a lerp blend of <r1> (weight 0.6) and the word "red" (weight 0.4), rescaled to the '
        "operands' mean norm"
    )
    assert made in card and "sha256" not in card and '{"method"' not in card
    assert "init (as the file records it)" not in card  # the formula says the same as the words
    assert "Blended with tokensmith, not trained" in card and _licence(card) is None


def test_the_uploaded_file_names_no_local_path_and_the_stored_one_keeps_them(tmp_path):
    from embeddings import load_canonical

    config = {
        "images": "/home/ann/shots/cat",
        "run_dir": "/home/ann/.tokensmith/runs/my-cat",
        "model": "/home/ann/models/sd15",
        "templates": "object",
        "resolution": 0,
    }
    trainer = {"version": "tokensmith-ti/1", "end": "finished", "config": config}
    emb = _trained("sd1", base_model="/home/ann/models/sd15", trainer=json.dumps(trainer))
    path = save_canonical(emb, tmp_path / "store" / "my-cat.safetensors")
    api = FakeApi()
    push_embedding(emb, path, "me/my-cat", api=api)
    assert b"/home/ann" not in api.files["my-cat.safetensors"] and b"/home/ann" not in api.files["README.md"]
    (tmp_path / "up").mkdir()
    (tmp_path / "up" / "my-cat.safetensors").write_bytes(api.files["my-cat.safetensors"])
    uploaded = load_canonical(tmp_path / "up" / "my-cat.safetensors")  # checks the sha256 of its tensors
    stored = load_canonical(path)
    assert uploaded.meta["sha256"] == stored.meta["sha256"] == stored.sha256
    assert torch.equal(uploaded.vectors["emb_params"], stored.vectors["emb_params"])
    public = json.loads(uploaded.meta["trainer"])["config"]
    assert public == {**config, "images": "cat", "run_dir": "my-cat", "model": "sd15"}
    assert uploaded.meta["base_model"] == "sd15"
    assert json.loads(stored.meta["trainer"])["config"] == config  # resumes and `runs` still find them
    assert b"- base model: `sd15` (local)" in api.files["README.md"]


def test_a_trained_file_records_its_release_and_resolution_and_the_card_shows_them(tmp_path):
    from tinyrun import quick_config, square_images, tiny_model

    from embeddings import package_version
    from trainers import train
    from trainers.storing import summary

    cfg = quick_config(square_images(tmp_path / "images"), tmp_path / "run", steps=2, resolution=0)
    emb = train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))
    trainer = summary(emb)
    assert trainer["package"] == package_version() and trainer["resolution"] == 16  # the tiny model's own
    card = model_card(emb, "me/thing")
    assert "- resolution: `16`" in card and f"Trained with tokensmith {package_version()}." in card
