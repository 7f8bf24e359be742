"""Full disks, read-only disks and kills, past the store's own writes: a replacement never shows the old
thumbnail beside the new embedding, `rm` needs no space, the demo's images are written completely or not at
all, and a failure after the demo stored its token says so (the words of a failed write:
test_disk_full_messages).

Full and read-only disks are simulated by making the write raise ENOSPC or EROFS; kills by an exception
where the process would die (or `os._exit` in a child process, where the clean-up on the way out would hide
what a kill leaves)."""

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from diskfull import emb, half_saved_then_full, hidden, no_space_for, pixels
from PIL import Image
from tinyrun import quick_config, square_images, tiny_model

from embeddings import Embedding, Store
from embeddings.errors import TokensmithError
from studio.cli import main
from trainers import train
from trainers.runfolder import RunFolder

# --- 1. a replaced embedding never keeps the old thumbnail ---


def test_a_replacement_whose_thumbnail_cannot_be_written_changes_nothing_and_names_the_thumbnail(
    tmp_path, monkeypatch
):
    store = Store(tmp_path / "store")
    store.put(emb("pv", 1.0), preview=Image.new("RGB", (8, 8), "red"))
    red = pixels(store.preview_path("pv"))
    no_space_for(monkeypatch, ".preview.png")
    with pytest.raises(OSError) as failed:
        store.put(emb("pv", 2.0), preview=Image.new("RGB", (8, 8), "blue"), overwrite=True)
    assert f"cannot write {store.preview_path('pv')}: No space left on device" in str(failed.value)
    assert failed.value.errno == errno.ENOSPC
    # the old pair, whole: not the new embedding beside the old thumbnail
    assert float(store.get("pv").vectors["emb_params"][0, 0]) == 1.0
    assert pixels(store.preview_path("pv")) == red
    assert hidden(store.root) == []


def test_a_replacement_killed_before_its_thumbnail_takes_its_name_shows_no_old_thumbnail(
    tmp_path, monkeypatch
):
    class Killed(BaseException):
        pass

    store = Store(tmp_path / "store")
    store.put(emb("pv", 1.0), preview=Image.new("RGB", (8, 8), "red"))
    real_replace = os.replace

    def replace(src, dst, **kwargs):
        if Path(dst).name == "pv.preview.png":  # the new thumbnail taking its name: the kill comes first
            raise Killed
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(Killed):
        store.put(emb("pv", 2.0), preview=Image.new("RGB", (8, 8), "blue"), overwrite=True)
    monkeypatch.undo()
    stored = float(store.get("pv").vectors["emb_params"][0, 0])
    preview = store.preview_path("pv")
    assert stored == 2.0 and not preview.exists()  # the new embedding, and no thumbnail rather than red
    assert store.entry("pv").preview is None


def test_a_stored_name_without_a_preview_drops_a_thumbnail_a_killed_rm_left(tmp_path):
    store = Store(tmp_path / "store")
    store.root.mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(store.preview_path("cat"))  # no cat.safetensors beside it
    store.put(emb("cat", 1.0))
    assert not store.preview_path("cat").exists() and store.entry("cat").preview is None


def test_resume_after_the_store_write_replaces_a_thumbnail_of_other_vectors(tmp_path):
    """An older tokensmith replaced the embedding before its thumbnail: the advised resume must write the
    run's own thumbnail, not keep the replaced embedding's."""
    images, run, home = square_images(tmp_path / "images"), tmp_path / "run", tmp_path / "home"
    train(quick_config(images, run), home=home, model=tiny_model("sd1"))
    folder, store = RunFolder(run), Store.for_home(home)
    lines = folder.progress_path.read_text().splitlines(keepends=True)
    folder.progress_path.write_text("".join(lines[:-1]))  # killed before its `done` event
    Image.new("RGB", (8, 8), "red").save(store.preview_path("thing"))  # the replaced embedding's
    train(quick_config(images, run, resume=True), home=home, model=tiny_model("sd1"))
    kept = int(store.get("thing").meta["steps"])
    assert pixels(store.preview_path("thing")) == pixels(folder.preview_path(kept))
    assert folder.read_progress()[-1]["event"] == "done"


@pytest.mark.parametrize(
    "failing, what, target",
    [
        (".preview.png", "the thumbnail of 'thing'", "thing.preview.png"),
        ("thing.safetensors", "the stored file of 'thing'", "thing.safetensors"),
    ],
)
def test_a_full_disk_at_the_store_write_names_the_file_and_gives_its_advice_once(
    tmp_path, monkeypatch, failing, what, target
):
    images, run, home = square_images(tmp_path / "images"), tmp_path / "run", tmp_path / "home"
    with monkeypatch.context() as patch:
        no_space_for(patch, failing)
        with pytest.raises(TokensmithError) as full:
            train(quick_config(images, run), home=home, model=tiny_model("sd1"))
    said = str(full.value)
    store = Store.for_home(home)
    assert said.startswith(f"the disk is full while writing {what} ({store.root / target}; OSError: "), said
    assert said.count("the disk is full") == 1 and said.count("No space left on device") == 1, said
    assert "cannot write" not in said and "\n" not in said
    assert f"free space there and run `tokensmith train --run-dir {run} --home {home} --resume`" in said
    assert store.names() == [] and hidden(store.root) == []
    emb_ = train(quick_config(images, run, resume=True), home=home, model=tiny_model("sd1"))
    assert store.get("thing").sha256 == emb_.sha256
    kept = int(emb_.meta["steps"])
    assert pixels(store.preview_path("thing")) == pixels(RunFolder(run).preview_path(kept))


# --- 2. `rm` needs no space; a kill between its moves leaves no orphan thumbnail ---


def test_rm_on_a_full_disk_moves_the_embedding_to_the_trash_and_says_so(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    Store.for_home(home).put(emb("en5", 5.0), preview=Image.new("RGB", (4, 4)))
    for method in ("write_bytes", "write_text"):  # no new file's data fits: renames still do
        no_space_for(monkeypatch, "", method)
    assert main(["rm", "en5", "--home", str(home)]) == 0, capsys.readouterr().err
    store = Store.for_home(home)
    assert store.names() == [] and store.trashed() == ["en5"]
    assert not store.preview_path("en5").exists()
    monkeypatch.undo()
    assert main(["restore", "en5", "--home", str(home)]) == 0
    assert float(store.get("en5").vectors["emb_params"][0, 0]) == 5.0 and store.preview_path("en5").is_file()


def test_restore_on_a_full_disk_needs_no_copy(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    store.put(emb("cat", 3.0))
    store.delete("cat")

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr("shutil.copyfile", no_space)
    assert store.restore("cat") == store.path("cat")
    assert float(store.get("cat").vectors["emb_params"][0, 0]) == 3.0 and store.trashed() == []


KILLED_RM = textwrap.dedent(
    """
    import os, sys
    from embeddings import Store

    real, calls = os.replace, []
    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # killed between the embedding's move and its thumbnail's
            os._exit(137)
        return real(src, dst)
    os.replace = replace
    Store(sys.argv[1]).delete("cat")
    """
)


def test_rm_killed_between_its_two_moves_leaves_no_thumbnail_without_its_embedding(tmp_path):
    store = Store(tmp_path / "store")
    store.put(emb("cat", 1.0), preview=Image.new("RGB", (4, 4), "red"))
    killed = subprocess.run([sys.executable, "-c", KILLED_RM, str(store.root)], capture_output=True)
    assert killed.returncode == 137, killed.stderr.decode()
    assert store.exists("cat") or not store.preview_path("cat").exists()
    store.delete("cat")  # what the user runs again: the rest goes too
    store.put(emb("cat", 2.0))  # another embedding of that name shows no red thumbnail
    assert store.entry("cat").preview is None


# --- 3. the demo's images: completely or not at all, and a failure after storing says so ---


def test_the_demo_on_a_full_disk_leaves_no_half_written_training_image(tmp_path, monkeypatch, capsys):
    out = tmp_path / "demo"
    half_saved_then_full(monkeypatch, "2.png")
    assert main(["demo", "--out", str(out), "--home", str(tmp_path / "home"), "--steps", "1"]) == 1
    err = capsys.readouterr().err
    assert f"the disk is full while writing {out / 'images' / '2.png'}: free some space, then run " in err
    assert "`tokensmith demo` again" in err and "Errno" not in err
    assert sorted(p.name for p in (out / "images").iterdir()) == ["0.png", "1.png"]


def test_the_demo_says_its_token_is_stored_when_the_contact_sheet_does_not_fit(tmp_path, monkeypatch, capsys):
    from trainers import trainer as trainer_module

    home, out = tmp_path / "home", tmp_path / "demo"
    name = "demo-purple-triangle"

    def trained(cfg, *, home, **kwargs):  # the demo world's width; what the trainer stores
        meta = {"steps": "2", "trainer": json.dumps({"trained_steps": 2})}
        token = Embedding(name, {"emb_params": torch.randn(1, 64) * 0.01}, meta=meta)
        Store.for_home(home).put(token, overwrite=True)
        return token

    monkeypatch.setattr(trainer_module, "train", trained)
    (out).mkdir()
    (out / "contact-sheet.png").write_bytes(b"an older, complete sheet")
    half_saved_then_full(monkeypatch, "contact-sheet")
    assert main(["demo", "--out", str(out), "--home", str(home), "--steps", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    stored = Store.for_home(home).path(name)
    sheet = out / "contact-sheet.png"
    assert err.startswith(f"tokensmith demo: error: the disk is full while writing {sheet}: free some space")
    assert f"the token <{name}> was trained and stored before this ({stored})" in err
    assert (out / "contact-sheet.png").read_bytes() == b"an older, complete sheet"
    assert hidden(out) == []
