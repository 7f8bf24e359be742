"""How `tokensmith nearest` and the studio's Inspect page show a vector's neighbours: every label printable
and unique (a word as itself, a piece of one marked 'c…', a control byte or half a UTF-8 character
escaped, '#id' where two would still look alike), equal cosines in token id order, rows with no token left
out, and what `nearest --json` carries (the partial-fit note, each key's source half, the tokens). Also:
`doctor ''`."""

import json
from pathlib import Path

import pytest
import torch
from streamlit.testing.v1 import AppTest

from embeddings import Embedding, Store
from embeddings.inject import fitting_halves
from embeddings.maths import nearest_tokens, norm_report
from studio.app import context
from studio.cli import EXIT_OK, EXIT_USAGE, main
from trainers.models import LoadedModel
from trainers.tiny import TINY_WORDS, tiny_pipeline, tiny_tokenizer

APP = str(Path(__file__).resolve().parent.parent / "studio" / "app" / "main.py")
# CLIP's byte-level symbols: 'ć' is the byte 7 (BEL), 'È' the byte 0xc8 (the first half of 'ȁ'), 'Ġ' a space
PIECES = ["c", "c</w>", "ć", "ć</w>", "È", "Ġ</w>"]
LABELS = ["c…", "c", "\\x07…", "\\x07", "\\xc8…", "\\x20"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def text_model(tokenizer, rows: int | None = None):
    """A tiny CLIP text encoder over `tokenizer` (width 32) with `rows` input embedding rows."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=rows or len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
    )
    return CLIPTextModel(config)


def rows_of(text_encoder, ids: list[int]) -> torch.Tensor:
    return text_encoder.get_input_embeddings().weight[ids].detach().clone()  # (len(ids), 32)


@pytest.fixture(scope="module")
def sd1():
    return LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1")


@pytest.fixture
def with_model(monkeypatch):
    """Point the CLI's and the studio's model loading at a given LoadedModel."""
    import studio.cli_vectors

    def use(model: LoadedModel) -> LoadedModel:
        monkeypatch.setattr(studio.cli_vectors, "load_model_noting", lambda spec, config: model)
        monkeypatch.setattr(context, "loaded_model", lambda spec: model)
        return model

    return use


# --- labels ---


def test_a_word_a_piece_of_one_and_bytes_get_distinct_printable_labels():
    tok = tiny_tokenizer()
    te = text_model(tok)
    ids = tok.convert_tokens_to_ids(PIECES)
    rows = nearest_tokens(rows_of(te, ids), tok, te, k=1)
    assert [row[0].token_id for row in rows] == ids
    assert [row[0].label for row in rows] == LABELS
    # the token string stays the decoded text (what --json always carried), control byte and all
    assert [row[0].token for row in rows[:4]] == ["c", "c", "\x07", "\x07"]


def test_labels_that_would_still_look_alike_get_their_token_ids():
    tok = tiny_tokenizer([*TINY_WORDS, "\\x07"])  # a word spelled backslash, x, 0, 7: one token
    te = text_model(tok)
    ids = tok.convert_tokens_to_ids(["\\x07</w>", "ć</w>"])  # that word; the byte 7 at a word's end
    rows = nearest_tokens(rows_of(te, ids), tok, te, k=1)
    assert [row[0].label for row in rows] == [f"\\x07#{ids[0]}", f"\\x07#{ids[1]}"]


def test_equal_cosines_come_out_in_token_id_order():
    tok = tiny_tokenizer()
    te = text_model(tok)
    ids = tok.convert_tokens_to_ids([w + "</w>" for w in ("cat", "dog", "red", "blue", "star", "ring")])
    weight = te.get_input_embeddings().weight
    with torch.no_grad():
        weight[ids[1:]] = weight[ids[0]].clone()  # six tokens with one row: six cosines of exactly 1
    (row,) = nearest_tokens(rows_of(te, ids[:1]) * 3, tok, te, k=6)
    assert [n.token_id for n in row] == sorted(ids)
    assert {n.cosine for n in row} == {1.0}


def test_rows_the_tokenizer_has_no_token_for_are_not_searched_or_counted():
    """An encoder resized past its tokenizer: no prompt reaches the extra rows, so they are no neighbours."""
    tok = tiny_tokenizer()
    te = text_model(tok)
    padded = text_model(tok, rows=len(tok) + 8)
    cat = tok.convert_tokens_to_ids("cat</w>")
    with torch.no_grad():
        padded.get_input_embeddings().weight[: len(tok)] = te.get_input_embeddings().weight
        padded.get_input_embeddings().weight[len(tok) :] = 100 * te.get_input_embeddings().weight[cat]
    vector = rows_of(te, [cat])
    (row,) = nearest_tokens(vector, tok, padded, k=3)
    assert [n.token_id < len(tok) for n in row] == [True] * 3 and row[0].label == "cat"
    assert norm_report(vector, tok, padded)["vocab"] == norm_report(vector, tok, te)["vocab"]


# --- the CLI ---


def test_nearest_prints_the_labels_and_says_the_score_is_a_cosine(capsys, with_model, tokensmith_home):
    model = with_model(LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1"))
    tok, te = model.encoders[0][1], model.encoders[0][2]
    Store.for_home(tokensmith_home).put(
        Embedding("bytes", {"emb_params": rows_of(te, tok.convert_tokens_to_ids(PIECES))})
    )
    code, out, _ = run(capsys, "nearest", "bytes", "-k", "1")
    lines = out.splitlines()
    assert code == EXIT_OK and lines[0].endswith("), nearest tokens by cosine:")
    assert [line.split(": ", 1)[1] for line in lines[1:]] == [f"{label} 1.000" for label in LABELS]
    assert all(c.isprintable() for line in lines for c in line)  # no BEL, ESC or U+FFFD reaches a terminal


def test_nearest_json_keeps_its_keys_and_adds_labels_tokens_source_and_no_note(
    capsys, with_model, sd1, tokensmith_home
):
    with_model(sd1)
    tok, te = sd1.encoders[0][1], sd1.encoders[0][2]
    ids = tok.convert_tokens_to_ids(["c", "c</w>"])
    Store.for_home(tokensmith_home).put(Embedding("cc", {"emb_params": rows_of(te, ids)}))
    code, out, _ = run(capsys, "nearest", "cc", "-k", "1", "--json")
    found = json.loads(out)
    assert code == EXIT_OK and found["note"] is None and sorted(found) == ["emb_params", "note"]
    half = found["emb_params"]
    assert half["source"] == "emb_params" and half["tokens"] == ["<cc>", "<cc>_1"]
    assert [row[0] for row in half["neighbours"]] == [
        {"token": "c", "token_id": ids[0], "cosine": 1.0, "label": "c…"},
        {"token": "c", "token_id": ids[1], "cosine": 1.0, "label": "c"},
    ]
    assert set(half["norms"]) == {"norms", "vocab", "ratio_to_vocab_mean"}


def test_nearest_json_of_a_partial_fit_has_the_note_and_the_half_it_shows(
    capsys, with_model, sd1, tokensmith_home
):
    """An SDXL file on SD 1.x: the model's key is emb_params, the vectors are the file's clip_l."""
    with_model(sd1)
    xl = Embedding("xl", {"clip_l": torch.randn(2, 32), "clip_g": torch.randn(2, 48)})
    Store.for_home(tokensmith_home).put(xl)
    code, out, _ = run(capsys, "nearest", "xl", "-k", "2", "--json")
    found = json.loads(out)
    _, note = fitting_halves(xl, sd1.encoders, model_family=sd1.family)
    assert code == EXIT_OK and found["note"] == note and "only its clip_l half" in note
    assert found["emb_params"]["source"] == "clip_l" and found["emb_params"]["tokens"] == ["<xl>", "<xl>_1"]
    code, out, _ = run(capsys, "nearest", "xl", "-k", "2")
    assert out.splitlines()[-1] == f"note: {note}"  # the text says the same


def test_nearest_json_of_an_sd1_embedding_on_sdxl_names_its_source_key(capsys, with_model, tokensmith_home):
    with_model(LoadedModel(tiny_pipeline("sdxl"), "sdxl", "tiny-sdxl"))
    Store.for_home(tokensmith_home).put(Embedding("sd1ish", {"emb_params": torch.randn(1, 32)}))
    found = json.loads(run(capsys, "nearest", "sd1ish", "-k", "1", "--json")[1])
    assert sorted(found) == ["clip_l", "note"] and found["clip_l"]["source"] == "emb_params"
    assert found["note"].startswith("<sd1ish> fits this model only partly: clip_g would get zero vectors")


def test_doctor_with_an_empty_path_is_a_usage_error(capsys, tmp_path, monkeypatch):
    """Path('') is '.': the folder it runs in (and all below it) was doctored."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        main(["doctor", ""])
    assert info.value.code == EXIT_USAGE
    assert "argument PATH: is empty; give a file, a folder ('.' for this one)" in capsys.readouterr().err


# --- the studio ---


def test_inspect_shows_the_labels_nearest_prints(with_model, sd1, tokensmith_home):
    with_model(sd1)
    tok, te = sd1.encoders[0][1], sd1.encoders[0][2]
    ids = tok.convert_tokens_to_ids(["c", "c</w>", "ć</w>"])
    Store.for_home(tokensmith_home).put(Embedding("cc", {"emb_params": rows_of(te, ids)}))
    at = AppTest.from_file(APP, default_timeout=90)
    at.run()
    at.switch_page("views/inspect.py").run()
    assert not at.exception and not at.error, at.exception or [e.value for e in at.error]
    table = at.dataframe[0].value
    assert [table[t].iloc[0] for t in ("<cc>", "<cc>_1", "<cc>_2")] == [
        "c… (1.000)",
        "c (1.000)",
        "\\x07 (1.000)",
    ]
