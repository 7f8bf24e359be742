"""A stand-in for huggingface_hub.HfApi that keeps what an upload holds instead of sending it."""

from pathlib import Path
from typing import ClassVar


class RecordingApi:
    """A fake HfApi that records what each upload holds (file name -> bytes) in `uploads`."""

    uploads: ClassVar[list] = []  # replaced per test (monkeypatch.setattr(RecordingApi, "uploads", []))

    def __init__(self, *args, **kwargs):
        pass

    def create_repo(self, repo_id, **kwargs):
        return f"https://hub.example.org/{repo_id}"

    def repo_info(self, repo_id, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(private=False, siblings=[])

    def upload_folder(self, *, folder_path, **kwargs):
        RecordingApi.uploads.append({p.name: p.read_bytes() for p in Path(folder_path).iterdir()})
