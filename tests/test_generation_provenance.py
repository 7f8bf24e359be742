"""studio/generation/provenance.py and replaying.py: PNG chunks, A1111 parameters, pixel-identical replay,
what blocks it."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from embeddings import Embedding, Store
from embeddings.errors import TokensmithError
from studio.generation import GenerateRequest, ReplayError, Session, read_provenance, replay, save_png
from studio.generation.provenance import A1111_CHUNK, CHUNK, a1111_parameters
from trainers.models import LoadedModel, detect_family
from trainers.tiny import tiny_pipeline


@pytest.fixture(scope="module")
def session():
    pipe = tiny_pipeline("sd1")
    return Session(LoadedModel(pipe=pipe, family=detect_family(pipe), source="tiny-sd1"))


@pytest.fixture
def store(tokensmith_home):
    store = Store.for_home(tokensmith_home)
    store.put(
        Embedding("cat", {"emb_params": torch.randn(2, 32, generator=torch.Generator().manual_seed(0))})
    )
    return store


def _request(**kw):
    base = dict(
        prompt="a puppy (red:1.2) <0.5*<cat> + 0.5*blue>",
        negative="green",
        seed=11,
        steps=4,
        scheduler="euler-a",
        swaps={"puppy": "<cat>"},
        guides=("brightness=0.8,scale=0.2",),
    )
    return GenerateRequest(**(base | kw))


def test_png_carries_json_and_a1111_chunks(session, store, tmp_path):
    [result] = session.generate(_request(), store=store)
    path = save_png(result, tmp_path / "out.png")
    with Image.open(path) as image:
        chunks = dict(image.text)
    prov = json.loads(chunks[CHUNK])
    assert prov == read_provenance(path) == result.provenance
    assert prov["prompt"] == "a puppy (red:1.2) <0.5*<cat> + 0.5*blue>"
    assert prov["prompt_as_run"] == "a <cat> (red:1.2) <0.5*<cat> + 0.5*blue>"
    assert prov["embeddings"] == [{"name": "cat", "sha256": store.get("cat").sha256}]
    assert prov["blends"] == ["<0.5*<cat> + 0.5*blue>"]
    assert prov["swaps"] == {"puppy": "<cat>"} and prov["guides"] == ["brightness=0.8,scale=0.2"]
    assert (prov["model"], prov["family"], prov["scheduler"], prov["steps"], prov["seed"]) == (
        "tiny-sd1",
        "w32",
        "euler-a",
        4,
        11,
    )
    assert (prov["width"], prov["height"], prov["guidance"]) == (16, 16, 7.5)
    assert chunks[A1111_CHUNK].splitlines()[0] == prov["prompt_as_run"]
    assert chunks[A1111_CHUNK].splitlines()[1] == "Negative prompt: green"
    assert "Steps: 4, Sampler: Euler a, CFG scale: 7.5, Seed: 11, Size: 16x16" in chunks[A1111_CHUNK]


def test_a1111_parameters_without_negative_has_two_lines():
    prov = {
        "prompt_as_run": "a cat",
        "negative_as_run": "",
        "steps": 20,
        "scheduler": "dpm",
        "guidance": 4.0,
        "seed": 1,
        "width": 32,
        "height": 32,
        "model": "demo",
        "strength": None,
        "embeddings": [],
        "tokensmith": "0.1.0",
    }
    text = a1111_parameters(prov)
    assert text.splitlines() == [
        "a cat",
        "Steps: 20, Sampler: DPM++ 2M, CFG scale: 4, Seed: 1, Size: 32x32, Model: demo, "
        "Version: tokensmith 0.1.0",
    ]


def test_replay_is_pixel_identical(session, store, tmp_path):
    results = session.generate(_request(num_images=2), store=store)
    path = save_png(results[1], tmp_path / "second.png")  # the second image of a batch replays alone
    again = replay(path, store=store, session=session)
    assert np.array_equal(np.asarray(again.image), np.asarray(Image.open(path).convert("RGB")))
    assert again.provenance == results[1].provenance | {"batch_seed": 12, "batch_index": 0}


@pytest.mark.parametrize("scheduler", ["heun", "pndm"])
def test_an_image_timed_by_model_evaluations_replays_as_it_was_made(session, store, tmp_path, scheduler):
    # images made before prompt editing and every=K guides counted sampling steps were timed by model
    # evaluations, and their provenance has no step_clock: a replay keeps their timing
    request = _request(
        prompt="a [red:blue:0.5] puppy", steps=6, scheduler=scheduler, guides=("color=green,every=2",)
    )
    old = session.generate(replace(request, step_clock="evaluations"), store=store)[0]
    new = session.generate(request, store=store)[0]
    assert not np.array_equal(np.asarray(old.image), np.asarray(new.image))  # the two clocks differ here
    made_before = replace(old, provenance={k: v for k, v in old.provenance.items() if k != "step_clock"})
    path = save_png(made_before, tmp_path / "before.png")
    again = replay(path, store=store, session=session)
    assert np.array_equal(np.asarray(again.image), np.asarray(old.image))
    path = save_png(new, tmp_path / "now.png")
    assert read_provenance(path)["step_clock"] == "steps"
    assert np.array_equal(np.asarray(replay(path, store=store, session=session).image), np.asarray(new.image))


def test_replay_of_img2img_is_pixel_identical(session, tmp_path):
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(init)
    [result] = session.generate(GenerateRequest("a red circle", init_image=init, strength=0.5, steps=6))
    path = save_png(result, tmp_path / "i2i.png")
    again = replay(path, store=None, session=session)
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))
    init.unlink()
    with pytest.raises(ReplayError, match=r"init image .* is not available"):
        replay(path, store=None, session=session, precise=True)


def test_replay_names_a_missing_or_changed_embedding(session, store, tmp_path):
    [result] = session.generate(_request(), store=store)
    path = save_png(result, tmp_path / "out.png")
    store.put(Embedding("cat", {"emb_params": torch.ones(2, 32)}), overwrite=True)
    with pytest.raises(ReplayError, match=r"<cat> in the store has changed since"):
        replay(path, store=store, session=session)
    store.delete("cat")
    with pytest.raises(ReplayError, match=r"<cat> \(sha256 [0-9a-f]{12}\) is not in the store"):
        replay(path, store=store, session=session)


def test_images_without_provenance_are_refused(tmp_path):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(ReplayError, match="no tokensmith provenance"):
        read_provenance(plain)
    (tmp_path / "junk.png").write_bytes(b"not a png")
    with pytest.raises(ReplayError, match="cannot read"):
        read_provenance(tmp_path / "junk.png")


def test_save_png_refuses_other_suffixes_and_leaves_no_file(session, tmp_path):
    [result] = session.generate(GenerateRequest("a circle", steps=4))
    with pytest.raises(TokensmithError, match=r"use a \.png name"):
        save_png(result, tmp_path / "out.jpg")
    assert list(tmp_path.iterdir()) == []


def _reference(path, colour):
    Image.new("RGB", (8, 8), colour).save(path)
    return path


def test_a_match_guide_is_kept_resolved_with_its_pixels_hash(session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _reference(tmp_path / "ref.png", (0, 200, 0))
    [result] = session.generate(GenerateRequest("a circle", steps=2, guides=("match=ref.png,scale=0.3",)))
    prov = result.provenance
    assert prov["guides"] == [f"match={tmp_path / 'ref.png'},scale=0.3"]
    assert prov["guide_files"][0]["path"] == str(tmp_path / "ref.png")
    assert len(prov["guide_files"][0]["sha256"]) == 64


def test_replay_refuses_a_changed_or_missing_match_image(session, tmp_path, monkeypatch):
    first, elsewhere = tmp_path / "first", tmp_path / "elsewhere"
    first.mkdir(), elsewhere.mkdir()
    monkeypatch.chdir(first)
    _reference(first / "ref.png", (0, 200, 0))
    [result] = session.generate(GenerateRequest("a circle", steps=2, guides=("match=ref.png",)))
    path = save_png(result, tmp_path / "made.png")
    monkeypatch.chdir(elsewhere)
    _reference(elsewhere / "ref.png", (200, 0, 0))  # the same relative name, another picture
    assert np.array_equal(np.asarray(replay(path, session=session).image), np.asarray(result.image))
    _reference(first / "ref.png", (0, 0, 200))
    with pytest.raises(ReplayError, match=r"match image .*first/ref.png has changed since"):
        replay(path, session=session, precise=True)
    (first / "ref.png").unlink()
    with pytest.raises(ReplayError, match=r"match image .*first/ref.png is missing"):
        replay(path, session=session, precise=True)


def test_replay_refuses_a_changed_guide_module(session, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = tmp_path / "prov_guide_blue.py"
    module.write_text("def more_blue(image):\n    return (image[:, 2] - 0.9).abs().mean()\n")
    [result] = session.generate(
        GenerateRequest("a circle", steps=2, guides=("module=prov_guide_blue:more_blue",))
    )
    path = save_png(result, tmp_path / "made.png")
    assert result.provenance["guide_files"][0]["path"] == str(module.resolve())
    module.write_text("def more_blue(image):\n    return (image[:, 2] - 0.1).abs().mean()\n")
    with pytest.raises(ReplayError, match=r"guide module prov_guide_blue .* has changed since"):
        replay(path, session=session, allow_guide_modules=True, precise=True)


def test_replay_names_the_file_by_its_label(tmp_path):
    plain = tmp_path / "image.png"
    Image.new("RGB", (8, 8)).save(plain)
    with pytest.raises(ReplayError, match=r"^'upload.png' has no tokensmith provenance") as info:
        read_provenance(plain, label="'upload.png'")
    assert str(tmp_path) not in str(info.value)


def _with_chunk(path, prov):
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text(CHUNK, json.dumps(prov))
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


@pytest.mark.parametrize(
    ("change", "said"),
    [
        (lambda p: p.pop("prompt"), "lacks 'prompt'"),
        (lambda p: p.update(width="abc"), "has a bad 'width': \"abc\""),
        (lambda p: p.update(guidance=None), "lacks 'guidance'"),
        (lambda p: p.update(embeddings=[{"name": "cat"}]), "has a bad 'embeddings' list"),
        (lambda p: p.update(init_image="x.png"), "has a bad 'init_image'"),
    ],
)
def test_a_chunk_changed_by_hand_is_named_field_by_field(session, store, tmp_path, change, said):
    [result] = session.generate(_request(), store=store)
    prov = json.loads(json.dumps(result.provenance))
    change(prov)
    path = _with_chunk(tmp_path / "edited.png", prov)
    with pytest.raises(ReplayError) as caught:
        replay(path, store=store, session=session)
    expected = f"{path}: the provenance chunk {said}; it was changed after tokensmith wrote it"
    assert str(caught.value) == expected


def test_a_missing_or_huge_file_is_named_for_what_it_is(tmp_path, monkeypatch):
    with pytest.raises(ReplayError, match=r"cannot read .*gone\.png: it does not exist"):
        read_provenance(tmp_path / "gone.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 4096 px is past twice this: PIL refuses it
    with pytest.raises(ReplayError, match=r"big\.png: it is far too large to be an image tokensmith wrote"):
        read_provenance(tmp_path / "big.png")


def _rotated_jpeg(path):
    """A JPEG stored top-red/bottom-blue whose EXIF says to turn it a quarter: viewers show it on its side."""
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:8, :, 0], pixels[8:, :, 2] = 255, 255
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    return path


def test_an_img2img_image_from_a_rotated_photo_replays_from_the_upright_pixels(session, tmp_path):
    init = _rotated_jpeg(tmp_path / "photo.jpg")
    [result] = session.generate(GenerateRequest("a red circle", init_image=init, strength=0.5, steps=6))
    assert result.provenance["init_image"]["reader"] == 3  # INIT_READER: upright, transparency on gray
    path = save_png(result, tmp_path / "i2i.png")
    again = replay(path, store=None, session=session)  # was: "init image ... has changed since"
    assert np.array_equal(np.asarray(again.image), np.asarray(result.image))


def test_an_image_made_before_the_reader_was_recorded_replays_with_the_first_reader(session, tmp_path):
    init = _rotated_jpeg(tmp_path / "photo.jpg")
    request = GenerateRequest("a red circle", init_image=init, strength=0.5, steps=6)
    [old] = session.generate(replace(request, init_reader=1))
    [new] = session.generate(request)
    assert not np.array_equal(np.asarray(old.image), np.asarray(new.image))  # the readers differ here
    prov = json.loads(json.dumps(old.provenance))
    del prov["init_image"]["reader"]  # as images made before it was recorded
    path = _with_chunk(tmp_path / "before.png", prov)
    again = replay(path, store=None, session=session)
    assert np.array_equal(np.asarray(again.image), np.asarray(old.image))


def test_an_image_made_with_the_first_slerp_replays_with_it(session, store, tmp_path):
    request = _request(prompt="a <slerp(<cat>, red, 0.4)> puppy", swaps={})
    [new] = session.generate(request, store=store)
    assert new.provenance["slerp"] == 2
    session.encoder.slerp_version = 1  # as tokensmith made it before slerp kept the angle for unequal norms
    try:
        [old] = session.generate(request, store=store)
    finally:
        session.encoder.slerp_version = 2
    assert not np.array_equal(np.asarray(old.image), np.asarray(new.image))  # the two slerps differ here
    made_before = replace(old, provenance={k: v for k, v in old.provenance.items() if k != "slerp"})
    again = replay(save_png(made_before, tmp_path / "before.png"), store=store, session=session)
    assert np.array_equal(np.asarray(again.image), np.asarray(old.image))
    assert again.provenance == made_before.provenance  # still says it was made with the first slerp
    assert session.encoder.slerp_version == 2  # the session is left as it was found
    now = replay(save_png(new, tmp_path / "now.png"), store=store, session=session)
    assert np.array_equal(np.asarray(now.image), np.asarray(new.image)) and now.provenance["slerp"] == 2


def test_an_unknown_slerp_version_is_named(session, store, tmp_path):
    [result] = session.generate(_request(), store=store)
    path = _with_chunk(tmp_path / "edited.png", result.provenance | {"slerp": 7})
    with pytest.raises(ReplayError, match="has a bad 'slerp': 7"):
        replay(path, store=store, session=session)
