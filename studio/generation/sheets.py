"""Sheets that hold several generated images (a grid, a variations sheet, a `--trace` strip): the chunk that
records each image's provenance and its box, and what a replay of one image of a sheet compares with.

`provenance.read_provenance(path, cell=K)` reads image K's provenance; this module writes a sheet's chunk
and finds a cell again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from embeddings import package_version
from embeddings.files import atomic_write_bytes
from studio.generation.provenance import FORMAT, make_folder, png_bytes, read_chunk


def sheet_provenance(kind: str, cells: list[tuple[dict, tuple[int, int, int, int] | None]]) -> dict:
    """The chunk of a sheet (`kind`: grid | variations | trace): each cell's provenance and its box in the
    sheet (left, top, right, bottom; None when the sheet holds no copy of the image, as a trace strip)."""
    return {
        "format": FORMAT,
        "tokensmith": package_version(),
        "sheet": kind,
        "cells": [{"provenance": prov, "box": None if box is None else list(box)} for prov, box in cells],
    }


def save_sheet(image: Image.Image, sheet: dict, path: str | Path, *, overwrite: bool = True) -> Path:
    """A sheet (grid, variations, trace strip) with its cells' provenance (`sheet_provenance`), atomically."""
    path = Path(path)
    make_folder(path.parent)
    return atomic_write_bytes(path, png_bytes(image, sheet), overwrite=overwrite)


def cell_box(path: str | Path, cell: int) -> tuple[int, int, int, int] | None:
    """Where image `cell` sits in the sheet at `path` (left, top, right, bottom), or None when the sheet
    holds no copy of it (a trace strip); read_provenance has checked the cell."""
    prov = read_chunk(Path(path), str(path))
    cells = prov.get("cells") if "sheet" in prov else None
    box = cells[cell - 1].get("box") if isinstance(cells, list) and 1 <= cell <= len(cells) else None
    fits = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)
    return tuple(box) if fits else None  # type: ignore[return-value]


def sheet_cells_count(path: str | Path, *, label: str | None = None) -> tuple[str, int] | None:
    """(kind, number of images) of a sheet tokensmith wrote ("grid", 4), or None for a single image; a file
    without a tokensmith chunk is the ReplayError `read_provenance` gives."""
    prov = read_chunk(Path(path), label or str(path))
    if "sheet" not in prov:
        return None
    cells = prov.get("cells")
    return str(prov["sheet"]), len(cells) if isinstance(cells, list) else 0


def matches_original(path: str | Path, image: Image.Image, cell: int | None = None) -> bool | None:
    """Whether a replayed `image` is pixel-identical to the image at `path` (to its cell `cell`, scaled as
    the sheet shows it); None when the sheet holds no copy of the image (a trace strip)."""
    from studio.generation.grid import fit_width

    with Image.open(path) as opened:
        original = opened.convert("RGB")
    if cell is None:
        return np.array_equal(np.asarray(original), np.asarray(image.convert("RGB")))
    box = cell_box(path, cell)
    if box is None:
        return None
    shown = fit_width(image.convert("RGB"), box[2] - box[0])
    return np.array_equal(np.asarray(original.crop(box)), np.asarray(shown))
