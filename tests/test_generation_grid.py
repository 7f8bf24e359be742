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


def test_a_long_row_label_wraps_onto_lines_instead_of_losing_its_end():
    from PIL import ImageDraw

    from studio.generation.grid import label_lines

    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label = "0.75 <my-long-cat-name> + 0.25 <another-long-dog>"
    lines = label_lines(label, ROW_LABEL_W - 8, draw, max_lines=9)
    assert len(lines) > 1 and " ".join(lines) == label  # every weight and name is on the sheet
    assert all(draw.textlength(line) <= ROW_LABEL_W - 8 for line in lines)
    squeezed = label_lines(label, ROW_LABEL_W - 8, draw, max_lines=1)
    assert len(squeezed) == 1 and squeezed[0].endswith("…")
    sheet = compose([[Image.new("RGB", (16, 16), "red")]], [label], ["seed 0"])
    inked_rows = {
        y
        for y in range(LABEL, LABEL + CELL)
        for x in range(ROW_LABEL_W)
        if sheet.getpixel((x, y)) != (255, 255, 255)
    }
    assert max(inked_rows) - min(inked_rows) > 12  # drawn on more than one line


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


@pytest.mark.parametrize("size", [(32, 64), (64, 32)])
def test_cells_take_the_images_aspect_ratio(size):
    red, blue = Image.new("RGB", size, "red"), Image.new("RGB", size, "blue")
    sheet = compose([[red], [blue]], ["a", "b"], ["seed 0"])
    cell_h = CELL * size[1] // size[0]
    assert sheet.size == (ROW_LABEL_W + CELL, LABEL + 2 * cell_h)
    x = ROW_LABEL_W + CELL // 2
    assert sheet.getpixel((x, LABEL + cell_h - 1)) == (255, 0, 0)  # row 1 keeps its last line
    assert sheet.getpixel((x, LABEL + cell_h)) == (0, 0, 255)  # row 2 starts right after it


def test_a_trace_strip_takes_the_images_aspect_ratio():
    from studio.generation.trace import LABEL_H, ROW_LABEL_W, Trace, TraceFrame

    tall = Image.new("RGB", (32, 64), "red")
    strip = Trace([TraceFrame(0, 999, tall, tall), TraceFrame(3, 0, tall, tall)]).strip()
    assert strip.size == (ROW_LABEL_W + 2 * CELL, LABEL_H + 2 * 2 * CELL)


def test_a_huge_seed_range_is_refused_before_it_is_built():
    with pytest.raises(GridError, match="give 1 to 64 seeds"):
        parse_seeds("0-1000000000")
    with pytest.raises(GridError, match="give 1 to 64 seeds"):
        parse_seeds("0-40,100-130")


def test_a_strength_sweep_needs_an_init_image():
    with pytest.raises(GridError, match="--sweep strength changes nothing without --init-image"):
        requests_for(GenerateRequest("a circle"), "strength", "0.5")
    assert requests_for(GenerateRequest("a circle", init_image="in.png"), "strength", "0.5").strength == 0.5
