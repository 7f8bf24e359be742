"""The Library page against files that are not what they should be (AppTest): metadata and names holding
Markdown, a thumbnail that does not open, upload names no filesystem holds, store files the store skips, and
files of other formats in the store folder."""

import json
import re

import pytest
import torch
from apppage import open_page
from markdown_it import MarkdownIt
from PIL import Image
from safetensors.torch import save, save_file
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store, save_canonical
from embeddings.exporting import export
from studio.app import cards, embedding_uploads

IMAGE = "![t](http://attacker.example/track.png)"
LINK = "[Click here to fix your GPU driver](https://attacker.example/x)"
# What Streamlit's Markdown (remark-gfm) turns into a link in text, escapes read: its own pattern.
GFM_AUTOLINK = re.compile(r"(https?://|www(?=\.))([-.\w]+)|([-.\w+]+)@([-\w]+(?:\.[-\w]+)+)", re.IGNORECASE)
DRAWN = ("markdown", "caption", "warning", "error", "info", "success", "subheader", "toast")


def emb(name, n=1, width=8, seed=0, **meta) -> Embedding:
    g = torch.Generator().manual_seed(seed)
    return Embedding(name, {"emb_params": torch.randn(n, width, generator=g)}, meta)


def seen(markdown: str) -> str:
    """What a reader sees of Markdown the page draws: escapes read, word joiners left out."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def drawn(at: AppTest) -> list[str]:
    """The Markdown of everything the page drew as text."""
    return [element.value for kind in DRAWN for element in at.get(kind)]


def assert_inert(markdown: str) -> None:
    """No image, link or HTML when rendered, and no text that GFM would autolink (code spans aside: remark
    autolinks text nodes only)."""
    html = MarkdownIt("commonmark").render(markdown)
    assert "<img" not in html and "<a " not in html, html
    text = re.sub(r"(`+).*?\1", "", markdown)
    assert not GFM_AUTOLINK.search(text.replace("\\", "")), markdown


def test_literal_draws_a_files_markdown_as_its_characters():
    for text in (IMAGE, LINK, "<img src=x onerror=alert(1)>", "www.example.com me@example.com $x^2$"):
        assert_inert(cards.literal(text))
        assert seen(cards.literal(text)) == text
    assert cards.literal("two\nlines") == "two lines"
    assert cards.code("x`y.pt") == "``x`y.pt``" and seen(cards.code("a.pt")) == "`a.pt`"


# --- metadata and names as Markdown (security review 6) ---


@pytest.fixture
def hostile_store(tokensmith_home) -> Store:
    store = Store.for_home(tokensmith_home)
    store.put(emb("mdinject", steps=IMAGE, init=LINK, family=f"w8 {IMAGE}"))
    parent = {"operands": [{"name": IMAGE, "weight": 0.5}, {"name": LINK, "kind": "word"}], "method": LINK}
    store.put(emb("blended", seed=1, parent=json.dumps(parent)))
    store.put(emb("imported", seed=2, source_file=f"{LINK}.pt"))
    return store


def test_metadata_markdown_is_drawn_as_written_on_cards_and_details(hostile_store):
    for query in ({}, {"emb": "mdinject"}, {"emb": "blended"}, {"emb": "imported"}):
        at = open_page("views/library.py", **query)
        for markdown in drawn(at):
            assert_inert(markdown)
    shown = [seen(text) for text in drawn(open_page("views/library.py", emb="mdinject"))]
    assert any(f'trained from "{LINK}"' in text for text in shown)
    assert any(f"{IMAGE} steps" in text for text in shown)


def test_a_file_name_holding_markdown_is_named_inertly(tokensmith_home):
    store = Store.for_home(tokensmith_home)
    store.put(emb("cat"))
    (store.root / "[click](https:evil.example) x.safetensors").write_bytes(b"\x00garbage")
    at = open_page("views/library.py")
    [warning] = at.warning
    assert "[click](https:evil.example) x.safetensors" in warning.value
    for markdown in drawn(at):
        assert_inert(markdown)


def test_the_doctor_draws_metadata_and_its_verdicts_inertly(hostile_store, monkeypatch):
    from trainers.models import LoadedModel
    from trainers.tiny import tiny_pipeline

    tiny = LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1")
    hostile_store.put(emb("fits", width=tiny.widths["emb_params"]))
    monkeypatch.setattr("studio.app.context.loaded_model", lambda spec: tiny)
    at = open_page("views/library.py")
    at.button(key="lib_doctor").click().run()
    assert not at.exception
    for markdown in drawn(at):
        assert_inert(markdown)


# --- a thumbnail that does not open (security review 7) ---


@pytest.fixture
def store(tokensmith_home) -> Store:
    s = Store.for_home(tokensmith_home)
    s.put(emb("good", steps="150"), preview=Image.new("RGB", (64, 64), "red"))
    s.put(emb("other", seed=1))
    return s


def test_a_thumbnail_that_is_not_an_image_is_named_and_the_page_stays(store):
    (store.root / "good.preview.png").write_bytes(b"not really a png")
    at = open_page("views/library.py")
    assert not at.error, [e.value for e in at.error]
    names = [md.value for md in at.markdown if md.value.startswith("**&lt;")]
    assert names == ["**&lt;good&gt;**", "**&lt;other&gt;**"]
    [note] = [seen(c.value) for c in at.caption if "good.preview.png" in c.value]
    assert "is not a readable image: delete it, or replace it with a good image" in note
    assert "BytesIO" not in note
    assert "The trash is empty." in [c.value for c in at.caption]  # the rest of the page is there
    assert at.button(key="lib_import") is not None
    at = open_page("views/library.py", emb="good")  # the details panel, and its A1111 PNG export
    assert not at.error and [b.label for b in at.get("download_button")]


def test_a_thumbnail_too_large_to_open_is_named_and_the_page_stays(store, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 64 x 64 is past twice that: PIL refuses it
    at = open_page("views/library.py")
    assert not at.error, [e.value for e in at.error]
    assert any("good.preview.png" in c.value and "too large to open safely" in c.value for c in at.caption)
    assert "The trash is empty." in [c.value for c in at.caption]


# --- upload names the filesystem cannot hold (security review 10) ---


def canonical_bytes(tmp_path, name="x", seed=0) -> bytes:
    return save_canonical(emb(name, seed=seed), tmp_path / f"{name}.safetensors").read_bytes()


def test_upload_names_no_filesystem_holds_each_import_on_their_own(tmp_path):
    long = "日本語の埋め込み" * 11 + ".safetensors"  # 276 bytes of UTF-8
    files = [
        (long, canonical_bytes(tmp_path, seed=1)),
        ("..", canonical_bytes(tmp_path, seed=2)),
        ("a\0b.safetensors", canonical_bytes(tmp_path, seed=3)),
        ("../../etc/passwd.pt", b"not an embedding"),
        ("fine.safetensors", canonical_bytes(tmp_path, seed=4)),
    ]
    uploads = embedding_uploads.read_uploads(files)
    sources = [source for source, _ in uploads.found]
    assert sources == [long, "..", "a\0b.safetensors", "fine.safetensors"]
    named = {source: e for source, e in uploads.found}
    assert named["fine.safetensors"].name == "fine" and named["a\0b.safetensors"].name == "a-b"
    assert named[long].name.startswith("emb-") and named[long].meta["source_file"] == long
    assert named[long].meta["source_name"] == long.removesuffix(".safetensors")
    [problem] = uploads.problems
    assert problem.startswith("passwd.pt: ") and "tokensmith-import" not in problem and "/" not in problem


def test_upload_names_keep_what_the_importer_reads_from_them(tmp_path):
    """The embedding's name, its source_file and source_name are those an import of the file itself gives."""
    data = export(emb("neg"), "a1111-pt", tmp_path / "x.pt")[0].read_bytes()
    (source, uploaded), *_ = embedding_uploads.read_uploads([("My Neg (1).pt", data)]).found
    assert source == "My Neg (1).pt" and uploaded.meta["source_file"] == "My Neg (1).pt"
    assert embedding_uploads.written_name("learned_embeds_2.safetensors") == "learned_embeds_2.safetensors"
    written = embedding_uploads.written_name
    assert written("..").startswith("emb-") and "/" not in written("a/b\0c.pt")


def test_a_long_upload_name_imports_on_the_page_and_the_trash_stays(tokensmith_home, tmp_path):
    long = "日本語の埋め込み" * 11 + ".safetensors"
    at = open_page("views/library.py")
    at.file_uploader(key="lib_import_files").set_value([(long, canonical_bytes(tmp_path), "application/x")])
    at.run()
    at.button(key="lib_import").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert seen(at.success[0].value).startswith("Imported <emb-")
    assert "The trash is empty." in [c.value for c in at.caption]


# --- store files the store skips, and other formats (studio review 6 and 9) ---


def diffusers_copy(store: Store, file_name: str, token: str, width: int = 8) -> None:
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / file_name).write_bytes(save({token: torch.randn(1, width)}))


def test_the_doctor_lists_skipped_files_with_their_reasons(tokensmith_home, monkeypatch):
    from trainers.models import LoadedModel
    from trainers.tiny import tiny_pipeline

    tiny = LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1")
    store = Store.for_home(tokensmith_home)
    store.put(emb("cat", width=tiny.widths["emb_params"]))
    diffusers_copy(store, "learned_embeds.safetensors", "<redcirc>", width=tiny.widths["emb_params"])
    monkeypatch.setattr("studio.app.context.loaded_model", lambda spec: tiny)
    at = open_page("views/library.py")
    at.button(key="lib_doctor").click().run()
    [verdict] = [seen(m.value) for m in at.markdown if "learned_embeds.safetensors" in seen(m.value)]
    assert "not in the library (keys <redcirc> are not the canonical layout" in verdict
    assert (
        "use <redcirc> in prompts" not in verdict and "prompts cannot use it until it is imported" in verdict
    )
    # the verdict says why; the warning's shell commands are left out (the row above has Import it)
    assert not any("tokensmith import" in seen(c.value) for c in at.caption)
    assert any(seen(m.value).startswith("✅ **<cat>** — fits this model") for m in at.markdown)


def test_a_skipped_file_of_another_layout_is_imported_from_the_server_and_trashed(tokensmith_home):
    store = Store.for_home(tokensmith_home)
    store.put(emb("cat"))
    diffusers_copy(store, "learned_embeds.safetensors", "<redcirc>")
    at = open_page("views/library.py")
    assert "import the file on the Library page" in seen(at.warning[0].value)
    at.button(key="lib_import_stray_learned_embeds").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert store.names() == ["cat", "redcirc"] and not at.warning
    assert "learned_embeds" in store.trashed()


def test_other_format_files_in_the_store_folder_are_noted(tokensmith_home, tmp_path):
    store = Store.for_home(tokensmith_home)
    store.put(emb("cat"))
    export(emb("neg"), "a1111-pt", store.root / "bad-hands-5.pt")
    Image.new("RGB", (8, 8)).save(store.root / "cat.preview.png")  # a thumbnail: not an other format
    at = open_page("views/library.py")
    [note] = [seen(c.value) for c in at.caption if "not read" in c.value]
    assert note.startswith("ℹ️ not read: `bad-hands-5.pt`: the library reads only .safetensors files")
    assert "Import embeddings" in note and "tokensmith import" in note


def test_a_diffusers_file_under_its_token_name_imports_in_place(tokensmith_home):
    store = Store.for_home(tokensmith_home)
    store.root.mkdir(parents=True)
    save_file({"<same>": torch.randn(1, 8)}, str(store.root / "same.safetensors"))
    at = open_page("views/library.py")
    at.button(key="lib_import_stray_same").click().run()
    assert not at.error and store.names() == ["same"] and "same" not in store.trashed()
    said = "Imported `same.safetensors` as <same>; the copy replaced the file"
    assert [seen(t.value) for t in at.toast] == [said]


def test_the_inspect_page_draws_a_files_metadata_inertly(hostile_store):
    at = open_page("views/inspect.py")
    at.selectbox(key="insp_name").select("mdinject").run()
    assert not at.exception, at.exception
    for markdown in drawn(at):
        assert_inert(markdown)
    assert any(f'trained from "{LINK}"' in seen(text) for text in drawn(at))


def test_an_error_quoting_a_files_words_keeps_its_own_markdown_but_nothing_live():
    from studio.app import context

    text = f"it was trained for width 8 {IMAGE}; see {LINK}, `tokensmith import [x]` and <cat> <img src=x>"
    drawn_text = context.error_text(ValueError(text))
    assert_inert(drawn_text)
    assert "`tokensmith import [x]`" in drawn_text and "<cat>" in drawn_text  # code and tokens as written
