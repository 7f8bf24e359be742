"""--push-to-hub: the model card is built offline from the embedding's metadata; the upload is a fake here."""

import json

import pytest
import torch
from PIL import Image

from embeddings import Embedding, save_canonical
from embeddings.errors import TokensmithError
from trainers.hub import model_card, push_embedding


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
    assert "base_model: stabilityai/sdxl-turbo" in card and "- textual-inversion" in card
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
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, commit_message):
        from pathlib import Path

        files = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
        self.calls.append(("upload_folder", repo_id, sorted(files), commit_message))
        self.files = files


def test_push_uploads_the_file_card_and_preview(tmp_path):
    emb = _emb({"emb_params": torch.ones(1, 768)})
    path = save_canonical(emb, tmp_path / "my-cat.safetensors")
    api = FakeApi()
    url = push_embedding(emb, path, "me/my-cat", private=True, preview=Image.new("RGB", (8, 8)), api=api)
    assert url == "https://huggingface.co/me/my-cat"
    assert api.calls[0] == (
        "create_repo",
        "me/my-cat",
        {"repo_type": "model", "private": True, "exist_ok": True},
    )
    assert api.calls[1][2] == ["README.md", "my-cat.safetensors", "preview.png"]
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
    assert "- base model: `/models/sd15`" in card and "- init: `cat`" in card
    assert "Trained with tokensmith (`tokensmith-ti/1`)." in card and "https://github.com/" not in card


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
