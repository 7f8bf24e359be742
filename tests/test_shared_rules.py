"""Rules the CLI and the studio share, written once in the core: the half of a partly fitting embedding that
`nearest` and Inspect show, the label of a blend of words, the import's duplicates and name clashes, an init
written `<name>`, and the facts of a file stored under a name the rules refuse."""

import shutil

import pytest
import torch

from embeddings import Embedding, Store, save_canonical
from embeddings.errors import StrayNameError
from embeddings.importing import distinct_sources, name_clashes
from embeddings.inject import InstallError, fitting_halves
from embeddings.maths import blend, labelled_with_vocabulary, word_operand
from embeddings.names import name_refusal, stray_name_error
from studio.cli import EXIT_ERROR, EXIT_OK, main
from trainers.modelprep import init_embedding_name
from trainers.models import LoadedModel
from trainers.tiny import tiny_pipeline


def vec(n, width, seed=0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed))


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sd1():
    return LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1")


@pytest.fixture(scope="module")
def sdxl():
    return LoadedModel(tiny_pipeline("sdxl"), "sdxl", "tiny-sdxl")


# --- the half of a partly fitting embedding (nearest, Inspect) ---


def test_an_sd1_embedding_on_sdxl_shows_its_clip_l_half_with_a_note(sdxl):
    emb = Embedding("sd1ish", {"emb_params": vec(2, sdxl.widths["clip_l"])})
    shown, note = fitting_halves(emb, sdxl.encoders, model_family=sdxl.family)
    assert [(key, vectors.shape) for (key, _tok, _te), vectors in shown] == [("clip_l", (2, 32))]
    assert note == (
        "<sd1ish> fits this model only partly: clip_g would get zero vectors, so it is not shown (that is "
        "how --partial installs it)"
    )


def test_an_sdxl_embedding_on_sd1_shows_its_clip_l_half_with_a_note(sd1):
    emb = Embedding("xl", {"clip_l": vec(1, 32), "clip_g": vec(1, 48, seed=1)})
    shown, note = fitting_halves(emb, sd1.encoders, model_family=sd1.family)
    assert [key for (key, _tok, _te), _ in shown] == ["emb_params"]
    assert torch.equal(shown[0][1], emb.vectors["clip_l"])
    assert note.endswith("only its clip_l half is used and shown (that is how --partial installs it); this "
                         "model has no encoder for clip_g")  # fmt: skip


def test_an_embedding_that_fits_is_shown_whole_without_a_note_and_one_that_cannot_raises(sd1):
    shown, note = fitting_halves(Embedding("cat", {"emb_params": vec(1, 32)}), sd1.encoders)
    assert note is None and [key for (key, _tok, _te), _ in shown] == ["emb_params"]
    with pytest.raises(InstallError, match="width 768"):
        fitting_halves(Embedding("wide", {"emb_params": vec(1, 768)}), sd1.encoders)


def test_nearest_prints_the_cores_partial_fit_note(capsys, monkeypatch, sdxl, tokensmith_home):
    """The CLI door says what Inspect says (the studio only names its own control for --partial)."""
    import studio.cli_vectors

    monkeypatch.setattr(studio.cli_vectors, "load_model_noting", lambda spec, config: sdxl)
    emb = Embedding("sd1ish", {"emb_params": vec(2, 32)})
    Store.for_home(tokensmith_home).put(emb)
    code, out, _ = run(capsys, "nearest", "sd1ish", "-k", "2")
    _, note = fitting_halves(emb, sdxl.encoders, model_family=sdxl.family)
    assert code == EXIT_OK and out.splitlines()[-1] == f"note: {note}"
    assert out.splitlines()[0].startswith("clip_l (vocabulary norm") and "clip_g (" not in out


# --- the label of a blend of words ---


def test_a_blend_with_a_word_is_labelled_with_the_vocabularys_model_and_one_without_is_not(sd1):
    cat = Embedding("cat", {"emb_params": vec(1, 32)}, {"family": "sd1", "base_model": "runwayml/sd15"})
    parts = [(cat, 0.5), (word_operand("red", sd1.encoders), 0.5)]
    labelled = labelled_with_vocabulary(blend(parts, "catred"), parts, base_model="demo", family="demo")
    assert (labelled.meta["family"], labelled.meta["base_model"]) == ("demo", "demo")
    alone = blend([(cat, 1.0)], "cat2")
    assert labelled_with_vocabulary(alone, [(cat, 1.0)], base_model="demo", family="demo") is alone


# --- an import's duplicates and name clashes ---


def test_the_same_file_twice_or_a_copy_of_it_is_one_source(tmp_path):
    cat = Embedding("cat", {"emb_params": vec(1, 8)})
    first = save_canonical(cat, tmp_path / "a" / "cat.safetensors")
    copy = save_canonical(cat, tmp_path / "b" / "cat.safetensors")
    kitty = cat.with_name("kitty")  # the same vectors under another name: another embedding
    other = save_canonical(kitty, tmp_path / "b" / "kitty.safetensors")
    found = [(first, cat), (tmp_path / "a" / "." / "cat.safetensors", cat), (copy, cat), (other, kitty)]
    assert distinct_sources(found) == [(first, cat), (other, kitty)]


def test_every_name_clash_is_reported_naming_its_files():
    def emb(name, seed):
        return Embedding(name, {"emb_params": vec(1, 8, seed)})

    found = [("a/cat.pt", emb("cat", 1)), ("dog.pt", emb("dog", 2)), ("b/Cat.pt", emb("Cat", 3))]
    found += [("x/dog.pt", emb("dog", 4)), ("bird.pt", emb("bird", 5))]
    assert name_clashes(found) == [
        "2 files hold an embedding named <cat> / <Cat> (letter case aside, one token in a prompt): a/cat.pt "
        "(<cat>), b/Cat.pt (<Cat>)",
        "2 files hold an embedding named <dog> (letter case aside, one token in a prompt): dog.pt, x/dog.pt",
    ]


def test_import_refuses_every_clash_naming_the_files_and_stores_nothing(tmp_path, capsys, tokensmith_home):
    """Before, the CLI named the first clash only ('1 more name(s) clash too'); the studio named each."""
    named = [("cat", 1), ("Cat", 2), ("dog", 3), ("dog", 4)]
    paths = [
        save_canonical(
            Embedding(name, {"emb_params": vec(1, 8, seed)}), tmp_path / str(i) / f"{name}.safetensors"
        )
        for i, (name, seed) in enumerate(named)
    ]
    code, _, err = run(capsys, "import", *paths)
    assert code == EXIT_ERROR
    assert f"named <cat> / <Cat> (letter case aside, one token in a prompt): {paths[0]} (<cat>)" in err
    assert f"named <dog> (letter case aside, one token in a prompt): {paths[2]}, {paths[3]}" in err
    assert "import them one by one with --name, or leave one out" in err
    assert Store.for_home(tokensmith_home).names() == []


# --- an init written <name> ---


@pytest.mark.parametrize(
    ("init", "name"),
    [("<cat>", "cat"), ("  <cat>\n", "cat"), ("cat", None), ("a red cat", None), ("", None)],
)
def test_an_init_names_a_stored_embedding_only_when_written_in_brackets(init, name):
    assert init_embedding_name(init) == name


# --- a file stored under a name the rules refuse ---


def test_a_stray_name_error_carries_the_reason_and_the_valid_name(tokensmith_home):
    error = stray_name_error("Bob's cat")
    assert (error.name, error.valid_name) == ("Bob's cat", "Bob-s-cat")
    assert error.reason == name_refusal("Bob's cat") and error.reason.startswith(
        'invalid embedding name "Bob'
    )
    assert str(error).startswith(error.reason + "; `tokensmith rename 'Bob'\"'\"'s cat' Bob-s-cat`")
    store = Store.for_home(tokensmith_home)
    store.put(Embedding("cat", {"emb_params": vec(1, 8)}))
    shutil.copy(store.path("cat"), store.root / "Bob's cat.safetensors")
    with pytest.raises(StrayNameError) as raised:
        store.get("Bob's cat")
    assert raised.value.valid_name == "Bob-s-cat"
    assert name_refusal("cat") is None and name_refusal("CON").endswith("is a device name on Windows")
