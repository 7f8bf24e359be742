"""Atomic writes: readers see the old file or the whole new one; create-only never replaces."""

import pytest

from embeddings.files import atomic_write, atomic_write_bytes


def test_overwrite_replaces_whole_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new contents")
    assert path.read_bytes() == b"new contents" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_create_only_refuses_an_existing_file_and_cleans_up(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"first")
    with pytest.raises(FileExistsError):
        atomic_write_bytes(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, b"keep")

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        atomic_write(path, failing)
    assert path.read_bytes() == b"keep" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_missing_parent_folders_are_created(tmp_path):
    path = tmp_path / "a" / "b" / "f.bin"
    atomic_write_bytes(path, b"x")
    assert path.read_bytes() == b"x"


def test_a_failing_clean_up_never_hides_the_error_that_stopped_the_write(tmp_path, monkeypatch):
    from pathlib import Path

    path = tmp_path / "f.bin"

    def full(tmp):
        tmp.write_bytes(b"half")
        raise OSError(28, "No space left on device")

    def refuse(self, missing_ok=False):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, full)
    monkeypatch.undo()
    assert not path.exists()


def test_a_name_taken_meanwhile_is_named_not_the_temp_file(tmp_path):
    """os.link's error names the hidden temp file first; what the caller (and the user) needs is the name
    that exists (grid, variations, replay and schedule show this error as it is)."""
    from embeddings.files import atomic_write_bytes

    target = tmp_path / "grid.png"
    target.write_bytes(b"someone else's")
    with pytest.raises(FileExistsError) as taken:
        atomic_write_bytes(target, b"mine", overwrite=False)
    assert taken.value.filename == str(target) and ".tmp" not in str(taken.value)
    assert target.read_bytes() == b"someone else's" and [p.name for p in tmp_path.iterdir()] == ["grid.png"]
