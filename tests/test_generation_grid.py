"""studio/generation/grid.py: --seeds and --sweep parsing, placeholders, labelled contact sheets."""

import pytest
from PIL import Image

from studio.generation import GenerateRequest
from studio.generation.grid import (
    CELL,
    LABEL,
    ROW_LABEL_W,
    GridError,
    compose,
    parse_seeds,
    parse_sweep,
    render_grid,
    requests_for,
    substitute,
)


def test_seeds():
    assert parse_seeds("0-3") == [0, 1, 2, 3]
    assert parse_seeds("1,5, 9") == [1, 5, 9]
    assert parse_seeds("0-1,7") == [0, 1, 7]
    for bad in ("3-1", "a", "", "0-100"):
        with pytest.raises(GridError, match="--seeds"):
            parse_seeds(bad)


def test_sweep():
    assert parse_sweep("w=0, 0.5,1") == ("w", ["0", "0.5", "1"])
    for bad in ("w", "=1,2", "w=", "2w=1"):
        with pytest.raises(GridError, match="--sweep"):
            parse_sweep(bad)


def test_placeholders_with_arithmetic():
    template = "a <{w}*<cat> + {1-w}*<dog>>"
    assert substitute(template, "w", "0.25") == "a <0.25*<cat> + 0.75*<dog>>"
    assert substitute("a <{emb}>", "emb", "cat-step100") == "a <cat-step100>"
    with pytest.raises(GridError, match="cannot evaluate"):
        substitute("{1-emb}", "emb", "cat")
    with pytest.raises(GridError, match="cannot evaluate"):
        substitute("{__import__('os')}", "w", "1")


def test_sweeping_a_setting_without_placeholder():
    base = GenerateRequest("a red circle")
    assert requests_for(base, "guidance", "2").guidance == 2.0
    assert requests_for(base, "scheduler", "euler").scheduler == "euler"
    with pytest.raises(GridError, match=r"no \{colour\} placeholder"):
        requests_for(base, "colour", "red")
    with pytest.raises(GridError, match="not a valid steps"):
        requests_for(base, "steps", "many")


def test_compose_lays_out_labelled_cells():
    cells = [[Image.new("RGB", (16, 16), c) for c in ("red", "blue", "green")] for _ in range(2)]
    sheet = compose(cells, ["w=0", "w=1"], ["seed 0", "seed 1", "seed 2"])
    assert sheet.size == (ROW_LABEL_W + 3 * CELL, LABEL + 2 * CELL)
    assert sheet.getpixel((ROW_LABEL_W + CELL + 5, LABEL + CELL + 5)) == (0, 0, 255)  # row 1, seed 1


def test_render_grid_cells_are_the_single_images():
    import numpy as np

    from studio.generation import Session
    from trainers.models import LoadedModel
    from trainers.tiny import tiny_pipeline

    session = Session(LoadedModel(pipe=tiny_pipeline("sd1"), family="w32", source="tiny"))
    base = GenerateRequest("a {c} circle", steps=4)
    grid, results = render_grid(session, base, [0, 1], ("c", ["red", "blue"]))
    assert grid.size == (ROW_LABEL_W + 2 * CELL, LABEL + 2 * CELL)
    assert len(results) == 2 and len(results[0]) == 2
    single = session.generate(GenerateRequest("a blue circle", seed=1, steps=4))[0]
    assert np.array_equal(np.asarray(results[1][1].image), np.asarray(single.image))
