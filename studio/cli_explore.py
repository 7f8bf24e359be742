"""Commands `variations`, `schedule`, `replay` and `grid`: exploring a model around one prompt or image."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from studio.cli_generate import (
    StepProgress,
    check_embeddings,
    check_guides,
    make_request,
    session_for,
)
from studio.cli_options import (
    DEFAULT_SCHEDULER,
    SCHEDULERS,
    add_command,
    check_img2img,
    check_model_options,
    force_option,
    img2img_options,
    model_options,
    refuse_existing,
    sampling_options,
    store_of,
)

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
Examples:
  tokensmith replay generated/a-red-circle-s3.png --out again.png
  tokensmith replay cfg.png --cell 3 --out cell3.png        # image 3 (row by row) of a grid

Reads the image's provenance chunk and generates it again (pixel-identical on the same machine); says
what is missing, and writes nothing, if an embedding, the model, the init image, a match= guide image or
a --guide-module's source is not available or has changed. A grid, variations sheet or trace strip records
the provenance of each image in it: --cell K replays one.

An image made with --guide-module names Python code that a replay would import and run: replay refuses it
and names the module's file. Read that file, then add --allow-guide-modules; the module runs only if its
source is the one the image recorded (same sha256).
"""

GRID_EPILOG = """\
Examples:
  tokensmith grid "a <{w}*<cat> + {1-w}*<dog>>" --seeds 0-3 --sweep "w=0,0.25,0.5,0.75,1" --out blend.png
  tokensmith grid "a <{emb}> on a mat" --seeds 0-1 --sweep "emb=cat-step100,cat-step200" --out ckpt.png
  tokensmith grid "a red circle" --seeds 0-3 --sweep "guidance=1,2,4,8" --out cfg.png
  tokensmith grid "a red circle" --init-image in.png --seeds 0-1 --sweep "strength=0.3,0.6,0.9" --out s.png

Seeds across, one row per swept value. {NAME} in the prompt takes each value; {1-w}-style arithmetic
works for numbers. Sweeping guidance, steps, strength or scheduler without a placeholder sets that option
(strength needs --init-image).
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    def add(name: str, help_text: str, epilog: str) -> argparse.ArgumentParser:
        return add_command(subparsers, common, name, help_text, epilog)

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
    var.add_argument(
        "--json", action="store_true", help="print the grid's path, prompts, seeds and each cell as JSON"
    )
    force_option(var)
    model_options(var)
    sampling_options(var, seeds=True)
    var.set_defaults(run=run_variations)

    sch = add("schedule", "plot the noise schedule and the timesteps a scheduler visits", SCHEDULE_EPILOG)
    model_options(sch)
    sch.add_argument(
        "--scheduler",
        default=DEFAULT_SCHEDULER,
        choices=sorted(SCHEDULERS),
        help=f"sampler (default {DEFAULT_SCHEDULER})",
    )
    sch.add_argument("--steps", type=int, default=20, help="sampling steps (default 20)")
    sch.add_argument("--out", type=Path, required=True, help="the plot PNG")
    sch.add_argument("--json", action="store_true", help="print the visited timesteps with ᾱ and σ as JSON")
    force_option(sch)
    sch.set_defaults(run=run_schedule)

    rep = add("replay", "generate an image again from the provenance in its PNG", REPLAY_EPILOG)
    rep.add_argument("image", type=Path, help="a PNG written by tokensmith")
    rep.add_argument("--out", type=Path, required=True, help="where to write the new PNG")
    rep.add_argument(
        "--cell",
        type=int,
        metavar="K",
        help="replay image K (1, 2, ... row by row) of a grid or variations sheet (a trace strip: 1)",
    )
    rep.add_argument("--model", help="use this model instead of the recorded one")
    rep.add_argument(
        "--allow-guide-modules",
        action="store_true",
        help="import and run the guide modules the image names (read their source first)",
    )
    rep.add_argument(
        "--model-config",
        metavar="DIR",
        help="configs for a single-file checkpoint (offline), the recorded one or --model's",
    )
    rep.add_argument(
        "--json", action="store_true", help="print the written path and its provenance as JSON (as generate)"
    )
    force_option(rep)
    rep.set_defaults(run=run_replay)

    grid = add("grid", "render a labelled grid of seeds × a swept value", GRID_EPILOG)
    grid.add_argument("prompt", help="prompt with {NAME} placeholders")
    grid.add_argument("--seeds", default="0-3", help="seeds across, e.g. 0-3 or 1,5,9 (default 0-3)")
    grid.add_argument("--sweep", required=True, metavar="NAME=V1,V2,...", help="the value down the rows")
    grid.add_argument("--out", type=Path, required=True, help="the grid PNG")
    grid.add_argument(
        "--json", action="store_true", help="print the grid's path, the sweep, seeds and each cell as JSON"
    )
    img2img_options(grid, "start every cell from this image (img2img)")
    force_option(grid)
    model_options(grid)
    sampling_options(grid, seeds=True)
    grid.set_defaults(run=run_grid)


# --- commands ---


def run_variations(args) -> int:
    from studio.generation import check_swaps, compose, parse_seeds
    from studio.generation.grid import sheet_cells
    from studio.generation.img2img import load_init_image
    from studio.generation.sheets import save_sheet, sheet_provenance

    prompts = [p.strip() for p in args.prompts.split("|") if p.strip()]
    if not prompts:
        raise ValueError('--prompts is empty: give prompts separated by "|", e.g. "a red square|a blue star"')
    seeds = parse_seeds(args.seeds)
    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: give a .png file for the grid")
    refuse_existing(args.out, args.force)
    check_img2img(args.init_image, args.strength, [args.scheduler])
    requests = [make_request(args, p, init_image=args.init_image, strength=args.strength) for p in prompts]
    check_swaps(requests)  # across all the prompts: a swap word may belong to one of them
    check_guides(requests)
    store = store_of(args)
    check_embeddings(requests, store)  # before the first row samples, not when the row that needs it does
    session = session_for(args)
    total = len(seeds) * sum(session.step_count(req) for req in requests)  # also checks every request
    size = (
        session.model.resolution if args.width is None else args.width,
        session.model.resolution if args.height is None else args.height,
    )
    init, _sha = load_init_image(args.init_image, size)
    progress = StepProgress(total, "variations")
    results = []
    try:
        for req in requests:
            results.append(
                [session.generate(_with_seed(req, seed), store=store, on_step=progress)[0] for seed in seeds]
            )
    finally:
        progress.close()
    rows = [[init, *(result.image for result in row)] for row in results]
    sheet = compose(rows, prompts, ["init image"] + [f"seed {s}" for s in seeds])
    chunk = sheet_provenance("variations", sheet_cells(rows, results))
    written = save_sheet(sheet, chunk, args.out, overwrite=args.force)
    if args.json:
        sheet_of = {"path": str(written), "init_image": str(args.init_image)}
        report = sheet_of | {"prompts": prompts, "seeds": seeds}
        print(_sheet_json(report, chunk, [{"prompt": p} for p in prompts], seeds))
        return 0
    print(f"wrote {args.out} ({_count(len(prompts), 'prompt')} × {_count(len(seeds), 'seed')})")
    return 0


def _sheet_json(report: dict, chunk: dict, rows: list[dict], seeds: list[int]) -> str:
    """`report` (the sheet's path and what it varies) with its `cells`, numbered as `replay --cell K` takes
    them (row by row): each cell's K, its row's label (`rows[r]`: {"prompt": ...} or {"value": ...}), seed,
    provenance (as `generate --json` gives an image's) and box in the sheet (left, top, right, bottom)."""
    cells = [
        {"cell": k, **rows[(k - 1) // len(seeds)], "seed": seeds[(k - 1) % len(seeds)], **recorded}
        for k, recorded in enumerate(chunk["cells"], start=1)
    ]
    return json.dumps({**report, "cells": cells}, indent=2)


def _count(n: int, noun: str) -> str:
    """'1 seed', '2 seeds'."""
    return f"{n} {noun}{'s' * (n != 1)}"


def _with_seed(req, seed: int):
    from dataclasses import replace

    return replace(req, seed=seed, num_images=1)


def run_schedule(args) -> int:
    from studio.generation import make_scheduler, plot_schedule, schedule_curves
    from trainers.models import load_model

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: give a .png file for the plot")
    refuse_existing(args.out, args.force)
    check_model_options(args.model, args.model_config, "schedule")
    model = load_model(args.model, config=args.model_config)
    scheduler = make_scheduler(args.scheduler, model.pipe.scheduler.config)
    curves = schedule_curves(scheduler, args.steps)
    title = f"{args.model} ({model.family}, {model.prediction_type}) · {args.scheduler}, {args.steps} steps"
    refuse_existing(args.out, args.force)  # again: it may have appeared while the model loaded
    plot_schedule(curves, args.out, title=title)
    if args.json:
        print(
            json.dumps(
                {
                    "path": str(args.out),  # as every command's --json names the file it wrote
                    "out": str(args.out),  # its first name, kept for the scripts that read it
                    "model": args.model,
                    "scheduler": args.scheduler,
                    "model_evaluations": curves.evaluations,
                    "steps": curves.table(),
                },
                indent=2,
            )
        )
    else:
        print(
            f"wrote {args.out}: {len(curves.visited)} sampling steps, "
            f"from t={curves.visited[0]} to t={curves.visited[-1]}"
        )
        if curves.explanation():
            print(curves.explanation())
    return 0


def run_replay(args) -> int:
    from studio.generation import read_provenance, replay, save_png
    from studio.generation.sheets import matches_original

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: images are written as PNG (with provenance); use a .png name")
    refuse_existing(args.out, args.force)
    prov = read_provenance(args.image, cell=args.cell)  # a sheet without --cell (or a bad K): before loading
    model = args.model or prov["model"]
    if args.model_config:  # a single-file checkpoint, recorded or given, loaded offline with these configs
        check_model_options(model, args.model_config, "replay")
    progress = StepProgress(None, "replay")
    try:
        result = replay(
            args.image,
            store=store_of(args),
            model=model,
            model_config=args.model_config,
            cell=args.cell,
            on_step=progress,
            allow_guide_modules=args.allow_guide_modules,
            precise=True,  # the user's own files: say which is missing, unreadable or changed
        )
    finally:
        progress.close()
    same = matches_original(args.image, result.image, args.cell)  # before writing: --out may be the image
    written = save_png(result, args.out, overwrite=args.force)
    if args.json:  # generate --json's entry for the image, with what it was made from and the comparison
        source = {"source": str(args.image), "cell": args.cell, "identical": same}
        entry = {"path": str(written), "seed": result.seed, "provenance": result.provenance} | source
        print(json.dumps(entry, indent=2))
        return 0
    if same is None:
        verdict = "re-made the image the trace strip traces (the strip holds no copy of it to compare with)"
    elif same:
        verdict = "pixel-identical to the original" + (f"'s cell {args.cell}" if args.cell else "")
    else:
        verdict = (
            "differs from the original (another machine, library version or torch thread count: "
            "OMP_NUM_THREADS?)"
        )
    print(f"wrote {args.out}: {verdict}")
    return 0


def run_grid(args) -> int:
    from studio.generation import check_swaps, parse_seeds, parse_sweep, render_grid
    from studio.generation.grid import requests_for, sheet_cells
    from studio.generation.sheets import save_sheet, sheet_provenance

    if args.out.suffix.lower() != ".png":
        raise ValueError(f"--out {args.out}: give a .png file for the grid")
    refuse_existing(args.out, args.force)
    seeds = parse_seeds(args.seeds)
    sweep = parse_sweep(args.sweep)
    base = make_request(args, args.prompt, init_image=args.init_image, strength=args.strength)
    rows = [requests_for(base, sweep[0], value) for value in sweep[1]]  # a bad value fails before loading
    check_img2img(args.init_image, args.strength, [req.scheduler for req in rows])  # a sweep may set them
    check_swaps(rows)  # across all the rows: a swap word may occur in some swept prompts only
    check_guides(rows)
    store = store_of(args)
    check_embeddings(rows, store)  # every row's <name>s, before the first row samples
    session = session_for(args)
    progress = StepProgress(len(seeds) * sum(session.step_count(req) for req in rows), "grid")
    try:
        grid, results = render_grid(session, base, seeds, sweep, store=store, on_step=progress)
    finally:
        progress.close()
    images = [[result.image for result in row] for row in results]
    chunk = sheet_provenance("grid", sheet_cells(images, results))
    written = save_sheet(grid, chunk, args.out, overwrite=args.force)
    if args.json:
        swept = {"name": sweep[0], "values": sweep[1]}
        report = {"path": str(written), "prompt": args.prompt, "sweep": swept, "seeds": seeds}
        print(_sheet_json(report, chunk, [{"value": value} for value in sweep[1]], seeds))
        return 0
    print(f"wrote {args.out} ({_count(len(sweep[1]), 'value')} × {_count(len(seeds), 'seed')})")
    return 0
