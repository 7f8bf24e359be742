"""The partial fit, opt-in: --partial puts an SD 1.x embedding into SDXL's clip_l (clip_g gets zeros) or an
SDXL embedding's clip_l half into SD 1.x; the image records it and `replay` repeats it; without the flag
the refusal (and the doctor) name the flag."""

import numpy as np
import pytest
import torch
from clirun import pixels, run

from embeddings import Embedding, Store
from studio.generation import GenerateRequest, Session, replay, save_png
from trainers.models import LoadedModel
from trainers.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def xl_model():
    return LoadedModel(tiny_pipeline("sdxl"), "sdxl", "tiny-xl")


@pytest.fixture
def store(tokensmith_home):
    """<sd1cat>: one vector of width 32 (the tiny SDXL's clip_l width); <xlcat>: clip_l 32 + clip_g 48."""
    g = torch.Generator().manual_seed(5)
    store = Store.for_home(tokensmith_home)
    store.put(Embedding("sd1cat", {"emb_params": torch.randn(1, 32, generator=g)}))
    store.put(Embedding("xlcat", {"clip_l": torch.randn(1, 32, generator=g), "clip_g": torch.randn(1, 48)}))
    return store


def request(prompt):
    return GenerateRequest(prompt, steps=2, seed=1)


def test_without_the_flag_the_refusal_names_it(xl_model, store):
    with pytest.raises(ValueError, match=r"use --partial to put it in clip_l only"):
        Session(xl_model).generate(request("a <sd1cat>"), store=store)


def test_partial_generate_records_it_and_replay_repeats_it(xl_model, store, tmp_path):
    session = Session(xl_model)
    session.encoder.partial = True
    [result] = session.generate(request("a <sd1cat> and <xlcat>"), store=store)
    assert result.provenance["partial"] == ["sd1cat"]  # <xlcat> fits fully: not listed
    path = save_png(result, tmp_path / "p.png")
    fresh = Session(xl_model)  # not asked for --partial: the provenance asks
    again = replay(path, store=store, session=fresh)
    assert np.array_equal(np.asarray(again.image), pixels(path))
    assert again.provenance["partial"] == ["sd1cat"]
    assert fresh.encoder.partial is False  # the session is left as it was found


def test_a_partial_install_is_not_kept_for_a_later_request_without_the_flag(xl_model, store):
    session = Session(xl_model)
    session.encoder.partial = True
    session.generate(request("a <sd1cat>"), store=store)
    session.encoder.partial = False
    with pytest.raises(ValueError, match="--partial"):
        session.generate(request("a <sd1cat>"), store=store)


def test_an_image_made_without_the_flag_records_no_partial(xl_model, store):
    session = Session(xl_model)
    session.encoder.partial = True  # asked, but nothing needed it
    [result] = session.generate(request("a <xlcat>"), store=store)
    assert "partial" not in result.provenance


def test_an_sdxl_embeddings_clip_l_half_goes_into_sd1_with_the_flag(store):
    session = Session(LoadedModel(tiny_pipeline("sd1"), "sd1", "tiny-sd1"))
    with pytest.raises(ValueError, match="use --partial to use its clip_l half only"):
        session.generate(request("a <xlcat>"), store=store)
    session.encoder.partial = True
    [result] = session.generate(request("a <xlcat>"), store=store)
    assert result.provenance["partial"] == ["xlcat"]


def test_cli_generate_partial_replay_doctor_and_nearest(capsys, store, tmp_path):
    folder = tmp_path / "xl"
    tiny_pipeline("sdxl").save_pretrained(folder)
    code, _out, err = run(capsys, "generate", "a <sd1cat>", "--model", folder, "--steps", 2, "--out", "x.png")
    assert code == 1 and "use --partial to put it in clip_l only" in err
    out_png = tmp_path / "p.png"
    code, _out, err = run(
        capsys, "generate", "a <sd1cat>", "--model", folder, "--steps", 2, "--partial", "--out", out_png
    )
    assert code == 0, err
    code, out, err = run(capsys, "replay", out_png, "--out", tmp_path / "again.png")
    assert code == 0 and "pixel-identical" in out, err
    code, out, _err = run(capsys, "doctor", "sd1cat", "--model", folder)
    assert code == 0 and "partial option: use --partial to put it in SDXL's clip_l encoder only" in out
    code, out, _err = run(capsys, "nearest", "sd1cat", "--model", folder, "-k", 2)
    assert code == 0 and "clip_g would get zero vectors, so it is not shown" in out
