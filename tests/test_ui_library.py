"""The Library page (AppTest) and its card logic (studio/app/cards.py)."""

import io
import json
import re
import zipfile

import pytest
import torch
from apppage import open_page
from PIL import Image
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store, load_canonical
from studio.app import cards


def seen(markdown: str) -> str:
    """What a reader sees of Markdown the page draws: its backslash escapes read (file text is drawn
    `cards.literal`) and the invisible word joiners that keep URLs from autolinking left out."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def emb(name, n=1, width=8, seed=0, **meta) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding(
        name, {"emb_params": torch.randn(n, width, generator=g)}, {k: str(v) for k, v in meta.items()}
    )


@pytest.fixture
def store(tokensmith_home) -> Store:
    s = Store.for_home(tokensmith_home)
    s.put(emb("red-square", steps=150, init="square"), preview=Image.new("RGB", (32, 32), "red"))
    s.put(emb("blue-star", n=2, seed=1, init="star"))
    return s


def open_library(**query) -> AppTest:
    return open_page("views/library.py", **query)


def captions(at) -> str:
    return "\n".join(seen(c.value) for c in at.caption)


def new_name_field(at: AppTest):
    """The rename field of the embedding open in the details panel."""
    [field] = [box for box in at.text_input if box.label == "New name"]
    return field


def test_empty_library_says_how_to_fill_it():
    at = open_library()
    assert "The library is empty" in seen(at.info[0].value)


def test_gallery_shows_cards_with_facts_and_search_filters(store):
    at = open_library()
    names = [md.value for md in at.markdown if md.value.startswith("**&lt;")]
    assert names == ["**&lt;blue-star&gt;**", "**&lt;red-square&gt;**"]
    assert "Width 8 · 1 vector · 150 steps" in captions(at)  # the family in words, as errors say it
    assert 'trained from "star"' in captions(at)
    at.text_input(key="lib_query").set_value("square").run()
    names = [md.value for md in at.markdown if md.value.startswith("**&lt;")]
    assert names == ["**&lt;red-square&gt;**"]
    assert "1 of 2 embeddings" in captions(at)


def test_open_shows_details_and_a_download_per_format(store):
    at = open_library()
    at.button(key="open_red-square").click().run()
    assert at.query_params["emb"] == "red-square"
    assert any(h.value == "<red-square>" for h in at.subheader)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == list(cards.EXPORT_LABELS.values())


def test_rename_delete_and_restore(store):
    at = open_library(emb="red-square")
    new_name_field(at).set_value("crimson-square")
    at.button(key="lib_rename").click().run()
    assert store.names() == ["blue-star", "crimson-square"]
    assert store.preview_path("crimson-square").exists()
    at.button(key="lib_delete").click().run()
    assert store.names() == ["blue-star"]
    at.button(key="restore_crimson-square").click().run()
    assert store.names() == ["blue-star", "crimson-square"]


def test_rename_to_a_taken_name_is_explained_and_the_page_stays(store):
    at = open_library(emb="red-square")
    new_name_field(at).set_value("blue-star")
    at.button(key="lib_rename").click().run()
    assert "already exists" in seen(at.error[0].value)
    assert store.names() == ["blue-star", "red-square"]
    assert [e.label for e in at.expander] == [
        "Raw metadata",  # the details panel's, still open
        "Doctor: do they fit the model?",
        "Import embeddings",
        "Trash",
    ]


def test_a_refused_rename_leaves_delete_on_the_page_and_says_what_to_do(store):
    at = open_library(emb="red-square")
    new_name_field(at).set_value("blue-star")
    at.button(key="lib_rename").click().run()
    delete = at.button(key="lib_delete")  # the other way out is still drawn
    assert seen(at.error[0].value) == (
        "cannot rename 'red-square' to 'blue-star': <blue-star> already exists: choose another name, or "
        "delete <blue-star> first"
    )
    delete.click().run()
    assert store.names() == ["blue-star"] and store.trashed() == ["red-square"]


def test_the_details_panel_reads_widths_as_words(store):
    at = open_library(emb="blue-star")
    assert any(md.value.endswith("\nwidth 8") for md in at.markdown)
    assert not any("{" in md.value for md in at.markdown)


def test_doctor_verdict_sentences_are_joined_with_a_sentence_break(store, monkeypatch):
    """'…this model is width 32 partial option: …' read as one run-on sentence."""
    from trainers.models import LoadedModel
    from trainers.tiny import tiny_pipeline

    tiny = LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1")
    width = tiny.widths["emb_params"]
    store.put(Embedding("xl-cat", {"clip_l": torch.ones(1, width), "clip_g": torch.ones(1, 2 * width)}))
    monkeypatch.setattr("studio.app.context.loaded_model", lambda spec: tiny)
    at = open_library()
    at.button(key="lib_doctor").click().run()
    [verdict] = [seen(md.value) for md in at.markdown if "**<xl-cat>**" in seen(md.value)]
    assert verdict.startswith("🟡") and "partial option" in verdict
    assert re.search(r"[^.:;] partial option", verdict) is None, verdict


def test_the_new_name_field_belongs_to_the_embedding_it_renames(store):
    at = open_library(emb="red-square")
    new_name_field(at).set_value("crimson").run()
    at.button(key="open_blue-star").click().run()
    assert new_name_field(at).value == ""
    at.button(key="lib_rename").click().run()  # an empty field renames nothing
    assert store.names() == ["blue-star", "red-square"]


def test_an_import_shows_its_card_at_once(tokensmith_home, tmp_path):
    from embeddings.exporting import export

    export(emb("green-dot", seed=3), "a1111-pt", tmp_path / "green-dot.pt")
    at = open_library()
    at.file_uploader(key="lib_import_files").set_value(
        [("green-dot.pt", (tmp_path / "green-dot.pt").read_bytes(), "application/octet-stream")]
    )
    at.run()
    at.button(key="lib_import").click().run()
    assert "Imported <green-dot>" in seen(at.success[0].value)
    assert [md.value for md in at.markdown if md.value.startswith("**&lt;")] == ["**&lt;green-dot&gt;**"]
    assert not any("The library is empty" in seen(i.value) for i in at.info)


def test_importing_a_taken_name_points_to_the_replace_toggle(store, tmp_path):
    from embeddings.exporting import export

    export(emb("blue-star", seed=5), "canonical", tmp_path / "blue-star.safetensors")
    at = open_library()
    at.file_uploader(key="lib_import_files").set_value(
        [
            (
                "blue-star.safetensors",
                (tmp_path / "blue-star.safetensors").read_bytes(),
                "application/octet-stream",
            )
        ]
    )
    at.run()
    at.button(key="lib_import").click().run()
    assert "turn on “Replace stored embeddings of the same name”" in seen(at.error[0].value)
    assert "--force" not in seen(at.error[0].value)


def test_an_unreadable_store_file_is_named_with_what_to_do(store):
    (store.root / "broken.safetensors").write_bytes(b"\x00garbage")
    at = open_library()
    warning = " ".join(seen(w.value) for w in at.warning)
    assert (
        "broken.safetensors" in warning
        and "Move it to the trash" in warning
        and "tokensmith doctor" not in warning
    )
    names = [md.value for md in at.markdown if md.value.startswith("**&lt;")]
    assert names == ["**&lt;blue-star&gt;**", "**&lt;red-square&gt;**"]
    at.button(key="lib_trash_broken_broken").click().run()
    assert not at.warning and not (store.root / "broken.safetensors").exists()


def test_import_by_upload_reads_other_formats(store, tmp_path):
    from embeddings.exporting import export

    export(emb("green-dot", seed=3), "a1111-pt", tmp_path / "green-dot.pt")
    at = open_library()
    at.file_uploader(key="lib_import_files").set_value(
        [
            ("green-dot.pt", (tmp_path / "green-dot.pt").read_bytes(), "application/octet-stream"),
            ("junk.safetensors", b"not an embedding", "application/octet-stream"),
        ]
    )
    at.run()
    at.button(key="lib_import").click().run()
    assert "Imported <green-dot>" in seen(at.success[0].value)
    assert "junk.safetensors" in seen(at.error[0].value)
    assert torch.equal(
        store.get("green-dot").vectors["emb_params"], emb("green-dot", seed=3).vectors["emb_params"]
    )


def test_lineage_text_reads_blend_parents():
    parent = {
        "method": "slerp",
        "keep_norm": True,
        "operands": [
            {"name": "cat", "kind": "embedding", "weight": 0.7},
            {"name": "dog", "kind": "word", "weight": 0.3},
        ],
    }
    assert (
        cards.lineage_text({"parent": json.dumps(parent)}) == '0.7 × <cat> + 0.3 × "dog" (slerp, keep norm)'
    )
    assert cards.lineage_text({"init": "toy"}) == 'trained from "toy"'
    assert cards.lineage_text({}) == ""


def test_export_download_bytes_reload_to_the_same_vectors(tmp_path):
    original = emb("cat", n=2)
    download = cards.export_download(original, "canonical")
    assert download.file_name == "cat.safetensors"
    (tmp_path / download.file_name).write_bytes(download.data)
    assert torch.equal(
        load_canonical(tmp_path / download.file_name).vectors["emb_params"], original.vectors["emb_params"]
    )
    sdxl = Embedding("xl", {"clip_l": torch.zeros(1, 768), "clip_g": torch.ones(1, 1280)}, {})
    pair = cards.export_download(sdxl, "diffusers")
    assert pair.mime == "application/zip"
    assert len(zipfile.ZipFile(io.BytesIO(pair.data)).namelist()) == 2


def test_doctor_gives_each_embedding_a_verdict_for_the_model(store, monkeypatch):
    from trainers.models import LoadedModel
    from trainers.tiny import tiny_pipeline

    tiny = LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1")
    width = tiny.widths["emb_params"]
    store.put(emb("fits-well", width=width))
    monkeypatch.setattr("studio.app.context.loaded_model", lambda spec: tiny)
    at = open_library()
    at.button(key="lib_doctor").click().run()
    verdicts = {
        seen(md.value).split("**")[1]: seen(md.value)
        for md in at.markdown
        if md.value.startswith(("✅", "❌", "🟡"))
    }
    assert verdicts["<fits-well>"].startswith("✅ **<fits-well>** — fits this model")
    assert verdicts["<red-square>"].startswith("❌ **<red-square>** — does not fit")  # no raw 'no:' before it
    assert "this model is SD 1.x (width 32)" in verdicts["<red-square>"]  # the model's family, as the CLI
    assert "provenance" not in verdicts["<red-square>"]  # the fit only: the card shows the rest


def test_importing_an_embedding_already_in_the_library_is_no_error(store, tmp_path):
    """The same vectors again (an import done twice): said once, as the CLI says it, not refused."""
    from embeddings.exporting import export

    export(store.get("blue-star"), "a1111-pt", tmp_path / "blue-star.pt")
    at = open_library()
    upload = ("blue-star.pt", (tmp_path / "blue-star.pt").read_bytes(), "application/octet-stream")
    at.file_uploader(key="lib_import_files").set_value([upload])
    at.run()
    at.button(key="lib_import").click().run()
    assert not at.error
    assert any("Already in the library with identical vectors: <blue-star>" in seen(i.value) for i in at.info)


def test_search_finds_a_family_as_the_card_writes_it():
    entry = type("Entry", (), {"name": "cat", "family": "sd1", "meta": {}})()
    assert cards.matches(entry, "SD 1.x") and cards.matches(entry, "sd1") and not cards.matches(entry, "SDXL")
