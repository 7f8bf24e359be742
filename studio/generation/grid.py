"""Fixed-seed grids: seeds across, a swept value down, every cell labelled (how users compare blends,
checkpoints and settings).

    tokensmith grid "a <{w}*<cat> + {1-w}*<dog>>" --seeds 0-3 --sweep "w=0,0.25,0.5,0.75,1"
    tokensmith grid "a <{emb}> on a mat" --seeds 0-1 --sweep "emb=cat-step100,cat-step200,cat"
    tokensmith grid "a red circle" --seeds 0-3 --sweep "guidance=1,2,4,8"

In the prompt, `{name}` is replaced by each value; `{1-w}`-style arithmetic (+ - * / and parentheses) works
for numeric values. A sweep over `guidance`, `steps`, `strength` or `scheduler` with no placeholder in the
prompt sets that setting instead.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from dataclasses import dataclass, replace
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from embeddings.errors import TokensmithError

SETTINGS = {"guidance": float, "steps": int, "strength": float, "scheduler": str}
# The layout at CELL-wide cells; a sheet of wider cells scales it with them (Layout), so that its labels read
# at the size the cells are shown at (a sheet is shown shrunk to the page's width).
CELL = 128
FONT = 15  # the labels' font size in px (PIL's own font, scalable since Pillow 10.1)
LABEL = 24  # the column labels' band
ROW_LABEL_W = 200
LINE = 19  # a row label's line height
MAX_SEEDS = 64
PLACEHOLDER = re.compile(r"\{([^{}]+)\}")


class GridError(TokensmithError, ValueError):
    """A malformed --seeds or --sweep."""


def parse_seeds(text: str) -> list[int]:
    """'0-3' -> [0, 1, 2, 3]; '1,5,9' -> [1, 5, 9]; '0-1,7' -> [0, 1, 7]."""
    seeds: list[int] = []
    too_many = GridError(f"bad --seeds {text!r}: give 1 to {MAX_SEEDS} seeds, none negative")
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(\d+)\s*-\s*(\d+)", part)
        try:
            if match:
                low, high = int(match.group(1)), int(match.group(2))
                if high < low:
                    raise ValueError
            else:
                low = high = int(part)
        except ValueError as exc:
            raise GridError(f"bad --seeds {text!r}: write a range 0-3 or a list 1,5,9") from exc
        if len(seeds) + high - low + 1 > MAX_SEEDS:  # counted before a range is built
            raise too_many
        seeds.extend(range(low, high + 1))
    if not seeds or min(seeds) < 0:  # the count was checked as the seeds were added
        raise too_many
    return seeds


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """'w=0,0.5,1' -> ('w', ['0', '0.5', '1'])."""
    name, sep, values = text.partition("=")
    name = name.strip()
    items = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name) or not items:
        raise GridError(
            f"bad --sweep {text!r}: write NAME=V1,V2,... (e.g. w=0,0.5,1) and use {{NAME}} in the prompt"
        )
    return name, items


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expr: str, name: str, value: str) -> str:
    if expr.strip() == name:
        return value
    try:
        number = float(value)
        tree = ast.parse(expr.strip(), mode="eval")
        return f"{_eval_node(tree.body, name, number):g}"
    except (ValueError, SyntaxError, ZeroDivisionError) as exc:
        raise GridError(
            f"cannot evaluate {{{expr}}} with {name}={value}: use {{{name}}} or arithmetic"
        ) from exc


def _eval_node(node: ast.AST, name: str, x: float) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == name:
        return x
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval_node(node.left, name, x), _eval_node(node.right, name, x))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval_node(node.operand, name, x)
    raise ValueError("unsupported expression")


def substitute(template: str, name: str, value: str) -> str:
    """Fill `{name}` and arithmetic like `{1-name}` in a prompt template."""
    return PLACEHOLDER.sub(lambda m: _evaluate(m.group(1), name, value), template)


def requests_for(base, name: str, value: str):
    """The request of one grid row: the prompt filled in, or a setting changed."""
    uses_placeholder = bool(PLACEHOLDER.search(base.prompt) or PLACEHOLDER.search(base.negative))
    if uses_placeholder:
        return replace(
            base, prompt=substitute(base.prompt, name, value), negative=substitute(base.negative, name, value)
        )
    if name == "strength" and base.init_image is None:
        raise GridError(
            "--sweep strength changes nothing without --init-image: strength is how much of an init image "
            "is re-made; add --init-image IMAGE"
        )
    if name in SETTINGS:
        try:
            setting = SETTINGS[name](value)
        except ValueError as exc:
            raise GridError(f"--sweep {name}: {value!r} is not a valid {name}") from exc
        if (allowed := _allowed(name, setting)) is not None:
            raise GridError(f"--sweep {name}: {value!r} is not a valid {name}: use {allowed}")
        return replace(base, **{name: setting})
    raise GridError(
        f"--sweep {name}: the prompt has no {{{name}}} placeholder and {name!r} is not one of "
        f"{', '.join(SETTINGS)}"
    )


def _allowed(name: str, setting: Any) -> str | None:
    """What a swept setting may be, when `setting` is not that (else None): said as the sweep's own error,
    not as a flag's, before any model loads."""
    from studio.generation.schedule import MAX_STEPS

    if name == "steps" and not 1 <= setting <= MAX_STEPS:
        return f"1 to {MAX_STEPS}"
    if name == "guidance" and not (math.isfinite(setting) and setting >= 0):
        return "a finite number, 0 or more"
    if name == "strength" and not 0 < setting <= 1:
        return "a number above 0 and at most 1"
    return None


def render_grid(session, base, seeds: list[int], sweep: tuple[str, list[str]], *, store=None, on_step=None):
    """Generate every (value, seed) cell; returns (grid image, [[Result per seed] per value])."""
    from studio.generation.img2img import check_strength

    name, values = sweep
    rows = [requests_for(base, name, value) for value in values]  # all checked before any rendering
    for req in rows:
        if req.init_image is not None:
            check_strength(req.strength)
    results = []
    for req in rows:
        results.append(
            [
                session.generate(replace(req, seed=seed, num_images=1), store=store, on_step=on_step)[0]
                for seed in seeds
            ]
        )
    images = [[r.image for r in row] for row in results]
    grid = compose(images, [f"{name}={v}" for v in values], [f"seed {s}" for s in seeds])
    return grid, results


@dataclass(frozen=True)
class Layout:
    """A sheet's label sizes for cells `cell_w` px wide: CELL's layout, scaled by cell_w / CELL."""

    cell_w: int

    def scaled(self, px: int) -> int:
        return max(px, round(px * self.cell_w / CELL))

    @property
    def label(self) -> int:
        return self.scaled(LABEL)

    @property
    def row_label_w(self) -> int:
        return self.scaled(ROW_LABEL_W)

    @property
    def line(self) -> int:
        return self.scaled(LINE)

    @property
    def font(self) -> ImageFont.FreeTypeFont:
        return label_font(self.scaled(FONT))


def label_font(size: int) -> ImageFont.FreeTypeFont:
    """PIL's own font at `size` px: the fixed bitmap default is 11 px whatever the cell, 4 px on a phone."""
    return ImageFont.load_default(size=size)


def compose(cells: list[list[Image.Image]], row_labels: list[str], col_labels: list[str]) -> Image.Image:
    """A labelled contact sheet; small images are enlarged with nearest-neighbour so pixels stay crisp.

    Cells take the images' aspect ratio (a 32×64 image gets a 128×256 cell), so tall images never overlap
    the next row and wide ones leave no empty band. Labels are FONT px at CELL-wide cells, and as much
    larger as the cells are.
    """
    cell_w, cell_h = _cell_size(cells)
    layout = Layout(cell_w)
    font, line_h, left = layout.font, layout.line, layout.row_label_w
    columns = max(len(row) for row in cells)
    sheet = Image.new("RGB", (left + columns * cell_w, layout.label + len(cells) * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    pad = layout.scaled(4)
    for c, label in enumerate(col_labels):
        text = _fit(label, cell_w - 2 * pad, draw, font)
        draw.text((left + c * cell_w + pad, layout.scaled(3)), text, fill="black", font=font)
    for r, row in enumerate(cells):
        lines = label_lines(
            row_labels[r], left - 2 * pad, draw, max_lines=max(1, cell_h // line_h - 1), font=font
        )
        top = layout.label + r * cell_h + (cell_h - len(lines) * line_h) // 2
        for i, line in enumerate(lines):
            draw.text((pad, top + i * line_h), line, fill="black", font=font)
        for c, image in enumerate(row):
            sheet.paste(fit_width(image, cell_w), cell_box(cells, r, c)[:2])
    return sheet


def _cell_size(cells: list[list[Image.Image]]) -> tuple[int, int]:
    """compose's cell (width, height): the widest image, at least CELL; the tallest at that width."""
    images = [img for row in cells for img in row]
    cell_w = max(CELL, max(img.width for img in images))
    return cell_w, max(cell_w * img.height // img.width for img in images)


def cell_box(cells: list[list[Image.Image]], row: int, column: int) -> tuple[int, int, int, int]:
    """Where compose pastes cells[row][column]: (left, top, right, bottom) in the sheet."""
    cell_w, cell_h = _cell_size(cells)
    image = cells[row][column]
    layout = Layout(cell_w)
    left, top = layout.row_label_w + column * cell_w, layout.label + row * cell_h
    return left, top, left + cell_w, top + max(1, cell_w * image.height // image.width)


def sheet_cells(cells: list[list[Image.Image]], results: list[list[Any]]) -> list[tuple[dict, tuple]]:
    """Each generated image's provenance and its box in compose's sheet, row by row: what a sheet's chunk
    records (sheets.sheet_provenance), so `replay --cell K` makes one again. `results[r]` are row r's
    generated images, the last ones of `cells[r]` (a variations row starts with its init image)."""
    found = []
    for r, (row, made) in enumerate(zip(cells, results, strict=True)):
        first = len(row) - len(made)
        found.extend((result.provenance, cell_box(cells, r, first + c)) for c, result in enumerate(made))
    return found


def fit_width(image: Image.Image, width: int) -> Image.Image:
    """`image` scaled to `width`, keeping its aspect ratio (nearest-neighbour when enlarging)."""
    if image.width == width:
        return image
    resample = Image.Resampling.NEAREST if image.width < width else Image.Resampling.LANCZOS
    return image.resize((width, max(1, width * image.height // image.width)), resample)


def label_lines(
    text: str,
    width: int,
    draw: ImageDraw.ImageDraw,
    *,
    max_lines: int,
    font: ImageFont.FreeTypeFont | None = None,
) -> list[str]:
    """`text` wrapped at spaces into lines of at most `width` px in `font` (None: PIL's bitmap default)
    ('0.75 <my-cat> + 0.25 <dog>' on two lines rather than cut before its second weight); a word wider than
    a line, or text beyond `max_lines`, ends in '…'."""
    lines: list[str] = []
    for word in text.split():
        joined = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(joined, font=font) <= width:
            lines[-1] = joined
        else:
            lines.append(word)
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], " ".join(lines[max_lines - 1 :])]
    return [_fit(line, width, draw, font) for line in lines] or [""]


def _fit(text: str, width: int, draw: ImageDraw.ImageDraw, font: ImageFont.FreeTypeFont | None = None) -> str:
    while text and draw.textlength(text, font=font) > width:
        text = text[:-2] + "…" if len(text) > 2 else ""
    return text
