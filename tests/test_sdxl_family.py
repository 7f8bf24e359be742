"""SDXL's family and files: the clip_l + clip_g layout is SDXL at any width, a diffusers pair is imported as
a pair (or refused as one), a lone half says so, and messages name the model once and by its family."""

import shutil
from types import SimpleNamespace

import pytest
import safetensors.torch
import torch

from embeddings import Embedding, EmbeddingFormatError, InstallError, install, save_canonical
from embeddings.doctor import diagnose
from embeddings.exporting import export
from embeddings.importing import import_file, import_path, lone_pair_half
from trainers.models import pipeline_encoders
from trainers.tiny import tiny_pipeline


def xl(name="xlcat", n=1, widths=(32, 48)):
    g = torch.Generator().manual_seed(1)
    vectors = {
        "clip_l": torch.randn(n, widths[0], generator=g),
        "clip_g": torch.randn(n, widths[1], generator=g),
    }
    return Embedding(name, vectors, {"family": "sdxl", "base_model": "/models/tiny-xl"})


def fake_model(**widths):
    """Encoders with only what the checks read: input-embedding widths (duck-typed)."""

    def encoder(width):
        layer = torch.nn.Embedding(8, width)
        return SimpleNamespace(get_input_embeddings=lambda: layer)

    return [(key, None, encoder(width)) for key, width in widths.items()]


# --- finding 2: tokensmith's own SDXL file keeps its family ---
def test_a_tiny_sdxl_file_stays_sdxl_through_every_export(tmp_path):
    emb = xl()
    assert import_file(save_canonical(emb, tmp_path / "c.safetensors")).family == "sdxl"
    export(emb, "diffusers", tmp_path / "pair")
    [pair] = import_path(tmp_path / "pair")
    assert pair.family == "sdxl"
    export(emb, "a1111-pt", tmp_path / "x.pt")
    assert import_file(tmp_path / "x.pt").family == "sdxl"


def test_the_doctor_calls_a_tiny_sdxl_file_sdxl_as_list_does(tmp_path):
    encoders = pipeline_encoders(tiny_pipeline("sdxl"))  # clip_l 32, clip_g 48
    report = diagnose(save_canonical(xl(), tmp_path / "xlcat.safetensors"), encoders)
    assert report.fit == "fits"
    assert "family SDXL (sdxl); widths: clip_l 32, clip_g 48; 1 vector(s)" in report.lines
    assert "fits this model, SDXL (clip_l 32, clip_g 48)" in report.lines[-1]


# --- finding 3: a pair whose files disagree is refused as a pair ---
def uneven_pair(folder):
    folder.mkdir()
    safetensors.torch.save_file({"<a>": torch.randn(2, 768)}, str(folder / "learned_embeds.safetensors"))
    safetensors.torch.save_file({"<a>": torch.randn(3, 1280)}, str(folder / "learned_embeds_2.safetensors"))
    return folder


def test_a_pair_folder_whose_halves_disagree_is_refused_not_split(tmp_path):
    folder = uneven_pair(tmp_path / "pairuneven")
    with pytest.raises(EmbeddingFormatError, match=r"pair's files disagree.*2 vector\(s\).*holds 3"):
        import_path(folder)
    skipped = []
    assert import_path(folder, skipped=skipped) == []  # neither half imported alone as an SD 1.x embedding
    assert [path for path, _ in skipped] == [folder] and "disagree" in skipped[0][1]
    report = diagnose(folder)
    assert report.fit == "unreadable" and "disagree" in report.lines[0]


def test_a_pair_of_different_tokens_is_still_imported_one_by_one(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    safetensors.torch.save_file({"<a>": torch.randn(1, 768)}, str(folder / "learned_embeds.safetensors"))
    safetensors.torch.save_file({"<b>": torch.randn(1, 1280)}, str(folder / "learned_embeds_2.safetensors"))
    assert sorted(e.name for e in import_path(folder)) == ["a", "b"]


# --- finding 4: a lone half of a pair says so ---
def test_a_lone_half_of_an_exported_pair_is_named_by_the_doctor(tmp_path):
    export(xl(widths=(768, 1280)), "diffusers", tmp_path / "pair")
    for index, source in ((1, "learned_embeds.safetensors"), (2, "learned_embeds_2.safetensors")):
        lone = tmp_path / f"lone{index}"  # renamed, as users do: which half it is cannot be told
        lone.mkdir()
        shutil.copy(tmp_path / "pair" / source, lone / f"real{index}.safetensors")
        note = lone_pair_half(lone / f"real{index}.safetensors")
        assert note and "half of a diffusers SDXL pair" in note
        report = diagnose(lone / f"real{index}.safetensors")
        assert note in report.warnings
    named = tmp_path / "named"
    named.mkdir()
    shutil.copy(tmp_path / "pair" / "learned_embeds_2.safetensors", named)
    assert "the clip_g (text_encoder_2) half" in lone_pair_half(named / "learned_embeds_2.safetensors")
    assert lone_pair_half(tmp_path / "pair" / "learned_embeds_2.safetensors") is None  # its partner is there
    assert lone_pair_half(tmp_path / "pair") is None


def test_a_plain_single_encoder_diffusers_file_is_not_called_a_half(tmp_path):
    path = tmp_path / "learned_embeds.safetensors"  # diffusers' SD 1.x script writes this name too
    safetensors.torch.save_file({"<cat>": torch.randn(1, 768)}, str(path))
    assert lone_pair_half(path) is None
    assert diagnose(path).warnings == []


# --- finding 5: the model is named once, by its family ---
def test_install_names_the_model_by_the_family_it_is_given():
    emb = Embedding("big", {"emb_params": torch.randn(1, 768)})
    with pytest.raises(InstallError, match="this model is the demo world"):
        install(emb, fake_model(emb_params=64), model_family="demo")


def test_the_doctor_does_not_repeat_a_family_named_by_its_width(tmp_path):
    path = save_canonical(Embedding("w", {"emb_params": torch.randn(1, 32)}), tmp_path / "w.safetensors")
    report = diagnose(path, fake_model(emb_params=48))
    assert report.lines[-1] == "does not fit: trained for width 32; this model is width 48"


# --- polish ---
def test_an_sdxl_diffusers_export_to_any_file_name_is_refused(tmp_path):
    with pytest.raises(EmbeddingFormatError, match="give a folder"):
        export(xl(), "diffusers", tmp_path / "file.txt")
    assert not (tmp_path / "file.txt").exists()
    dotted = tmp_path / "v1.5"
    dotted.mkdir()  # an existing folder with a dot in its name is a folder
    assert [p.name for p in export(xl(), "diffusers", dotted)] == [
        "learned_embeds.safetensors",
        "learned_embeds_2.safetensors",
    ]


def test_the_text_attention_choice_stays_out_of_the_stored_preview_scores():
    from trainers.session import RunRecord

    state = RunRecord(
        cfg=SimpleNamespace(steps=4, trackers=[]),
        folder=SimpleNamespace(log=lambda record: None),
        accelerator=SimpleNamespace(is_main_process=True),
    )
    record = state.log(0, metric=0.5, text_attention="eager", clip_text=0.25)
    assert record["text_attention"] == "eager"  # progress.jsonl still says which attention ran
    assert state.first_metric == {"metric": 0.5, "clip_text": 0.25}  # metrics.before of the stored file


def test_import_skips_a_lone_half_as_the_studio_does(tmp_path, capsys):
    from embeddings import Store
    from studio.cli import main

    export(xl(widths=(768, 1280)), "diffusers", tmp_path / "pair")
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy(tmp_path / "pair" / "learned_embeds_2.safetensors", lone)
    home = tmp_path / "home"
    assert main(["import", str(lone / "learned_embeds_2.safetensors"), "--home", str(home)]) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "the clip_g (text_encoder_2) half of a diffusers SDXL pair" in err
    assert "nothing imported: each file was a lone half of an SDXL pair" in err
    assert Store.for_home(home).names() == []
    export(Embedding(name="dog", vectors={"emb_params": torch.ones(1, 768)}), "a1111-pt", tmp_path / "dog.pt")
    assert main(["import", str(lone), str(tmp_path / "dog.pt"), "--home", str(home)]) == 0
    assert "skipped" in capsys.readouterr().err
    assert Store.for_home(home).names() == ["dog"]  # the rest of the import is stored
    assert main(["import", str(tmp_path / "pair"), "--home", str(tmp_path / "home2")]) == 0
    assert "skipped" not in capsys.readouterr().err  # the pair's folder is the embedding
