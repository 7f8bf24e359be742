"""Export: every format re-imports to bit-identical tensors, matches what other tools expect, and diffusers'
own loader given our files produces the same text-encoder outputs as our injection.
"""

import base64
import errno
import json
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image

from embeddings import Embedding, EmbeddingFormatError, expand_prompt, install
from embeddings.exporting import FORMATS, export
from embeddings.formats.png import CHUNK_KEY, png_text_chunks
from embeddings.importing import import_path
from trainers.models import pipeline_encoders
from trainers.tiny import tiny_pipeline


def make(kind, n=3, name="thing"):
    gen = torch.Generator().manual_seed(11)
    widths = {
        "sd1": {"emb_params": 768},
        "sd2": {"emb_params": 1024},
        "odd": {"emb_params": 48},
        "sdxl": {"clip_l": 768, "clip_g": 1280},
        "tiny-xl": {"clip_l": 32, "clip_g": 48},
        "tiny": {"emb_params": 32},
    }[kind]
    vectors = {k: torch.randn(n, w, generator=gen) * 0.37 for k, w in widths.items()}
    return Embedding(name, vectors, {"steps": "120", "init": "cat", "base_model": "test-model"})


OUT = {
    "canonical": "out.safetensors",
    "diffusers": "out-diffusers",
    "a1111-pt": "out.pt",
    "a1111-png": "out.png",
}


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("kind", ["sd1", "sd2", "sdxl", "odd"])
def test_every_format_round_trips_bit_identically(tmp_path, fmt, kind):
    emb = make(kind)
    out = tmp_path / OUT[fmt]
    if fmt == "diffusers" and kind != "sdxl":
        out = tmp_path / "learned_embeds.safetensors"
    written = export(emb, fmt, out)
    assert all(p.is_file() for p in written)
    (back,) = import_path(out)
    assert back.widths == emb.widths
    for key in emb.vectors:
        assert torch.equal(back.vectors[key], emb.vectors[key]), (fmt, kind, key)
    # A1111 and our own file name the embedding by the file stem; diffusers and PNG files carry the name
    named_by_stem = fmt in ("canonical", "a1111-pt") or (fmt == "a1111-png" and kind == "sdxl")
    assert back.name == ("out" if named_by_stem else "thing")


def test_diffusers_sdxl_export_is_the_documented_pair(tmp_path):
    emb = make("sdxl")
    written = export(emb, "diffusers", tmp_path / "pair")
    assert [p.name for p in written] == ["learned_embeds.safetensors", "learned_embeds_2.safetensors"]
    first, second = (safetensors.torch.load_file(str(p)) for p in written)
    assert (
        list(first) == ["<thing>"]
        and first["<thing>"].shape == (3, 768)
        and second["<thing>"].shape == (3, 1280)
    )
    with pytest.raises(EmbeddingFormatError, match=r"two files .*give a folder"):
        export(
            emb, "diffusers", tmp_path / "thing.safetensors"
        )  # a file name for a pair: refused, not a folder
    assert not (tmp_path / "thing.safetensors").exists()


@pytest.mark.parametrize("name", ["learned_embeds.bin", "thing.pt"])
def test_diffusers_pickle_for_a_bin_or_pt_out_path(tmp_path, name):
    export(make("sd1"), "diffusers", tmp_path / name)
    assert (tmp_path / name).read_bytes()[:2] == b"PK"  # torch.save's zip, not safetensors bytes
    data = torch.load(tmp_path / name, weights_only=True)
    assert list(data) == ["<thing>"]


def test_a_diffusers_export_keeps_the_provenance_and_the_demo_family(tmp_path):
    meta = {"family": "demo", "trainer": '{"steps": 150}', "a1111.step": "500", "init": "red circle"}
    demo = Embedding("dm", {"emb_params": torch.randn(2, 64)}, meta)
    export(demo, "diffusers", tmp_path / "dm.safetensors")
    (back,) = import_path(tmp_path / "dm.safetensors")
    assert back.family == "demo"  # width 64 alone would say 'w64'
    assert {k: back.meta[k] for k in meta} == meta
    assert back.meta["source_format"] == "safetensors:diffusers"  # this import, not the exported file's


@pytest.mark.parametrize(
    ("claim", "width", "family"), [("sd1", 1024, "sd2"), ("demo", 768, "sd1"), ("x", 64, "w64")]
)
@pytest.mark.parametrize("key", ["<t>", "emb_params"])  # diffusers' layout, kohya/ComfyUI's
def test_a_foreign_family_label_that_contradicts_the_widths_is_not_kept(tmp_path, claim, width, family, key):
    path = tmp_path / "t.safetensors"
    safetensors.torch.save_file({key: torch.randn(1, width)}, str(path), metadata={"family": claim})
    assert import_path(path)[0].family == family


@pytest.mark.parametrize(("claim", "family"), [("sd1", "sdxl"), ("sdxl", "sdxl"), ("demo", "sdxl")])
def test_an_sdxl_files_family_label_must_fit_its_widths_too(tmp_path, claim, family):
    path = tmp_path / "x.safetensors"
    tensors = {"clip_l": torch.randn(1, 768), "clip_g": torch.randn(1, 1280)}
    safetensors.torch.save_file(tensors, str(path), metadata={"family": claim})
    assert import_path(path)[0].family == family


def test_an_existing_folder_as_out_asks_for_a_file_name_not_force(tmp_path):
    (tmp_path / "folder").mkdir()
    for overwrite in (False, True):  # --force cannot help, so the error does not suggest it
        with pytest.raises(
            IsADirectoryError, match=r"folder is a folder; give the file.*folder[/\\]thing\.pt$"
        ):
            export(make("sd1"), "a1111-pt", tmp_path / "folder", overwrite=overwrite)


def test_a_failed_sdxl_pair_export_leaves_the_old_pair_whole(tmp_path, monkeypatch):
    import os

    from embeddings.formats import diffusers

    out = tmp_path / "pair"
    export(make("sdxl"), "diffusers", out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_replace, calls = os.replace, []

    def second_rename_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(diffusers.os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="No space left"):
        export(make("sdxl", n=5), "diffusers", out, overwrite=True)
    monkeypatch.setattr(diffusers.os, "replace", real_replace)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the first file was put back; no temps


def test_an_unwritable_output_is_named_in_the_error(tmp_path, monkeypatch):
    def refused(self, data):  # what a folder the user may not write into does to the temp file
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "write_bytes", refused)
    says = r"cannot write .*x\.pt: Permission denied; choose another --out"
    with pytest.raises(OSError, match=says) as caught:
        export(make("sd1"), "a1111-pt", tmp_path / "x.pt")
    assert ".tmp" not in str(caught.value)


def test_a_file_where_the_outputs_folder_should_be_is_named_before_writing(tmp_path):
    """Not 'cannot write file/x.pt: File exists', which reads as if x.pt existed (--force would not help)."""
    (tmp_path / "file").write_text("")
    with pytest.raises(NotADirectoryError, match=r"file is a file, not a folder: choose another --out"):
        export(make("sd1"), "a1111-pt", tmp_path / "file" / "x.pt")


def test_a1111_pt_is_the_dict_a1111_writes_and_loads_with_weights_only(tmp_path):
    export(make("sd1"), "a1111-pt", tmp_path / "thing.pt")
    data = torch.load(tmp_path / "thing.pt", weights_only=True)
    assert set(data) == {
        "string_to_token",
        "string_to_param",
        "name",
        "step",
        "sd_checkpoint",
        "sd_checkpoint_name",
        "tokensmith",  # our metadata as strings; A1111 and diffusers read only the keys they know
    }
    assert data["string_to_param"]["*"].shape == (3, 768) and data["name"] == "thing" and data["step"] == 120
    assert all(type(k) is str and type(v) is str for k, v in data["tokensmith"].items())


def test_a1111_sdxl_dict_holds_only_tensors_because_a1111_detaches_every_value(tmp_path):
    export(make("sdxl"), "a1111-pt", tmp_path / "xl.pt")
    data = torch.load(tmp_path / "xl.pt", weights_only=True)
    assert sorted(data) == ["clip_g", "clip_l"] and all(isinstance(v, torch.Tensor) for v in data.values())


def test_a1111_png_chunk_decodes_the_way_a1111_does(tmp_path):
    export(make("sd1"), "a1111-png", tmp_path / "thing.png", image=Image.new("RGB", (40, 30), "green"))
    raw = (tmp_path / "thing.png").read_bytes()
    decoded = json.loads(base64.b64decode(png_text_chunks(raw)[CHUNK_KEY]))  # A1111's embedding_from_b64
    tensor = torch.tensor(decoded["string_to_param"]["*"]["TORCHTENSOR"])
    assert torch.equal(tensor.float(), make("sd1").vectors["emb_params"]) and decoded["name"] == "thing"
    with Image.open(tmp_path / "thing.png") as image:
        assert image.size == (40, 30) and "sd-ti-embedding" in image.text


def test_export_never_replaces_files_without_overwrite(tmp_path):
    target = tmp_path / "x.safetensors"
    target.write_bytes(b"keep me")
    with pytest.raises(FileExistsError, match="--force"):
        export(make("sd1"), "canonical", target)
    assert target.read_bytes() == b"keep me"
    export(make("sd1"), "canonical", target, overwrite=True)
    assert import_path(target)[0].num_vectors == 3
    with pytest.raises(EmbeddingFormatError, match="unknown export format"):
        export(make("sd1"), "ckpt", tmp_path / "y")


# --- parity: diffusers' loader on our files == our injection ---
def encode(tokenizer, encoder, prompt):
    ids = tokenizer(prompt, padding="max_length", truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids).last_hidden_state  # (1, T, width)


@pytest.mark.parametrize("fmt", ["canonical", "diffusers", "a1111-pt"])
def test_sd1_files_loaded_by_diffusers_match_our_injection(tmp_path, fmt):
    emb = make("tiny", n=2)
    out = tmp_path / {"canonical": "thing.safetensors", "diffusers": "learned_embeds.safetensors"}.get(
        fmt, "thing.pt"
    )
    export(emb, fmt, out)
    ours, theirs = tiny_pipeline("sd1"), tiny_pipeline("sd1")
    install(import_path(out)[0], pipeline_encoders(ours))
    theirs.load_textual_inversion(str(out), token=None if fmt == "diffusers" else "<thing>")
    prompt = "a photo of <thing>"
    assert theirs.maybe_convert_prompt(prompt, theirs.tokenizer) == expand_prompt(prompt, [emb])
    full = expand_prompt(prompt, [emb])
    assert torch.equal(
        encode(ours.tokenizer, ours.text_encoder, full), encode(theirs.tokenizer, theirs.text_encoder, full)
    )


@pytest.mark.parametrize("fmt", ["canonical", "diffusers"])
def test_sdxl_files_loaded_by_diffusers_into_both_encoders_match_our_injection(tmp_path, fmt):
    emb = make("tiny-xl", n=2)
    out = tmp_path / ("thing.safetensors" if fmt == "canonical" else "pair")
    export(emb, fmt, out)
    ours, theirs = tiny_pipeline("sdxl"), tiny_pipeline("sdxl")
    install(import_path(out)[0], pipeline_encoders(ours))
    if fmt == "canonical":  # the documented way: split clip_l / clip_g and load each into its encoder
        state = safetensors.torch.load_file(str(out))
        parts = [state["clip_l"], state["clip_g"]]
    else:
        parts = [str(out / "learned_embeds.safetensors"), str(out / "learned_embeds_2.safetensors")]
    theirs.load_textual_inversion(
        parts[0], token="<thing>", text_encoder=theirs.text_encoder, tokenizer=theirs.tokenizer
    )
    theirs.load_textual_inversion(
        parts[1], token="<thing>", text_encoder=theirs.text_encoder_2, tokenizer=theirs.tokenizer_2
    )
    full = expand_prompt("a <thing> on a mat", [emb])
    for tok, enc, tok2, enc2 in [
        (ours.tokenizer, ours.text_encoder, theirs.tokenizer, theirs.text_encoder),
        (ours.tokenizer_2, ours.text_encoder_2, theirs.tokenizer_2, theirs.text_encoder_2),
    ]:
        assert torch.equal(encode(tok, enc, full), encode(tok2, enc2, full))
