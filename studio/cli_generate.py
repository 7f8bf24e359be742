"""Commands `generate`, `variations`, `schedule`, `replay` and `grid`: thin doors onto studio.generation."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

GENERATE_EPILOG = """\
Examples:
  tokensmith generate "a red circle on a blue background" --seed 3 --out circle.png
  tokensmith generate "a <my-cat> on a yellow background" --negative "blue" -n 4 --out cats/
  tokensmith generate "a puppy" --swap puppy=<my-cat>            # same image as writing "a <my-cat>"
  tokensmith generate "a <0.6*red + 0.4*yellow> circle"          # inline token blend
  tokensmith generate "a [red:blue:0.4] (circle:1.3)"           # prompt editing and weights
  tokensmith generate "a circle" --guide color=green --guide brightness=0.7,scale=0.3
  tokensmith generate "a blue square" --init-image in.png --strength 0.5 --trace trace/

Prompt language: <name> uses a stored embedding; (text:1.2) weights; <0.5*a + 0.5*<b>> and
<slerp(<a>, <b>, 0.3)> blend tokens; [from:to:0.4] switches prompt at 40% of the steps.
Every PNG carries its provenance; `tokensmith replay IMAGE --out NEW` makes it again.
"""

VARIATIONS_EPILOG = """\
Example:
  tokensmith variations --init-image square.png --prompts "a red square|a green square|a blue star" \\
      --strength 0.6 --seeds 0-1 --out variations.png

One row per prompt: the init image, then one image per seed, all starting from the init image's layout.
"""

SCHEDULE_EPILOG = """\
Examples:
  tokensmith schedule --out schedule.png
  tokensmith schedule --model demo --scheduler euler --steps 30 --out euler.png --json

Plots ᾱ_t (the signal kept) and σ_t = √(1−ᾱ_t) (the noise std) over the model's training timesteps, marks
the timesteps the scheduler visits, and plots the noise level per sampling step (log scale).
"""

REPLAY_EPILOG = """\
Example:
  tokensmith replay generated/a-red-circle-s3.png --out again.png

Reads the image's provenance chunk and generates it again (pixel-identical on the same machine); says
what is missing if an embedding, the model or the init image is not available or has changed.
"""

GRID_EPILOG = """\
Examples:
  tokensmith grid "a <{w}*<cat> + {1-w}*<dog>>" --seeds 0-3 --sweep "w=0,0.25,0.5,0.75,1" --out blend.png
  tokensmith grid "a <{emb}> on a mat" --seeds 0-1 --sweep "emb=cat-step100,cat-step200" --out ckpt.png
  tokensmith grid "a red circle" --seeds 0-3 --sweep "guidance=1,2,4,8" --out cfg.png

Seeds across, one row per swept value. {NAME} in the prompt takes each value; {1-w}-style arithmetic
works for numbers. Sweeping guidance, steps, strength or scheduler without a placeholder sets that option.
"""


# --- shared options ---

# The names of studio.generation.schedule.SCHEDULERS, repeated so `--help` does not import torch (a test
# checks they agree).
SCHEDULERS = ("ddim", "ddpm", "dpm", "euler", "euler-a", "heun", "pndm", "unipc")
DEFAULT_SCHEDULER = "dpm"


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        default="demo",
        help="demo (default), a diffusers folder, a .safetensors/.ckpt, or a hub id",
    )
    parser.add_argument(
        "--model-config", metavar="DIR", help="configs for a single-file checkpoint (offline)"
    )


def _sampling_options(parser: argparse.ArgumentParser, *, seeds: bool = False) -> None:
    parser.add_argument("--negative", default="", help="negative prompt (may use <name>)")
    if not seeds:
        parser.add_argument(
            "--seed", type=int, default=0, help="seed of the first image (default 0); image k uses seed+k"
        )
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    parser.add_argument(
        "--guidance",
        type=float,
        default=None,
        help="classifier-free guidance scale (default: demo 4, SDXL 5, else 7.5)",
    )
    parser.add_argument(
        "--scheduler",
        default=DEFAULT_SCHEDULER,
        choices=sorted(SCHEDULERS),
        help=f"sampler (default {DEFAULT_SCHEDULER})",
    )
    parser.add_argument("--width", type=int, help="image width (default: the model's native size)")
    parser.add_argument("--height", type=int, help="image height (default: the model's native size)")
    parser.add_argument(
        "--swap",
        action="append",
        default=[],
        metavar="WORD=<name>",
        help="make WORD stand for an embedding (repeatable)",
    )
    parser.add_argument(
        "--guide",
        action="append",
        default=[],
        metavar="SPEC",
        help="loss guide: color=NAME|#hex, brightness=F, contrast=F, match=PATH; "
        "add ,scale=S ,every=K (repeatable)",
    )
    parser.add_argument(
        "--guide-module",
        action="append",
        default=[],
        metavar="MODULE:FUNCTION",
        help="your own loss: function(image (B,3,H,W) in [0,1]) -> scalar; "
        "add ,scale=S ,every=K (repeatable)",
    )


def register(subparsers, common: argparse.ArgumentParser) -> None:
    def add(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        return subparsers.add_parser(
            name,
            parents=[common],
            help=help_text,
            description=help_text[0].upper() + help_text[1:] + ".",
            epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    gen = add(
        "generate",
        "generate images from a prompt (stored embeddings, blends, swaps, guides)",
        GENERATE_EPILOG,
    )
    gen.add_argument("prompt", help="the prompt (see the prompt language below)")
    _model_options(gen)
    _sampling_options(gen)
    gen.add_argument("-n", "--num-images", type=int, default=1, help="how many images (default 1)")
    gen.add_argument("--init-image", type=Path, help="start from this image (img2img)")
    gen.add_argument(
        "--strength",
        type=float,
        default=0.6,
        help="img2img: how much of the schedule to re-run, 0-1 (default 0.6)",
    )
    gen.add_argument(
        "--out", type=Path, help="the PNG for one image, or a folder for several (default: ./generated/)"
    )
    gen.add_argument(
        "--trace",
        type=Path,
        metavar="DIR",
        help="save x_t and the predicted image at chosen steps as a strip",
    )
    gen.add_argument(
        "--trace-steps", metavar="I,J,...", help="0-based steps to trace (default: 6 spread over the run)"
    )
    gen.add_argument("--json", action="store_true", help="print the written paths and provenance as JSON")
    gen.set_defaults(run=run_generate)

    var = add(
        "variations", "render one image's layout under several prompts (img2img) as a grid", VARIATIONS_EPILOG
    )
    var.add_argument("--init-image", type=Path, required=True, help="the image whose layout is kept")
    var.add_argument("--prompts", required=True, help='prompts separated by "|"')
    var.add_argument("--seeds", default="0", help="seeds, e.g. 0-3 or 1,5 (default 0)")
    var.add_argument(
        "--strength", type=float, default=0.6, help="how much of the schedule to re-run, 0-1 (default 0.6)"
    )
    var.add_argument("--out", type=Path, required=True, help="the grid PNG")
    _model_options(var)
    _sampling_options(var, seeds=True)
    var.set_defaults(run=run_variations)

    sch = add("schedule", "plot the noise schedule and the timesteps a scheduler visits", SCHEDULE_EPILOG)
    _model_options(sch)
    sch.add_argument(
        "--scheduler",
        default=DEFAULT_SCHEDULER,
        choices=sorted(SCHEDULERS),
        help=f"sampler (default {DEFAULT_SCHEDULER})",
    )
    sch.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    sch.add_argument("--out", type=Path, required=True, help="the plot PNG")
    sch.add_argument("--json", action="store_true", help="print the visited timesteps with ᾱ and σ as JSON")
    sch.set_defaults(run=run_schedule)

    rep = add("replay", "generate an image again from the provenance in its PNG", REPLAY_EPILOG)
    rep.add_argument("image", type=Path, help="a PNG written by tokensmith")
    rep.add_argument("--out", type=Path, required=True, help="where to write the new PNG")
    rep.add_argument("--model", help="use this model instead of the recorded one")
    rep.set_defaults(run=run_replay)

    grid = add("grid", "render a labelled grid of seeds × a swept value", GRID_EPILOG)
    grid.add_argument("prompt", help="prompt with {NAME} placeholders")
    grid.add_argument("--seeds", default="0-3", help="seeds across, e.g. 0-3 or 1,5,9 (default 0-3)")
    grid.add_argument("--sweep", required=True, metavar="NAME=V1,V2,...", help="the value down the rows")
    grid.add_argument("--out", type=Path, required=True, help="the grid PNG")
    _model_options(grid)
    _sampling_options(grid, seeds=True)
    grid.set_defaults(run=run_grid)


# --- helpers ---


def _session(args):
    from studio.generation import Session
    from trainers.models import load_model

    return Session(load_model(args.model, config=getattr(args, "model_config", None)))


def _store(args):
    from embeddings import Store

    return Store.for_home(args.home)


def _request(args, prompt: str, **overrides):
    from studio.generation import GenerateRequest, swaps_from_specs

    guides = tuple(args.guide) + tuple(f"module={m}" for m in args.guide_module)
    fields = dict(
        prompt=prompt,
        negative=args.negative,
        seed=getattr(args, "seed", 0),
        steps=args.steps,
        guidance=args.guidance,
        scheduler=args.scheduler,
        width=args.width,
        height=args.height,
        swaps=swaps_from_specs(args.swap),
        guides=guides,
    )
    fields.update(overrides)
    return GenerateRequest(**fields)


class _Progress:
    """A tqdm bar on stderr fed by the session's on_step."""

    def __init__(self, total: int, desc: str) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="step", file=sys.stderr, leave=False, dynamic_ncols=True)

    def __call__(self, info) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _slug(prompt: str) -> str:
    return (re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "image").rstrip("-")


def _output_paths(out: Path | None, prompt: str, seeds: list[int]) -> list[Path]:
    if out is not None and out.suffix.lower() == ".png":
        if len(seeds) == 1:
            return [out]
        return [out.with_name(f"{out.stem}-s{s}.png") for s in seeds]
    if out is not None and out.suffix:
        raise ValueError(f"--out {out}: give a .png file or a folder")
    folder = out or Path("generated")
    return [folder / f"{_slug(prompt)}-s{s}.png" for s in seeds]


def _trace_steps(text: str | None, total: int) -> tuple[int, ...]:
    from studio.generation.trace import default_trace_steps

    if not text:
        return tuple(default_trace_steps(total))
    try:
        steps = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError as exc:
        raise ValueError(f"--trace-steps {text!r}: give 0-based step numbers like 0,5,10") from exc
    if not steps or min(steps) < 0 or max(steps) >= total:
        raise ValueError(f"--trace-steps {text!r}: steps run from 0 to {total - 1}")
    return steps


# --- commands ---


def run_generate(args) -> int:
    from studio.generation import save_image, save_png
    from studio.generation.img2img import check_strength

    if args.init_image is not None:
        check_strength(args.strength)
        if not args.init_image.is_file():
            raise FileNotFoundError(f"--init-image {args.init_image} does not exist")
    seeds = list(range(args.seed, args.seed + max(args.num_images, 1)))
    paths = _output_paths(args.out, args.prompt, seeds)
    run_steps = (
        args.steps if args.init_image is None else max(1, min(int(args.steps * args.strength), args.steps))
    )
    trace_steps = _trace_steps(args.trace_steps, run_steps) if args.trace else ()
    req = _request(
        args,
        args.prompt,
        num_images=args.num_images,
        init_image=args.init_image,
        strength=args.strength,
        trace_steps=trace_steps,
    )
    session = _session(args)
    progress = _Progress(args.num_images * run_steps, "generate")
    try:
        results = session.generate(req, store=_store(args), on_step=progress)
    finally:
        progress.close()
    written = []
    for result, path in zip(results, paths, strict=True):
        save_png(result, path)
        entry = {"path": str(path), "seed": result.seed}
        if result.trace is not None:
            entry["trace"] = str(save_image(result.trace, args.trace / f"{path.stem}-trace.png"))
        written.append(entry | {"provenance": result.provenance})
    if args.json:
        print(json.dumps(written, indent=2))
    else:
        for entry in written:
            print(
                f"wrote {entry['path']} (seed {entry['seed']})"
                + (f", trace {entry['trace']}" if "trace" in entry else "")
            )
    return 0


def run_variations(args) -> int:
    from studio.generation import compose, parse_seeds, save_image
    from studio.generation.img2img import check_strength, load_init_image

    check_strength(args.strength)
    prompts = [p.strip() for p in args.prompts.split("|") if p.strip()]
    if not prompts:
        raise ValueError('--prompts is empty: give prompts separated by "|", e.g. "a red square|a blue star"')
    seeds = parse_seeds(args.seeds)
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: give a .png file for the grid")
    session = _session(args)
    size = args.width or session.model.resolution, args.height or session.model.resolution
    init, _sha = load_init_image(args.init_image, size)
    run_steps = max(1, int(args.steps * args.strength))
    progress = _Progress(len(prompts) * len(seeds) * run_steps, "variations")
    rows = []
    try:
        for prompt in prompts:
            req = _request(args, prompt, init_image=args.init_image, strength=args.strength)
            row = [init]
            for seed in seeds:
                row.append(
                    session.generate(_with_seed(req, seed), store=_store(args), on_step=progress)[0].image
                )
            rows.append(row)
    finally:
        progress.close()
    save_image(compose(rows, prompts, ["init image"] + [f"seed {s}" for s in seeds]), args.out)
    print(f"wrote {args.out} ({len(prompts)} prompts × {len(seeds)} seeds)")
    return 0


def _with_seed(req, seed: int):
    from dataclasses import replace

    return replace(req, seed=seed, num_images=1)


def run_schedule(args) -> int:
    from studio.generation import make_scheduler, plot_schedule, schedule_curves
    from trainers.models import load_model

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: give a .png file for the plot")
    model = load_model(args.model, config=args.model_config)
    scheduler = make_scheduler(args.scheduler, model.pipe.scheduler.config)
    curves = schedule_curves(scheduler, args.steps)
    title = f"{args.model} ({model.family}, {model.prediction_type}) · {args.scheduler}, {args.steps} steps"
    plot_schedule(curves, args.out, title=title)
    if args.json:
        print(
            json.dumps(
                {
                    "out": str(args.out),
                    "model": args.model,
                    "scheduler": args.scheduler,
                    "steps": curves.table(),
                },
                indent=2,
            )
        )
    else:
        print(
            f"wrote {args.out}: {len(curves.visited)} timesteps visited, "
            f"from t={curves.visited[0]} to t={curves.visited[-1]}"
        )
    return 0


def run_replay(args) -> int:
    import numpy as np
    from PIL import Image

    from studio.generation import replay, save_png

    result = replay(args.image, store=_store(args), model=args.model)
    save_png(result, args.out)
    with Image.open(args.image) as original:
        same = np.array_equal(np.asarray(original.convert("RGB")), np.asarray(result.image))
    verdict = (
        "pixel-identical to the original"
        if same
        else "differs from the original (another machine or library version?)"
    )
    print(f"wrote {args.out}: {verdict}")
    return 0


def run_grid(args) -> int:
    from studio.generation import parse_seeds, parse_sweep, render_grid, save_image

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: give a .png file for the grid")
    seeds = parse_seeds(args.seeds)
    sweep = parse_sweep(args.sweep)
    session = _session(args)
    progress = _Progress(len(seeds) * len(sweep[1]) * args.steps, "grid")
    try:
        grid, _results = render_grid(
            session, _request(args, args.prompt), seeds, sweep, store=_store(args), on_step=progress
        )
    finally:
        progress.close()
    save_image(grid, args.out)
    print(f"wrote {args.out} ({len(sweep[1])} values × {len(seeds)} seeds)")
    return 0
