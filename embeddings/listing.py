"""The store's listing: the stored names and each file's header facts (`StoreEntry`), read from file headers
only, and the letter-case rule checked against them. Mixed into Store (embeddings/store.py), whose name rules
and folder checks it uses."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from embeddings.canonical import canonical_shapes, read_header
from embeddings.errors import EmbeddingFormatError, StoreError
from embeddings.files import PREVIEW_SUFFIX, SUFFIX
from embeddings.names import is_valid_name, stray_name_error
from embeddings.value import family_from_widths

# Embedding files of other formats that the store does not read (`list` names them; `import` converts them).
OTHER_SUFFIXES = (".pt", ".bin", ".ckpt", ".png", ".webp")


def _sort_key(name: str) -> tuple[str, str]:
    return (name.lower(), name)


@dataclass(frozen=True)
class StoreEntry:
    """What a listing knows from a file's header alone (no tensor data read)."""

    name: str
    path: Path
    family: str
    num_vectors: int
    widths: dict[str, int]
    meta: dict[str, str]
    preview: Path | None

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "family": self.family,
            "num_vectors": self.num_vectors,
            "widths": self.widths,
            "meta": self.meta,
            "preview": str(self.preview) if self.preview else None,
        }


class Listing:
    """names / list / entry / case_twin for Store (it provides root, _require and _check_folder)."""

    def names(self) -> list[str]:
        """Stored names, sorted case-insensitively (as people read a list)."""
        if not self.root.is_dir():
            self._check_folder()
            return []
        names = (
            entry.name[: -len(SUFFIX)]
            for entry in os.scandir(self.root)
            if entry.name.endswith(SUFFIX) and not entry.name.startswith(".") and entry.is_file()
        )
        return sorted((n for n in names if is_valid_name(n)), key=_sort_key)

    def folded_names(self) -> dict[str, list[str]]:
        """The folder's `.safetensors` stems by their lower-case form, {'cat': ['Cat']}: one scan, no name
        rules, no sort, so that checking a name against a store of thousands costs a dict look-up (the rules
        are applied by `case_twin` to the few stems that match). An import checks all its names against one
        such scan."""
        if not self.root.is_dir():
            self._check_folder()
            return {}
        folded: dict[str, list[str]] = {}
        for entry in os.scandir(self.root):
            if entry.name.endswith(SUFFIX) and not entry.name.startswith("."):
                stem = entry.name[: -len(SUFFIX)]
                folded.setdefault(stem.lower(), []).append(stem)
        return folded

    def case_twin(self, name: str, *, folded: dict[str, list[str]] | None = None) -> str | None:
        """A stored name that differs from `name` only in letter case, if any.

        Such names are refused: prompts match `<name>` case-insensitively (CLIP's tokenizer lowercases text),
        so `<Cat>` and `<cat>` would be one token, and on macOS/Windows they would be one file. `folded` is
        a `folded_names()` scan to check against; by default the folder is scanned now.
        """
        folded = self.folded_names() if folded is None else folded
        twins = (n for n in sorted(folded.get(name.lower(), ())) if n != name and is_valid_name(n))
        return next((n for n in twins if (self.root / (n + SUFFIX)).is_file()), None)

    def check_case_twin(
        self, name: str, *, allow: str | None = None, folded: dict[str, list[str]] | None = None
    ) -> None:
        """StoreError if another stored name differs from `name` only in letter case (see `case_twin`)."""
        twin = self.case_twin(name, folded=folded)
        if twin is not None and twin != allow:
            raise StoreError(
                f"'{twin}' already exists and differs from '{name}' only in letter case; prompts read "
                f"<{name}> case-insensitively, so they would be the same token: choose another name "
                f"(or `tokensmith rename {twin} {name}`)"
            )

    def list(
        self, *, problems: list[tuple[Path, str]] | None = None, others: list[Path] | None = None
    ) -> list[StoreEntry]:
        """Every stored embedding with its header facts (headers only).

        Unreadable files, and files whose stem is not a valid name (copied in by hand), are skipped (a broken
        file must not hide the others); pass a list as `problems` to receive them as (path, reason), the
        reason saying what to do. Pass a list as `others` to receive the embedding files of other formats in
        the folder (`.pt`, `.bin`, images that are not previews), which the store does not read.
        """
        if not self.root.is_dir():
            self._check_folder()
            return []
        files = {entry.name for entry in os.scandir(self.root) if not entry.name.startswith(".")}
        entries = []
        for file_name in sorted((f for f in files if f.endswith(SUFFIX)), key=_sort_key):
            name = file_name[: -len(SUFFIX)]
            try:
                if not is_valid_name(name):
                    raise stray_name_error(name)
                entries.append(self._entry(name, self.root / file_name, files))
            except (EmbeddingFormatError, StoreError, OSError) as exc:
                if problems is not None:
                    problems.append((self.root / file_name, str(exc)))
        if others is not None:
            others.extend(self.root / f for f in sorted(files, key=_sort_key) if _other_format(f))
        return entries

    def entry(self, name: str) -> StoreEntry:
        """The header facts of one stored embedding."""
        path = self._require(name)
        return self._entry(name, path, {p.name for p in self.root.iterdir()})

    def _entry(self, name: str, path: Path, files: set[str]) -> StoreEntry:
        """The entry of one file, or EmbeddingFormatError where `load_canonical` would refuse it (the same
        header rules, `canonical_shapes`): a listed embedding is one that `show` and prompts can load."""
        header = read_header(path)
        shapes = canonical_shapes(path, header)  # clip_l before clip_g, as people read SDXL
        meta = header.get("__metadata__", {})
        widths = {key: dim for key, (_, dim) in shapes.items()}
        preview = name + PREVIEW_SUFFIX
        return StoreEntry(
            name=name,
            path=path,
            family=meta.get("family") or family_from_widths(widths),
            num_vectors=next(iter(shapes.values()))[0],
            widths=widths,
            meta=meta,
            preview=self.root / preview if preview in files else None,
        )


def _other_format(file_name: str) -> bool:
    """An embedding file of another format (`.pt`, `.bin`, an image that is not a store preview)."""
    lower = file_name.lower()
    return lower.endswith(OTHER_SUFFIXES) and not lower.endswith(PREVIEW_SUFFIX)
