"""Score the demo model with the judge on a fixed prompt set and fixed seeds: `python -m demo.evaluate`.

Bars (issue 3): colour ≥ 95%, background ≥ 95%, shape ≥ 80% over all shapes, and mean extent ordered
small < medium < large. Held-out concepts are scored in their own rows and count towards no bar.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from demo import DEMO_MODEL_DIR, world
from demo.judge import judge

STEPS, GUIDANCE = 20, 4.0
BARS = {"colour": 0.95, "background": 0.95, "shape": 0.80}


@dataclass(frozen=True)
class Case:
    group: str  # "colour×shape" | "background" | "size" | "held-out"
    concept: world.Concept
    seed: int

    @property
    def prompt(self) -> str:
        return world.caption(self.concept)


@dataclass
class Report:
    cases: list[Case]
    verdicts: list  # judge.Verdict per case
    seconds: float
    steps: int = STEPS
    guidance: float = GUIDANCE

    def accuracy(self, what: str, groups: tuple[str, ...]) -> float:
        defaults = {"background": world.DEFAULT_BACKGROUND}
        hits = [
            getattr(v, what) == (getattr(c.concept, what) or defaults.get(what))
            for c, v in zip(self.cases, self.verdicts, strict=True)
            if c.group in groups
        ]
        return float(np.mean(hits)) if hits else float("nan")

    def mean_extent(self, size: str) -> float:
        values = [
            v.extent
            for c, v in zip(self.cases, self.verdicts, strict=True)
            if c.group == "size" and c.concept.size == size
        ]
        return float(np.mean(values)) if values else float("nan")

    def size_ordered(self) -> bool:
        small, medium, large = (self.mean_extent(s) for s in ("small", "medium", "large"))
        return small < medium < large

    def passes(self) -> dict[str, bool]:
        seen = ("colour×shape", "background", "size")
        out = {what: self.accuracy(what, seen) >= bar for what, bar in BARS.items()}
        out["size order"] = self.size_ordered()
        return out


def cases(*, quick: bool = False) -> list[Case]:
    """The fixed prompt set: every seen colour×shape, every background, every size, every held-out concept."""
    seeds = (0,) if quick else (0, 1)
    out: list[Case] = []
    seen = [(c, s) for c in world.TRAIN_COLOURS for s in world.SHAPES if (c, s) not in world.HELD_OUT_COMBOS]
    for i, (colour, shape) in enumerate(seen):
        if quick and i % 2:
            continue
        out += [Case("colour×shape", world.Concept(shape, colour), seed) for seed in seeds]
    backgrounds = [b for b in world.BACKGROUNDS if b != world.DEFAULT_BACKGROUND]
    for i, shape in enumerate(world.SHAPES):
        for j, background in enumerate(backgrounds):
            colours = [c for c in ("red", "blue", "yellow", "white", "black") if c != background]
            colour = colours[(i + j) % len(colours)]
            if (colour, shape) in world.HELD_OUT_COMBOS:
                colour = "red"
            out.append(Case("background", world.Concept(shape, colour, background), 100 + i))
    for size in world.SIZES:
        for i, shape in enumerate(world.SHAPES):
            colour = ("red", "blue", "white", "black", "brown")[i]
            out += [Case("size", world.Concept(shape, colour, size=size), 200 + seed) for seed in seeds]
    for colour, shape in world.HELD_OUT_COMBOS:
        out += [
            Case("held-out", world.Concept(shape, colour), 300 + seed)
            for seed in (0, 1)
            if not quick or seed == 0
        ]
    return out


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    *,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    batch: int = 32,
) -> list[Image.Image]:
    """One image per (prompt, seed); each image's noise comes from its own seed, so batching is invisible."""
    import torch

    images: list[Image.Image] = []
    for i in range(0, len(prompts), batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[i : i + batch]]
        out = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=gens)
        images += out.images
    return images


def evaluate(pipe, *, quick: bool = False, steps: int = STEPS, guidance: float = GUIDANCE) -> Report:
    """Generate the fixed prompt set and judge every image."""
    chosen = cases(quick=quick)
    start = time.monotonic()
    pipe.set_progress_bar_config(disable=True)
    images = generate(
        pipe, [c.prompt for c in chosen], [c.seed for c in chosen], steps=steps, guidance=guidance
    )
    return Report(chosen, [judge(im) for im in images], time.monotonic() - start, steps, guidance)


def format_report(report: Report) -> str:
    """The printed table: accuracy per group and per shape, size extents, held-out rows, and the bars."""
    groups = ("colour×shape", "background", "size", "held-out")
    lines = [f"{'group':<14}{'n':>4}{'colour':>9}{'shape':>8}{'background':>12}"]
    for g in groups:
        n = sum(c.group == g for c in report.cases)
        accs = [report.accuracy(w, (g,)) for w in ("colour", "shape", "background")]
        lines.append(
            f"{g:<14}{n:>4}" + "".join(f"{a:>{w}.0%}" for a, w in zip(accs, (9, 8, 12), strict=True))
        )
    seen = groups[:3]
    accs = [report.accuracy(w, seen) for w in ("colour", "shape", "background")]
    n = sum(c.group in seen for c in report.cases)
    lines.append(
        f"{'all seen':<14}{n:>4}" + "".join(f"{a:>{w}.0%}" for a, w in zip(accs, (9, 8, 12), strict=True))
    )
    per_shape = []
    for shape in world.SHAPES:
        hits = [
            v.shape == shape
            for c, v in zip(report.cases, report.verdicts, strict=True)
            if c.group in seen and c.concept.shape == shape
        ]
        per_shape.append(f"{shape} {np.mean(hits):.0%}")
    lines.append("shape accuracy per shape (seen): " + ", ".join(per_shape))
    extents = ", ".join(f"{s} {report.mean_extent(s):.2f}" for s in world.SIZES)
    lines.append(f"mean extent by size word: {extents} (ordered: {report.size_ordered()})")
    passes = report.passes()
    lines.append("bars: " + ", ".join(f"{k} {'PASS' if ok else 'FAIL'}" for k, ok in passes.items()))
    n, seconds = len(report.cases), report.seconds
    lines.append(f"{n} images in {seconds:.1f} s ({report.steps} steps, guidance {report.guidance:g})")
    return "\n".join(lines)


def sample_grid(pipe, *, seed: int = 0) -> Image.Image:
    """One row per shape, one column per training colour (held-out cells show the zero-shot attempt)."""
    prompts = [f"a {c} {s}" for s in world.SHAPES for c in world.TRAIN_COLOURS]
    images = generate(pipe, prompts, [seed + i for i in range(len(prompts))])
    side = images[0].width
    grid = Image.new("RGB", (side * len(world.TRAIN_COLOURS), side * len(world.SHAPES)))
    for i, im in enumerate(images):
        grid.paste(im, ((i % len(world.TRAIN_COLOURS)) * side, (i // len(world.TRAIN_COLOURS)) * side))
    return grid.resize((grid.width * 3, grid.height * 3), Image.NEAREST)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m demo.evaluate",
        description="Score the demo model on a fixed prompt set with fixed seeds; exit 1 if a bar is missed.",
        epilog="Example: python -m demo.evaluate --model demo/model",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--model", type=Path, default=DEMO_MODEL_DIR, help="diffusers folder (default: demo/model)"
    )
    parser.add_argument("--quick", action="store_true", help="about a third of the prompts, one seed")
    parser.add_argument("--steps", type=int, default=STEPS, help=f"sampling steps (default {STEPS})")
    parser.add_argument(
        "--guidance", type=float, default=GUIDANCE, help=f"guidance scale (default {GUIDANCE})"
    )
    args = parser.parse_args(argv)
    import torch
    from diffusers import StableDiffusionPipeline

    torch.set_num_threads(1)
    if not (args.model / "model_index.json").is_file():
        print(f"no model at {args.model}: build it with `python -m demo.build`", file=sys.stderr)
        return 1
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    report = evaluate(pipe, quick=args.quick, steps=args.steps, guidance=args.guidance)
    print(format_report(report))
    return 0 if all(report.passes().values()) else 1


if __name__ == "__main__":
    sys.exit(main())
