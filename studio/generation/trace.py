"""`generate --trace`: at chosen steps, the noisy latent decoded and the predicted clean image, as a strip.

Top row: what the sampler holds at that step (x_t decoded as if it were clean); bottom row: the model's
prediction of the final image (x̂0). Columns are labelled with the step and timestep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image, ImageDraw

from studio.generation.grid import FONT, fit_width, label_font

CELL = 128  # small images are enlarged (nearest) so the strip is readable
LABEL_H = 22  # the step labels' band: FONT-px text, as the grids' labels
ROW_LABEL_W = 76  # wide enough for "predicted" in FONT px


@dataclass
class TraceFrame:
    step: int
    timestep: int
    noisy: Image.Image
    predicted: Image.Image


@dataclass
class Trace:
    frames: list[TraceFrame] = field(default_factory=list)

    def strip(self) -> Image.Image:
        """The labelled 2-row strip (x_t over x̂0), one column per traced step."""
        if not self.frames:
            raise ValueError("no steps were traced")
        first = self.frames[0].noisy
        cell_w = max(CELL, first.width)
        cell_h = cell_w * first.height // first.width  # the image's aspect ratio: tall rows for tall images
        width = ROW_LABEL_W + cell_w * len(self.frames)
        sheet = Image.new("RGB", (width, LABEL_H + 2 * cell_h), "white")
        draw = ImageDraw.Draw(sheet)
        font = label_font(FONT)
        draw.text((4, LABEL_H + cell_h // 2 - FONT), "noisy", fill="black", font=font)  # the sampler's x_t
        draw.text((4, LABEL_H + cell_h // 2), "x_t", fill="black", font=font)
        draw.text((4, LABEL_H + cell_h + cell_h // 2 - FONT), "predicted", fill="black", font=font)
        draw.text((4, LABEL_H + cell_h + cell_h // 2), "clean", fill="black", font=font)
        for col, frame in enumerate(self.frames):
            x = ROW_LABEL_W + col * cell_w
            draw.text((x + 3, 2), f"step {frame.step} t={frame.timestep}", fill="black", font=font)
            sheet.paste(fit_width(frame.noisy, cell_w), (x, LABEL_H))
            sheet.paste(fit_width(frame.predicted, cell_w), (x, LABEL_H + cell_h))
        return sheet


def default_trace_steps(total: int, count: int = 6) -> list[int]:
    """`count` steps spread evenly from the first to the last."""
    if total <= count:
        return list(range(total))
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})
