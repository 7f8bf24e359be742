"""The Library's import by upload (studio/app/embedding_uploads.py read_uploads) and its ways out of a stored
file that is listed but does not load (AppTest)."""

import re
import shutil

import pytest
import torch
from apppage import open_page
from safetensors.torch import save
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store, StoreError
from embeddings.exporting import export
from studio.app import context, embedding_uploads

EXPANDERS = ["Doctor: do they fit the model?", "Import embeddings", "Trash"]


def seen(markdown: str) -> str:
    """What a reader sees of Markdown the page draws: its backslash escapes read (file text is drawn
    `cards.literal`) and the invisible word joiners that keep URLs from autolinking left out."""
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


def emb(name, n=1, width=8, seed=0) -> Embedding:
    return Embedding(
        name, {"emb_params": torch.randn(n, width, generator=torch.Generator().manual_seed(seed))}
    )


def diffusers_file(token: str, width: int = 768, seed: int = 0) -> bytes:
    """What diffusers' textual-inversion scripts write: {token: (1, width)}."""
    return save({token: torch.randn(1, width, generator=torch.Generator().manual_seed(seed))})


@pytest.fixture
def store(tokensmith_home) -> Store:
    s = Store.for_home(tokensmith_home)
    s.put(emb("cat", seed=1))
    s.put(emb("dog", seed=2))
    return s


def open_library(**query) -> AppTest:
    return open_page("views/library.py", **query)


def upload(at: AppTest, files: list[tuple[str, bytes]], *, replace: bool = False) -> AppTest:
    at.file_uploader(key="lib_import_files").set_value([(n, d, "application/octet-stream") for n, d in files])
    at.run()
    if replace:
        at.toggle(key="lib_import_overwrite").set_value(True).run()
    at.button(key="lib_import").click().run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> str:
    return "\n".join(seen(e.value) for e in elements)


# --- import by upload ---


def test_two_uploads_of_the_same_file_name_are_both_imported(tokensmith_home):
    """Every diffusers concept download is called learned_embeds.safetensors."""
    at = upload(
        open_library(),
        [
            ("learned_embeds.safetensors", diffusers_file("<cat-toy>", seed=1)),
            ("learned_embeds.safetensors", diffusers_file("<dog-toy>", seed=2)),
        ],
    )
    assert not at.error, texts(at.error)
    assert Store.for_home(tokensmith_home).names() == ["cat-toy", "dog-toy"]
    assert "Imported <cat-toy>, <dog-toy>" in seen(at.success[0].value)


def test_uploads_holding_one_name_are_refused_naming_the_files_and_nothing_is_stored(tokensmith_home):
    """The rule of `tokensmith import`, checked before anything is stored; Replace does not lift it."""
    at = upload(
        open_library(),
        [
            ("cat.safetensors", save({"emb_params": torch.zeros(2, 8)})),
            ("cat.pt", save({"emb_params": torch.ones(2, 8)})),
            ("bird.safetensors", save({"emb_params": torch.ones(1, 8)})),
        ],
        replace=True,
    )
    [error] = at.error
    assert "2 files hold an embedding named <cat>" in seen(error.value)
    assert "cat.safetensors, cat.pt" in seen(error.value) and "Nothing was imported" in seen(error.value)
    assert Store.for_home(tokensmith_home).names() == []


def test_names_that_differ_only_in_letter_case_clash_too():
    found = [("Cat.pt", emb("Cat")), ("cat.safetensors", emb("cat", seed=1)), ("dog.pt", emb("dog"))]
    [clash] = embedding_uploads.name_clashes(found)
    assert clash.startswith("2 files hold an embedding named <Cat> / <cat> (letter case aside")
    assert "Cat.pt (<Cat>), cat.safetensors (<cat>). Nothing was imported" in clash


def test_a_preview_png_and_a_dotfile_picked_by_hand_are_imported(tokensmith_home, tmp_path):
    """A folder import skips `*.preview.png` and dotfiles; files the user picked one by one are read."""
    export(emb("bad-hands", n=2, seed=3), "a1111-png", tmp_path / "bh.png")
    export(emb("hidden", seed=4), "a1111-pt", tmp_path / "hidden.pt")
    at = upload(
        open_library(),
        [
            ("bh.preview.png", (tmp_path / "bh.png").read_bytes()),
            (".hidden.pt", (tmp_path / "hidden.pt").read_bytes()),
        ],
    )
    assert not at.error, texts(at.error)
    assert Store.for_home(tokensmith_home).names() == ["bad-hands", "hidden"]


def test_an_unreadable_upload_is_named_once_without_the_temporary_folder(tokensmith_home, tmp_path):
    export(emb("green", seed=5), "a1111-pt", tmp_path / "green.pt")
    at = upload(
        open_library(),
        [("junk.safetensors", b"not an embedding"), ("green.pt", (tmp_path / "green.pt").read_bytes())],
    )
    [error] = at.error
    assert (
        seen(error.value).startswith("junk.safetensors: ")
        and seen(error.value).count("junk.safetensors") == 1
    )
    assert "tokensmith-import" not in seen(error.value) and "/" not in seen(error.value)
    assert "Imported <green>" in seen(at.success[0].value)


def test_an_sdxl_pair_uploaded_together_is_one_embedding(tokensmith_home):
    at = upload(
        open_library(),
        [
            ("learned_embeds.safetensors", diffusers_file("<xl>", 768)),
            ("learned_embeds_2.safetensors", diffusers_file("<xl>", 1280)),
        ],
    )
    assert not at.error and not at.warning, texts(at.error) + texts(at.warning)
    xl = Store.for_home(tokensmith_home).get("xl")
    assert xl.widths == {"clip_l": 768, "clip_g": 1280}
    assert xl.meta["source_file"] == "learned_embeds.safetensors + learned_embeds_2.safetensors"


def test_a_lone_half_of_an_sdxl_pair_is_not_stored_and_says_to_upload_both_halves(tokensmith_home):
    """Stored, it would take the SDXL embedding's name, and uploading the pair afterwards is refused."""
    at = upload(open_library(), [("learned_embeds_2.safetensors", diffusers_file("<xl>", 1280))])
    assert not at.success and not at.warning
    [error] = at.error
    assert seen(error.value).startswith("learned_embeds_2.safetensors: not imported: this is the clip_g")
    assert "upload it together with learned_embeds.safetensors" in seen(error.value)
    assert "import their folder" not in seen(error.value)
    assert Store.for_home(tokensmith_home).names() == []


def test_an_sdxl_pair_uploaded_with_other_diffusers_files_is_still_one_embedding(tokensmith_home):
    """Every diffusers download is learned_embeds.safetensors: the half of the pair is the one whose token
    its learned_embeds_2 holds, and the other file is imported on its own."""
    at = upload(
        open_library(),
        [
            ("learned_embeds.safetensors", diffusers_file("<cat-toy>", 768, seed=1)),
            ("learned_embeds.safetensors", diffusers_file("<xl>", 768)),
            ("learned_embeds_2.safetensors", diffusers_file("<xl>", 1280)),
        ],
    )
    assert not at.error and not at.warning, texts(at.error) + texts(at.warning)
    store = Store.for_home(tokensmith_home)
    assert store.names() == ["cat-toy", "xl"]
    assert store.get("xl").widths == {"clip_l": 768, "clip_g": 1280}
    assert store.get("cat-toy").widths == {"emb_params": 768}


def test_sdxl_halves_that_cannot_be_matched_are_named_once_and_not_stored(tokensmith_home):
    at = upload(
        open_library(),
        [
            ("learned_embeds.safetensors", diffusers_file("<xl>", 768, seed=1)),
            ("learned_embeds.safetensors", diffusers_file("<xl>", 768, seed=2)),
            ("learned_embeds_2.safetensors", diffusers_file("<xl>", 1280)),
            ("cat.safetensors", diffusers_file("<cat-toy>", 768, seed=3)),
        ],
    )
    [error] = at.error
    assert seen(error.value).startswith(  # equal names told apart by their place in the list (and size)
        "learned_embeds.safetensors (1st upload, 3.1 KB), learned_embeds.safetensors (2nd upload, 3.1 KB), "
    )
    assert "learned_embeds_2.safetensors: not imported" in seen(error.value)
    assert seen(error.value).endswith(
        "upload an SDXL pair (learned_embeds + learned_embeds_2) on its own, apart from other diffusers files"
    )
    assert not at.warning and "together with" not in seen(error.value)
    assert Store.for_home(tokensmith_home).names() == ["cat-toy"]


def test_uploads_of_one_file_name_that_clash_are_told_apart_by_place_and_size(tokensmith_home):
    """A browser sends no folder: data/c/redtok.safetensors and data/d/redtok.safetensors look alike."""
    small = save({"emb_params": torch.zeros(1, 8)})
    large = save({"emb_params": torch.ones(2, 8)})
    at = upload(open_library(), [("redtok.safetensors", small), ("redtok.safetensors", large)])
    [error] = at.error
    assert (
        f"redtok.safetensors (1st upload, {len(small)} B), redtok.safetensors (2nd upload, {len(large)} B)"
        in seen(error.value)
    )


def test_upload_labels_name_equal_file_names_by_place_and_size():
    files = [("a.pt", b"x" * 3), ("b/a.pt", b"x" * 1500), ("c.pt", b""), *[("a.pt", b"")] * 10]
    labels = embedding_uploads.upload_labels(files)
    assert labels[:3] == ["a.pt (1st upload, 3 B)", "a.pt (2nd upload, 1.5 KB)", "c.pt"]
    assert labels[11:] == ["a.pt (12th upload, 0 B)", "a.pt (13th upload, 0 B)"]


def test_the_same_file_uploaded_twice_is_imported_once(tokensmith_home):
    data = diffusers_file("<cat-toy>")
    at = upload(open_library(), [("a.safetensors", data), ("a.safetensors", data)])
    assert not at.error, texts(at.error)
    assert Store.for_home(tokensmith_home).names() == ["cat-toy"]


def test_an_upload_that_differs_from_a_stored_name_only_in_case_is_refused_in_studio_words(store, tmp_path):
    at = upload(open_library(), [("Cat.safetensors", save({"emb_params": torch.ones(1, 8)}))], replace=True)
    [error] = at.error
    assert seen(error.value) == (
        "Cat.safetensors: <Cat> differs from the stored <cat> only in letter case, and prompts read them as "
        "one token; rename or delete <cat> first"
    )
    assert store.names() == ["cat", "dog"]


# --- a listed file that does not load ---


def test_a_file_copied_in_under_an_invalid_name_is_named_with_ways_out_and_the_page_stays(store):
    """The A1111 habit: 'EasyNegative (1).safetensors' beside the original, even open in the URL."""
    shutil.copy(store.path("cat"), store.root / "cat (1).safetensors")
    at = open_library(emb="cat (1)")
    assert not at.error, texts(at.error)
    assert [e.label for e in at.expander] == EXPANDERS
    [warning] = at.warning
    assert (
        "cat (1).safetensors" in seen(warning.value)
        and "the Library can rename it to <cat-1> or move it to the trash" in seen(warning.value)
        and "`tokensmith" not in seen(warning.value)
    )
    at.button(key="lib_rename_stray_cat (1)").click().run()
    assert not at.error and not at.warning and store.names() == ["cat", "cat-1", "dog"]


def test_a_listed_file_that_does_not_load_offers_close_and_the_page_stays(store):
    data = bytearray(store.path("cat").read_bytes())
    data[-1] ^= 0xFF
    store.path("cat").write_bytes(bytes(data))
    at = open_library(emb="cat")
    assert "<cat> cannot be opened" in seen(at.error[0].value)
    assert [e.label for e in at.expander] == EXPANDERS
    at.button(key="lib_close").click().run()
    assert "emb" not in at.query_params and not at.error
    assert [e.label for e in at.expander] == EXPANDERS


def test_a_stray_file_is_offered_a_free_name_and_its_warning_says_each_way_out_once(store):
    """'cat (1)' beside a stored <cat-1> (a copy renamed before): <cat-1> is taken, <cat-1-2> is free."""
    store.put(emb("cat-1", seed=7))
    shutil.copy(store.path("cat"), store.root / "cat (1).safetensors")
    at = open_library()
    [warning] = at.warning
    assert seen(warning.value).endswith("; the Library can rename it to <cat-1-2> or move it to the trash")
    assert "good copy" not in seen(warning.value) and seen(warning.value).count("trash") == 1
    at.button(key="lib_rename_stray_cat (1)").click().run()
    assert not at.error and not at.warning and store.names() == ["cat", "cat-1", "cat-1-2", "dog"]


def test_a_refused_stray_rename_keeps_move_to_the_trash_and_says_what_to_do(store, monkeypatch):
    """The suggested name was taken between drawing the button and pressing it (by the CLI, say)."""
    shutil.copy(store.path("cat"), store.root / "cat (1).safetensors")
    store.put(emb("cat-1", seed=7))
    monkeypatch.setattr(context, "free_name", lambda store, stem: "cat-1")  # as the page was drawn
    at = open_library()
    at.button(key="lib_rename_stray_cat (1)").click().run()
    [error] = at.error
    assert seen(error.value) == (
        "cannot rename cat (1).safetensors to <cat-1>: <cat-1> already exists: delete <cat-1> first, or move "
        "this file to the trash"
    )
    at.button(key="lib_trash_broken_cat (1)").click().run()
    assert not at.error and not (store.root / "cat (1).safetensors").exists()


def test_a_broken_stored_file_is_named_once_without_its_folder(store):
    (store.root / "broken.safetensors").write_bytes(b"\x00garbage")
    at = open_library()
    [warning] = at.warning
    assert seen(warning.value).startswith("skipped `broken.safetensors`: ")
    assert str(store.root) not in seen(warning.value) and "on the Library page" not in seen(warning.value)


def test_a_corrupted_stored_file_can_be_moved_to_the_trash_from_its_panel(store):
    data = bytearray(store.path("cat").read_bytes())
    data[-1] ^= 0xFF  # a flipped bit in the tensor data: the header still reads, the sha256 does not match
    store.path("cat").write_bytes(bytes(data))
    at = open_library(emb="cat")
    assert "<cat> cannot be opened" in seen(at.error[0].value)
    assert [e.label for e in at.expander] == EXPANDERS  # the error's advice (re-import) is drawn
    assert "re-import it on the Library page with “Replace stored embeddings of the same name” on" in (
        seen(at.error[0].value)
    )
    assert "restore it from trash" not in seen(at.error[0].value)  # the trash holds no older copy
    at.button(key="lib_trash_unloadable").click().run()
    assert not at.error and store.names() == ["dog"] and store.trashed() == ["cat"]
    assert "emb" not in at.query_params


# --- the studio's words ---


def test_a_rename_onto_a_case_twin_shows_no_cli_command(store):
    at = open_library(emb="cat")
    [field] = [box for box in at.text_input if box.label == "New name"]
    field.set_value("Dog")
    at.button(key="lib_rename").click().run()
    assert "differs from 'Dog' only in letter case" in seen(at.error[0].value)
    assert seen(at.error[0].value).endswith("choose another name") and "tokensmith" not in seen(
        at.error[0].value
    )


def test_a_restore_blocked_by_a_stored_name_says_what_to_do_in_the_studio(store):
    store.delete("cat")
    store.put(emb("cat", seed=9))
    at = open_library()
    at.button(key="restore_cat").click().run()
    assert "rename or delete the stored <cat> first (open it in the Library)" in seen(at.error[0].value)
    assert "tokensmith" not in seen(at.error[0].value)
    store.delete("cat")
    store.put(emb("CAT", seed=9))
    at.run()
    at.button(key="restore_cat").click().run()
    assert seen(at.error[0].value) == (
        "cannot restore <cat>: the stored <CAT> differs from it only in letter case, and prompts read them "
        "as one token; rename or delete <CAT> first (open it in the Library)"
    )


def test_studio_text_reads_python_reprs_and_cli_advice_as_words():
    assert (
        context.studio_text(
            "embedding 'x' (SDXL keys ['clip_g', 'clip_l']) doesn't fit this model (SD 1.x, encoders "
            "['emb_params']): use --partial",
            fields={"--partial": "the Partial fit box"},
        )
        == "embedding 'x' (SDXL keys clip_g, clip_l) doesn't fit this model (SD 1.x, encoders emb_params): "
        "use the Partial fit box"
    )
    assert context.studio_text("widths {'clip_l': 768, 'clip_g': 1280}") == "widths clip_l 768, clip_g 1280"
    assert (
        context.studio_text("choose another name (or `tokensmith rename dog Dog`)") == "choose another name"
    )
    assert "`tokensmith" not in context.studio_text(
        "x.safetensors: keys ['<cat>'] are not the canonical layout (emb_params, or clip_l + clip_g); use "
        "`tokensmith import` to convert other layouts"
    )


def test_text_a_message_quotes_is_not_rewritten():
    """A prompt quoted in an error stays as written, so its "character 25" still points into it."""
    from studio.generation.prompt import PromptError, parse

    with pytest.raises(PromptError) as raised:
        parse("a ['red', 'blue'] ball ((")
    assert "\"a ['red', 'blue'] ball (\"" in str(raised.value)
    assert context.error_words(raised.value) == str(raised.value)
    drawn = context.error_text(raised.value)  # as Markdown: its brackets escaped, so it reads the same
    assert drawn.replace("\\[", "[").replace("\\]", "]") == str(raised.value)
    assert context.studio_text("has ['red', 'blue'] and {'a': 1}") == "has ['red', 'blue'] and {'a': 1}"


def test_a_file_stored_under_a_name_with_an_apostrophe_gets_the_librarys_ways_out(store):
    """shlex quotes "Bob's cat" as 'Bob'"'"'s cat': the studio's words come from the error's facts, not from
    reading its shell command back."""
    shutil.copy(store.path("cat"), store.root / "Bob's cat.safetensors")
    with pytest.raises(StoreError) as raised:
        store.get("Bob's cat")
    text = context.error_text(raised.value)
    assert text.endswith("; the Library can rename it to <Bob-s-cat> or move it to the trash")
    assert text.startswith('invalid embedding name "Bob\'s cat"') and "tokensmith" not in text
    at = open_library()
    [warning] = at.warning
    assert "the Library can rename it to <Bob-s-cat> or move it to the trash" in seen(warning.value)
    assert "tokensmith" not in seen(warning.value)
    at.button(key="lib_rename_stray_Bob's cat").click().run()
    assert not at.error and not at.warning and store.names() == ["Bob-s-cat", "cat", "dog"]


def test_the_hint_for_another_models_embedding_names_the_sidebar_not_a_flag():
    text = "pass --model with an SD 1.x model (a diffusers folder, a hub id or a .safetensors checkpoint)"
    assert context.studio_text(text).startswith("set the sidebar's Model to an SD 1.x model (")
