"""One rule for a blend's operands (embeddings/blendparts.py), followed by `tokensmith blend` and the Blend
page alike: stored names found as prompts find them, bare words that split into pieces refused (quoted,
blended on purpose), embeddings made for another model refused by their own name. Both doors are driven on
the same tiny model and store, and must agree."""

from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store
from embeddings.blend_expr import Operand, parse_blend
from embeddings.blendparts import (
    BlendOperandError,
    SplitWordError,
    bare_words,
    resolve_operands,
    split_word_text,
    word_tokens,
)
from studio.app import blending
from studio.cli import EXIT_ERROR, EXIT_OK, main

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")


@pytest.fixture
def model(page_session, monkeypatch):
    """The tiny SD1-style model, as both doors load it (the CLI's --model and the page's sidebar)."""
    import studio.cli_vectors

    monkeypatch.setattr(studio.cli_vectors, "load_model_noting", lambda spec, config: page_session.model)
    return page_session.model


@pytest.fixture
def store(tokensmith_home, model) -> Store:
    s = Store.for_home(tokensmith_home)
    width = model.widths["emb_params"]
    s.put(Embedding("Cat", {"emb_params": torch.randn(1, width, generator=torch.Generator().manual_seed(0))}))
    s.put(Embedding("wide", {"emb_params": torch.zeros(1, 1024)}, {"family": "sd2"}))
    return s


def cli_blend(capsys, expr: str, name: str = "mix") -> tuple[int, str]:
    code = main(["blend", expr, "--name", name, "--model", "tiny"])
    return code, capsys.readouterr().err


def page_blend(rows, store, model):
    """The page's resolution of (Operand, weight) rows: its parts, or the error text it shows."""
    try:
        return blending.resolve([(Operand(kind, text), w) for kind, text, w in rows], store, model)
    except ValueError as exc:
        return str(exc)


# --- a word the tokenizer splits into pieces ---


def test_a_bare_word_split_into_pieces_is_refused_by_the_cli_and_the_page_alike(capsys, store, model):
    """'zebra' is z, e, b, r, a to the tiny model: the page used to blend those fragments silently."""
    zebra = word_tokens("zebra", model.encoders[0][1])
    assert zebra.pieces == ("z", "e", "b", "r", "a") and not zebra.whole
    code, err = cli_blend(capsys, "0.5*zebra + 0.5*red")
    assert code == EXIT_ERROR
    assert err.splitlines()[-1] == f"tokensmith blend: error: {split_word_text(zebra, 'zebra')}"
    shown = page_blend([("word", "zebra", 0.5), ("word", "red", 0.5)], store, model)
    assert shown == split_word_text(zebra, "zebra", quote=blending.PAGE_QUOTE)
    assert "type it in its field in quotes ('zebra') to blend its pieces on purpose" in shown
    assert not store.exists("mix")


def test_a_quoted_word_is_blended_on_purpose_by_both_doors(capsys, store, model):
    code, err = cli_blend(capsys, "0.5*'zebra' + 0.5*red")
    assert code == EXIT_OK and "'zebra' -> z, e, b, r, a (5 tokens)" in err
    parts = page_blend([("word", "'zebra'", 0.5), ("word", "red", 0.5)], store, model)
    assert [(emb.name, emb.num_vectors, w) for emb, w in parts] == [("zebra", 5, 0.5), ("red", 1, 0.5)]
    made = blending.make_blend(parts, "mix", method="lerp", keep_norm=False, model=model)
    assert torch.equal(made.vectors["emb_params"], store.get("mix").vectors["emb_params"])  # (5, 32) each


def test_an_unquoted_phrase_on_the_page_has_each_word_checked_and_a_quoted_one_is_taken_whole(store, model):
    """The page's field is a word or a phrase: unquoted, every word must be one token (as each bare word of
    `tokensmith blend`); in quotes it is the CLI's quoted phrase, all its tokens."""
    shown = page_blend([("word", "red zebra", 0.5), ("embedding", "Cat", 0.5)], store, model)
    assert shown.startswith("'zebra' is not a word of this model's vocabulary: it splits into 5 pieces")
    assert "type it in its field in quotes ('red zebra')" in shown
    parts = page_blend([("word", "'red zebra'", 0.5), ("embedding", "Cat", 0.5)], store, model)
    assert [(emb.name, emb.num_vectors) for emb, _ in parts] == [("red zebra", 6), ("Cat", 1)]
    assert blending.row_label([Operand("word", "'red zebra'"), Operand("word", "red")], [0.5, 0.5]) == (
        "0.5 'red zebra' + 0.5 \"red\""
    )


def test_the_page_shows_the_refusal_under_its_own_words(page_session, store):
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("views/blend.py").run()
    at.radio(key="bl_kind_1").set_value("word").run()
    at.text_input(key="bl_word_1").set_value("zebra").run()
    [error] = at.error
    assert "'zebra' is not a word of this model's vocabulary: it splits into 5 pieces" in error.value
    assert "quote it (" not in error.value and "type it in its field in quotes ('zebra')" in error.value
    assert not at.image  # nothing drawn from letter fragments


# --- stored names ---


def test_a_stored_name_is_found_in_another_letter_case_by_both_doors(capsys, store, model):
    """<cat> finds a stored 'Cat', as a prompt's <cat> does (the page looked the name up exactly)."""
    assert cli_blend(capsys, "0.5*<cat> + 0.5*red")[0] == EXIT_OK
    parts = page_blend([("embedding", "cat", 0.5), ("word", "red", 0.5)], store, model)
    assert parts[0][0].name == "Cat"
    made = blending.make_blend(parts, "mix", method="lerp", keep_norm=False, model=model)
    assert torch.equal(made.vectors["emb_params"], store.get("mix").vectors["emb_params"])


def test_an_embedding_made_for_another_model_is_refused_by_its_name_in_both_doors(capsys, store, model):
    reason = "it has width 1024 but this model's text encoder has width 32 (it was made for another model)"
    code, err = cli_blend(capsys, "0.5*red + 0.5*<wide>")
    assert code == EXIT_ERROR
    assert err.splitlines()[-1].startswith(
        f"tokensmith blend: error: cannot blend operand #2 <wide>: {reason}"
    )
    shown = page_blend([("word", "red", 0.5), ("embedding", "wide", 0.5)], store, model)
    assert shown.startswith(f"cannot blend operand #2 <wide>: {reason}")


def test_a_missing_name_is_named_with_its_operand(capsys, store, model):
    code, err = cli_blend(capsys, "<Cat> + <ghost>")
    assert code == EXIT_ERROR and "cannot blend operand #2 <ghost>: no embedding named 'ghost'" in err


# --- the core, as data ---


def test_resolve_operands_returns_data_and_raises_errors_that_name_the_operand(store, model):
    spec = parse_blend("0.25*<CAT> + 0.75*keyboard")
    parts = resolve_operands(spec, store, model.encoders, bare=bare_words("0.25*<CAT> + 0.75*keyboard"))
    assert [(emb.name, w) for emb, w in parts] == [("Cat", 0.25), ("keyboard", 0.75)]
    with pytest.raises(SplitWordError) as split:
        resolve_operands(parse_blend("zebra"), store, model.encoders, bare={"zebra"})
    assert (split.value.word.text, split.value.operand) == ("zebra", "zebra")
    with pytest.raises(BlendOperandError) as misfit:
        resolve_operands(parse_blend("<Cat> + <wide>"), store, model.encoders)
    assert (misfit.value.index, misfit.value.label) == (2, "<wide>")
    assert resolve_operands(parse_blend("<Cat> + <wide>"), store)  # no model: no width to check against
    with pytest.raises(BlendOperandError, match="a word needs a model's tokenizer"):
        resolve_operands(parse_blend("red"), store)


def test_bare_words_are_the_unquoted_ones():
    assert bare_words("0.5*red + 0.5*'red car' + \"blue\"") == {"red"}
    assert bare_words("slerp(<cat>, keyboard, 0.3)") >= {"keyboard"}
    assert word_tokens("red", _Tokenizer()).line() == "'red' -> red (1 token)"


class _Tokenizer:
    """Just what word_tokens asks of a tokenizer."""

    unk_token_id = 0

    def __call__(self, text, add_special_tokens):
        return type("Encoded", (), {"input_ids": [1]})()

    def convert_ids_to_tokens(self, ids):
        return ["red</w>"]
