"""What `train` checks about its inputs before the work starts: an image file passed as the folder, hidden
files, a link to an image that is gone, huge images, images changed under a resume, a token too long for the
model's prompts, two runs of one name at once, the images' folder kept as an absolute path, and the `init:`
line that says what the rows start from."""

import os
import re
import subprocess
import sys
import tomllib

import pytest
from PIL import Image
from tinyrun import quick_config, square_images, tiny_model

from embeddings.errors import TokensmithError
from trainers import train
from trainers.data import DataError, load_images
from trainers.runfolder import RunFolder


def test_an_image_file_given_as_the_folder_is_named_as_a_file(tmp_path):
    images = square_images(tmp_path / "images")
    with pytest.raises(DataError, match=r"0\.png is a file; pass --images DIR"):
        load_images(images / "0.png")


def test_hidden_files_such_as_macos_forks_are_skipped(tmp_path):
    images = square_images(tmp_path / "images")
    (images / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble resource fork")
    assert [image.path.name for image in load_images(images)] == ["0.png", "1.png", "2.png"]


def test_a_link_to_an_image_that_is_gone_fails_with_its_name(tmp_path):
    images = square_images(tmp_path / "images")
    (images / "3.png").symlink_to(tmp_path / "moved-away.png")
    with pytest.raises(DataError, match=r"image .*3\.png is a broken link: .*moved-away\.png does not exist"):
        load_images(images)


def test_an_image_past_pils_size_guard_is_a_clear_error(tmp_path, monkeypatch):
    images = square_images(tmp_path / "images")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 16x16 = 256 px is over twice this: PIL refuses
    with pytest.raises(DataError, match=r"0\.png is too large .*; downscale it"):
        load_images(images)


def test_a_resume_refuses_images_that_changed_since_the_run_began(tmp_path):
    images = square_images(tmp_path / "images")
    home, run = tmp_path / "home", tmp_path / "run"
    train(quick_config(images, run, steps=3), home=home, model=tiny_model("sd1"))
    Image.new("RGB", (16, 16), "white").save(images / "3.png")
    (images / "1.png").unlink()
    resume = quick_config(images, run, steps=6, resume=True, overwrite=True)
    with pytest.raises(
        TokensmithError, match=r"changed since the run began \(3 -> 3 images: added 3\.png; removed"
    ):
        train(resume, home=home, model=tiny_model("sd1"))


def test_a_resume_refuses_an_image_changed_in_place_at_the_same_size(tmp_path):
    images = square_images(tmp_path / "images")
    for path in images.iterdir():  # uncompressed: the file size depends on the image size alone
        Image.open(path).convert("RGB").save(path, compress_level=0)
    home, run = tmp_path / "home", tmp_path / "run"
    train(quick_config(images, run, steps=3), home=home, model=tiny_model("sd1"))
    size = (images / "0.png").stat().st_size
    red, green, blue = Image.open(images / "0.png").convert("RGB").split()
    Image.merge("RGB", (blue, green, red)).save(images / "0.png", compress_level=0)  # a blue square now
    assert (images / "0.png").stat().st_size == size
    resume = quick_config(images, run, steps=6, resume=True, overwrite=True)
    with pytest.raises(TokensmithError, match=r"\(3 -> 3 images: changed 0\.png\)"):
        train(resume, home=home, model=tiny_model("sd1"))


def test_a_resume_refuses_a_caption_changed_since_the_run_began(tmp_path):
    images = square_images(tmp_path / "images")
    (images / "1.txt").write_text("sofa")  # it joins image 1's prompts
    home, run = tmp_path / "home", tmp_path / "run"
    train(quick_config(images, run, steps=3, templates="captions"), home=home, model=tiny_model("sd1"))
    (images / "1.txt").write_text("chair")
    resume = quick_config(images, run, steps=6, templates="captions", resume=True, overwrite=True)
    with pytest.raises(TokensmithError, match=r"\(3 -> 3 images: caption changed 1\.png\); restore them"):
        train(resume, home=home, model=tiny_model("sd1"))
    (images / "1.txt").write_text("sofa")
    assert train(resume, home=home, model=tiny_model("sd1")).meta["steps"] == "6"


def test_a_token_too_long_for_the_prompts_is_refused_with_the_count_that_fits(tmp_path):
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", vectors=20)  # the tiny tokenizer reads 16 tokens
    with pytest.raises(
        TokensmithError, match=r"is \d+ tokens with 20 vectors, more than the 16 .*--vectors \d+"
    ):
        train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))


def test_a_resolution_the_model_cannot_halve_is_refused_with_the_sizes_that_fit(tmp_path):
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", resolution=18)  # the tiny model takes multiples of 4 px
    with pytest.raises(
        TokensmithError, match=r"resolution 18 px .* multiple of 4 px; use --resolution 16 or 20"
    ):
        train(cfg, home=tmp_path / "home", model=tiny_model("sd1"))
    assert not (tmp_path / "run" / "latents.safetensors").exists()  # refused before any latent was cached
    # the advised retry takes the same --run-dir over without --resume: the refused run never took a step
    emb = train(cfg.replace(resolution=16), home=tmp_path / "home", model=tiny_model("sd1"))
    assert emb.meta["steps"] == str(cfg.steps)
    with pytest.raises(TokensmithError, match="already holds a run"):  # a run that trained is kept
        train(cfg.replace(resolution=16, name="again"), home=tmp_path / "home", model=tiny_model("sd1"))


def test_a_caption_joins_the_default_object_prompts(tmp_path):
    """NAME.txt captions reach the training prompts without --templates captions: a long one makes the
    prompt too long for the tiny tokenizer, and the note on the cut prompts shows it with the caption in it
    (the token comes first, so only the caption's end is cut: the run trains, as A1111 and kohya do)."""
    images = square_images(tmp_path / "images")
    (images / "0.txt").write_text("on a red sofa in a sunny room by the big window")
    said = []
    cfg = quick_config(images, tmp_path / "run", vectors=1, steps=1)
    train(cfg, home=tmp_path / "home", model=tiny_model("sd1"), echo=said.append)
    (note,) = [line for line in said if "training prompts are longer than" in line]
    assert re.search(
        r"the longest, '.*<thing>, on a red sofa in a sunny room by the big window', is \d+", note
    )


def test_the_images_folder_is_kept_absolute(tmp_path, monkeypatch):
    square_images(tmp_path / "images")
    monkeypatch.chdir(tmp_path)
    train(quick_config("images", "run", steps=1), home=tmp_path / "home", model=tiny_model("sd1"))
    saved = tomllib.loads((tmp_path / "run" / "config.toml").read_text())
    assert saved["images"] == str(tmp_path / "images")


def test_a_run_folder_held_by_a_live_process_is_not_shared(tmp_path):
    images = square_images(tmp_path / "images")
    home = tmp_path / "home"
    taken = home / "runs" / "thing"
    claim = "import sys, time; from pathlib import Path; from trainers.runfolder import RunFolder; "
    claim += "print(RunFolder(Path(sys.argv[1])).claim(), flush=True); time.sleep(60)"
    # another run of the same name, just started: it holds the folder's lock
    holder = subprocess.Popen([sys.executable, "-c", claim, str(taken)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "None\n"
        cfg = quick_config(images, "", steps=1)
        train(cfg, home=home, model=tiny_model("sd1"))
        assert (home / "runs" / "thing-2" / "progress.jsonl").is_file()
        assert not (taken / "progress.jsonl").exists()
        with pytest.raises(TokensmithError, match=rf"in use by process {holder.pid}; wait for that run"):
            train(quick_config(images, taken, overwrite=True), home=home, model=tiny_model("sd1"))
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert (taken / "pid").exists()  # a killed holder leaves its pid file, but not its lock
    assert RunFolder(taken).claim() is None  # a dead holder's folder is free again
    try:
        assert int((taken / "pid").read_text()) == os.getpid()
    finally:
        RunFolder(taken).release()


def test_a_run_folder_that_is_a_file_or_the_images_folder_is_refused(tmp_path):
    images = square_images(tmp_path / "images")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine\n")
    with pytest.raises(TokensmithError, match=r"notes\.txt is a file; pass --run-dir with a folder"):
        train(quick_config(images, notes), home=tmp_path / "home", model=tiny_model("sd1"))
    with pytest.raises(TokensmithError, match="is the images folder"):
        train(quick_config(images, images), home=tmp_path / "home", model=tiny_model("sd1"))
    assert notes.read_text() == "mine\n" and sorted(p.name for p in images.iterdir()) == [
        "0.png",
        "1.png",
        "2.png",
    ]


def test_the_run_says_what_its_rows_start_from(tmp_path):
    """The init's tokens, how they fill the vectors, and a word the vocabulary splits into pieces."""
    images = square_images(tmp_path / "images")
    said = []
    cfg = quick_config(images, tmp_path / "run", init="a zebra", vectors=1, steps=1)
    train(cfg, home=tmp_path / "home", model=tiny_model("sd1"), echo=said.append)
    note = next(line for line in said if line.startswith("init:"))
    assert note == (
        "init: 'a zebra' -> a, z, e, b, r, a (6 tokens, averaged into 1 vector); 'zebra' is split into "
        "pieces by this model's vocabulary"
    )
    said.clear()
    cfg = quick_config(images, tmp_path / "run2", name="other", init="<thing>", vectors=2, steps=1)
    train(cfg, home=tmp_path / "home", model=tiny_model("sd1"), echo=said.append)
    assert "init: <thing> (1 vector, repeated over 2 vectors)" in said


def test_an_sd1_init_embedding_for_an_sdxl_model_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import torch

    from embeddings import Embedding, Store
    from trainers import modelprep, models
    from trainers.tiny import tiny_pipeline

    folder = tmp_path / "tiny-sdxl"
    tiny_pipeline("sdxl").save_pretrained(folder)
    home = tmp_path / "home"
    Store.for_home(home).put(Embedding("sd1cat", {"emb_params": torch.zeros(1, 32)}))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", model=str(folder), init="<sd1cat>")
    with pytest.raises(TokensmithError) as caught:
        train(cfg, home=home)
    assert str(caught.value) == modelprep.init_misfit(Store.for_home(home).get("sd1cat"), "clip_l")
    assert "an SD 1.x/2.x-style embedding cannot start its token; use a word" in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_an_init_embedding_of_another_width_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    import torch

    from embeddings import Embedding, Store
    from trainers import models

    home = tmp_path / "home"
    Store.for_home(home).put(Embedding("sd15-cat", {"emb_params": torch.zeros(1, 768)}))
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    images = square_images(tmp_path / "images")
    cfg = quick_config(images, tmp_path / "run", model="demo", init="<sd15-cat>")
    said = r"width 768 \(emb_params\) but this model's text encoder has 64"
    with pytest.raises(TokensmithError, match=said):
        train(cfg, home=home)
    assert not (tmp_path / "run").exists()
    assert models.planned_encoder_widths("demo") == {"emb_params": 64}
    assert models.planned_encoder_widths("owner/some-model") is None  # a hub id: only loading tells
