"""Full and read-only disks, in words: every write that fails names its file (never a temp file) in one line
with what to do, `generate -n` names the images already written, and no temp file is left behind.

Full and read-only disks are simulated by making the write raise ENOSPC or EROFS."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from diskfull import half_saved_then_full, no_space_for
from PIL import Image

from embeddings.errors import TokensmithError
from studio.cli import main
from trainers.runfolder import RunFolder

# --- 4. one line that names the file and says what to do ---


def test_demo_images_on_a_full_disk_names_the_image_and_what_was_written(tmp_path, monkeypatch, capsys):
    out = tmp_path / "di"
    half_saved_then_full(monkeypatch, "002.png")
    assert main(["demo-images", "red star", "-n", "3", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    failed = out / "red-star-002.png"
    assert f"the disk is full while writing {failed}: free some space, then run the same command again" in err
    assert "(2 of 3 images were written: red-star-000.png, red-star-001.png)" in err
    assert sorted(p.name for p in out.iterdir()) == ["red-star-000.png", "red-star-001.png"]


def test_any_command_names_the_file_a_full_or_read_only_disk_refused(tmp_path, monkeypatch, capsys):
    import studio.cli_demo_world as command

    for code, strerror, says in (
        (errno.ENOSPC, "No space left on device", "the disk is full while writing /out/x.png: free some"),
        (errno.EROFS, "Read-only file system", "/out/x.png is on a read-only disk: choose another place"),
    ):

        def run(args, code=code, strerror=strerror):
            raise OSError(code, strerror, "/out/.x.png.23114.401f5fc9.tmp")  # what the system names

        monkeypatch.setattr(command, "run", run)
        assert main(["demo-images", "red star", "--out", str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.startswith(f"tokensmith demo-images: error: {says}"), err
        assert "Errno" not in err and ".tmp" not in err


def test_a_run_folder_on_a_read_only_disk_is_one_line_with_advice(tmp_path, monkeypatch):
    folder = RunFolder(tmp_path / "run")
    folder.root.mkdir()
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(TokensmithError) as refused:
        folder.claim()
    assert str(refused.value) == (
        f"cannot write the run folder {folder.root} ({folder.root / 'pid'}: Read-only file system): make it "
        "writable, or pass another --run-dir"
    )


def test_the_studio_names_the_file_a_full_disk_refused(tmp_path, monkeypatch):
    from studio.app import context
    from studio.jobs import JobRunner
    from studio.trainrequest import TrainRequest

    marker = f"# a trainer of {tmp_path}"
    sleeper = (sys.executable, "-c", f"import time; time.sleep(60)  {marker}")
    runner = JobRunner(tmp_path / "home", trainer_command=sleeper)
    for method in ("write_bytes", "write_text"):
        no_space_for(monkeypatch, "job.json", method)
    with pytest.raises(OSError) as full:
        runner.start(TrainRequest(name="cat", images=tmp_path), job_id="cat-1")
    run_dir = runner.runs_dir / "cat-1"
    assert context.error_text(full.value) == (
        f"the disk is full while writing {run_dir / 'job.json'}: free some space, then try again"
    )
    assert not run_dir.exists()  # no folder that no page lists, no trainer left running unheard
    assert runner.jobs() == []
    running = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            running += [cmdline] if marker.encode() in cmdline.read_bytes() else []
        except OSError:
            continue
    assert running == []


# --- 5. no temp file left behind ---


def test_a_job_file_that_cannot_be_renamed_leaves_no_temp_file(tmp_path, monkeypatch):
    from studio.jobfiles import write_atomic

    def refused(src, dst, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src), str(dst))

    monkeypatch.setattr(os, "replace", refused)
    with pytest.raises(OSError):
        write_atomic(tmp_path / "job.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_an_init_image_that_does_not_fit_leaves_no_temp_file(tmp_path, monkeypatch):
    from studio.app import context
    from studio.app.views.generate import keep_init_image

    monkeypatch.setattr(context, "home", lambda: tmp_path)
    half_saved_then_full(monkeypatch, "")
    with pytest.raises(OSError, match="No space left"):
        keep_init_image(Image.new("RGB", (8, 8), "red"))
    assert list((tmp_path / "studio" / "init-images").iterdir()) == []


def test_uploads_that_do_not_fit_leave_no_folder(tmp_path, monkeypatch):
    from studio.app.uploads import TrainingImage, save_images

    data = b"png bytes"
    images = [TrainingImage("a.png", data, (8, 8)), TrainingImage("b.png", data, (8, 8))]
    no_space_for(monkeypatch, "b.png")
    with pytest.raises(OSError, match="No space left"):
        save_images(images, tmp_path / "runs" / "job-1" / "images")
    assert list(tmp_path.iterdir()) == []


def test_resume_removes_the_temp_files_of_killed_writes(tmp_path):
    folder = RunFolder(tmp_path / "run")
    folder.create(resume=False)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    dead, alive = int(gone.stdout), os.getppid()
    litter = [
        folder.root / f".config.toml.tmp-{dead}",
        folder.root / f".latents.safetensors.tmp-{dead}",
        folder.previews / f".step-000002.png.tmp-{dead}",
        folder.snapshots / f".step-000002.safetensors.{dead}.1a2b3c4d.tmp",
    ]
    kept = [folder.root / f".progress.jsonl.tmp-{alive}", folder.root / f".images.json.tmp-{os.getpid()}"]
    for path in (*litter, *kept):
        path.write_bytes(b"half")
    folder.create(resume=True, main=False)  # another process of a launch (maybe on another machine)
    assert all(p.exists() for p in litter)  # it cannot tell the main process's live writes from dead ones
    folder.create(resume=True)
    assert [p for p in litter if p.exists()] == []
    assert all(p.exists() for p in kept)  # another live process's write, or this one's own


def test_generate_n_on_a_full_disk_names_the_images_already_written(tmp_path, monkeypatch, capsys):
    import studio.generation as generation

    real = generation.save_png
    calls = []

    def fills_up(result, path, **kwargs):
        calls.append(path)
        if len(calls) == 3:  # the third image does not fit
            raise OSError(
                errno.ENOSPC, os.strerror(errno.ENOSPC), str(path.parent / f".{path.name}.1.ab.tmp")
            )
        return real(result, path, **kwargs)

    monkeypatch.setattr(generation, "save_png", fills_up)
    out = tmp_path / "out"
    argv = ["generate", "a red circle", "-n", "4", "--steps", "2", "--out", str(out) + "/"]
    assert main([*argv, "--home", str(tmp_path / "home")]) == 1
    err = capsys.readouterr().err
    third = out / "a-red-circle-s2.png"
    assert f"the disk is full while writing {third}: free some space, then run the same command again" in err
    assert "(2 of 4 images were written: " in err and str(out / "a-red-circle-s0.png") in err
    assert sorted(p.name for p in out.iterdir()) == ["a-red-circle-s0.png", "a-red-circle-s1.png"]
