"""Command `generate`, and the helpers every image command shares (their options are studio/cli_options.py,
the other commands studio/cli_explore.py): thin doors onto studio.generation."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
from dataclasses import replace
from pathlib import Path

from embeddings.files import refuse_file_as_folder
from studio.cli_options import (
    add_command,
    check_img2img,
    check_model_options,
    exists_error,
    force_option,
    img2img_options,
    model_options,
    refuse_existing,
    sampling_options,
    store_of,
)

GENERATE_EPILOG = """\
Examples:
  tokensmith generate "a red circle on a blue background" --seed 3 --out circle.png
  tokensmith generate "a <my-cat> on a yellow background" --negative "blue" -n 4 --out cats/
  tokensmith generate "a puppy" --swap 'puppy=<my-cat>'          # same image as writing "a <my-cat>"
  tokensmith generate "a <0.6*red + 0.4*yellow> circle"          # inline token blend
  tokensmith generate "a [red:blue:0.4] (circle:1.3)"           # prompt editing and weights
  tokensmith generate "a circle" --guide color=green --guide brightness=0.7,scale=0.3
  tokensmith generate "a blue square" --init-image in.png --strength 0.5 --trace trace/
  tokensmith generate "a <sd15-style> house" --model ./sdxl --partial   # SD 1.x embedding, clip_l only

Prompt language: <name> uses a stored embedding; (text:1.2) weights; <0.5*a + 0.5*<b>> and
<slerp(<a>, <b>, 0.3)> blend tokens; [from:to:0.4] switches prompt at 40% of the steps.
Every PNG carries its provenance; `tokensmith replay IMAGE --out NEW` makes it again.
--out is a .png file, or a folder: one that exists, or any name that ends with / (v1.2/ is a folder).
Nothing is overwritten: an existing --out FILE.png is refused (--force replaces it), and in a folder an
image whose name is taken gets the next free one (a-red-circle-s0-2.png).
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    gen = add_command(
        subparsers,
        common,
        "generate",
        "generate images from a prompt (stored embeddings, blends, swaps, guides)",
        GENERATE_EPILOG,
    )
    gen.add_argument("prompt", help="the prompt (see the prompt language below)")
    model_options(gen)
    sampling_options(gen)
    gen.add_argument("-n", "--num-images", type=int, default=1, help="how many images (default 1)")
    img2img_options(gen, "start from this image (img2img)")
    gen.add_argument(
        "--out",
        metavar="PATH",
        help="the PNG for one image, or a folder for several (default: ./generated/); a name ending in / "
        "is always a folder",
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
    force_option(gen)
    gen.set_defaults(run=run_generate)


# --- helpers ---


def session_for(args):
    """A generation session on the model the arguments name, with --partial's install when given."""
    from studio.generation import Session
    from trainers.models import load_model

    check_model_options(args.model, getattr(args, "model_config", None), args.command)
    session = Session(load_model(args.model, config=getattr(args, "model_config", None)))
    session.encoder.partial = getattr(args, "partial", False)
    return session


def check_embeddings(requests, store) -> None:
    """Before any model loads: every <name> the requests use (prompts, negative prompts, blend operands,
    swap targets) is stored, so a typo in a grid's last row is not found after the rows above it sampled.
    The error is the one sampling would give (studio.generation.load_stored: close names suggested)."""
    from studio.generation import load_stored, parse
    from studio.generation.prompt import EmbeddingRef, embedding_names
    from studio.generation.swaps import apply_swaps

    names: list[str] = []
    for req in requests:
        targets = tuple(EmbeddingRef(t[1:-1]) for t in req.swaps.values() if t.startswith("<"))
        for text in (req.prompt, req.negative):
            for name in embedding_names(apply_swaps(parse(text), req.swaps) + targets):
                if name not in names:
                    names.append(name)
    for name in names:
        load_stored(name, store)


def check_guides(requests) -> None:
    """Before any model loads: every --guide and --guide-module of `requests` parses, its match= image reads
    and its module imports (the error is the one sampling would give, minutes later on SDXL)."""
    from studio.generation import parse_guide

    for spec in dict.fromkeys(spec for req in requests for spec in req.guides):
        parse_guide(spec)


def make_request(args, prompt: str, **overrides):
    """A GenerateRequest from the shared sampling options, with `overrides` applied."""
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


class StepProgress:
    """A tqdm bar on stderr fed by the session's on_step, drawn at the first step: a prompt refused before
    sampling (an unknown embedding, a bad swap) shows its error alone, without an empty bar above it.
    `total` None: the steps of the first step's request (its images × the steps each runs)."""

    def __init__(self, total: int | None, desc: str) -> None:
        self.total, self.desc = total, desc
        self.bar = None

    def __call__(self, info) -> None:
        if self.bar is None:
            if self.total is None:
                self.total = info.num_images * info.total_steps
            from tqdm import tqdm

            from studio.cli import bar_options

            self.bar = tqdm(total=self.total, desc=self.desc, unit="step", leave=False, **bar_options())
        self.bar.update(1)

    def write(self, line: str) -> None:
        """`line` on stdout now (a pipe reader sees it at once); on a terminal, above the bar rather than
        through it. (Into a log, tqdm.write would draw the bar that bar_options holds back.)"""
        if self.bar is None or not sys.stderr.isatty():
            print(line, flush=True)
            return
        from tqdm import tqdm

        tqdm.write(line, file=sys.stdout)
        sys.stdout.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _slug(prompt: str) -> str:
    return (re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:48] or "image").rstrip("-")


def out_file(out: str | None) -> Path | None:
    """--out as the PNG file to write, or None when it names a folder (or is not given).

    A folder is one that exists or a name that ends with '/': `v1.2/` and an existing `v1.2 outputs` are
    folders, not files of the wrong type. Any other name with a suffix other than .png is refused."""
    if out is None:
        return None
    path = Path(out).expanduser()
    if out.endswith(("/", os.sep)) or path.is_dir():
        return None
    if path.suffix.lower() == ".png":
        return path
    if path.suffix:
        raise ValueError(
            f"--out {out}: images are written as PNG: give a .png name, or a folder (end a new folder's "
            f"name with /: --out {out}/)"
        )
    return None


def _output_paths(
    out: str | None, prompt: str, seeds: list[int], *, trace: Path | None, force: bool
) -> list[Path]:
    """Where each image goes: `out` itself (or out-sSEED.png) is refused if it exists, unless `force`; in a
    folder an existing name gets the next free suffix (-2, -3, ...) so no earlier image is lost."""
    file = out_file(out)
    if trace is not None:
        refuse_file_as_folder(trace, "--trace")
    if file is not None:
        paths = [file] if len(seeds) == 1 else [file.with_name(f"{file.stem}-s{s}.png") for s in seeds]
        for path in paths:
            refuse_existing(path, force)
            if trace is not None:
                refuse_existing(_trace_path(trace, path), force)
        return paths
    folder = Path(out).expanduser() if out is not None else Path("generated")
    refuse_file_as_folder(folder)  # `--out notes` with a file `notes`: said now, not after sampling
    return [_free_name(folder, f"{_slug(prompt)}-s{s}", trace=trace, force=force) for s in seeds]


def _free_name(folder: Path, stem: str, *, trace: Path | None, force: bool) -> Path:
    """folder/stem.png, or stem-2.png, stem-3.png, ... whichever (with its trace) is not taken."""
    n = 1
    while True:
        path = folder / (f"{stem}.png" if n == 1 else f"{stem}-{n}.png")
        # lexists: a broken link is taken too (the write cannot claim its name)
        taken = os.path.lexists(path) or (trace is not None and os.path.lexists(_trace_path(trace, path)))
        if force or not taken:
            return path
        n += 1


def _write_image(result, path: Path, *, stem: str | None, trace: Path | None, force: bool) -> Path:
    """Write `result` to `path`; into a folder (`stem`: the name's stem before its -2, -3 suffix), a name that
    another process took while this one sampled moves on to the next free one, claimed by the write itself,
    so no sampled image is thrown away."""
    from studio.generation import save_png

    while True:
        try:
            return save_png(result, path, overwrite=force)
        except FileExistsError:  # without --force only: the write never replaces a file then
            if stem is None:  # an --out FILE that appeared meanwhile: refused, naming it (not its temp file)
                raise exists_error(path) from None
            taken, path = path, _free_name(path.parent, stem, trace=trace, force=False)
            if path == taken:  # the name looks free but cannot be written: say so rather than loop
                raise exists_error(path) from None


def _write_result(result, path: Path, args, *, into_folder: bool) -> dict:
    """Write one generated image (and its trace strip); the entry `generate` prints for it."""
    from studio.generation.sheets import save_sheet, sheet_provenance

    stem = f"{_slug(args.prompt)}-s{result.seed}" if into_folder else None
    path = _write_image(result, path, stem=stem, trace=args.trace, force=args.force)
    entry = {"path": str(path), "seed": result.seed}
    if result.trace is not None:
        trace = _trace_path(args.trace, path)
        try:
            chunk = sheet_provenance("trace", [(result.provenance, None)])  # its image's
            save_sheet(result.trace, chunk, trace, overwrite=args.force)
        except FileExistsError:  # made while this one sampled: named as itself, not as the temp file
            raise exists_error(trace) from None
        entry["trace"] = str(trace)
    return entry | {"provenance": result.provenance}


def _trace_path(trace: Path, image: Path) -> Path:
    return trace / f"{image.stem}-trace.png"


def _trace_steps(text: str | None, total: int) -> tuple[int, ...]:
    from studio.generation.trace import default_trace_steps

    if not text:
        return tuple(default_trace_steps(total))
    try:
        steps = tuple(sorted({int(s) for s in text.split(",") if s.strip()}))
    except ValueError as exc:
        raise ValueError(f"--trace-steps {text!r}: give 0-based step numbers like 0,5,10") from exc
    if not steps or min(steps) < 0 or max(steps) >= total:
        raise ValueError(f"--trace-steps {text!r}: this run's sampling steps are 0 to {total - 1}")
    return steps


def _wrote_line(entry: dict) -> str:
    trace = f", trace {entry['trace']}" if "trace" in entry else ""
    return f"wrote {entry['path']} (seed {entry['seed']}){trace}"


def _rest_note(written: list[dict], seeds: list[int], paths: list[Path], *, into_folder: bool) -> str:
    """'2 of 6 images were written: a-s0.png, a-s1.png; --seed 2 -n 4 makes the rest'. One image left of a
    batch into `--out FILE.png` names its own file: one image alone would be written as FILE.png."""
    done = len(written)
    shown = ", ".join(entry["path"] for entry in written)
    left = len(seeds) - done
    out = f" --out {shlex.quote(str(paths[done]))}" if left == 1 and not into_folder else ""
    rest = f"--seed {seeds[done]} -n {left}{out} makes the rest"
    return f"{done} of {len(seeds)} images were written: {shown}; {rest}"


def _write_each(session, req, paths: list[Path], args, *, store, progress, written: list[dict]) -> None:
    """Sample and write `req`'s images one by one into `paths`, appending each one's entry to `written` and
    printing its line as it is written; a failure at a later image names the images already kept."""
    from embeddings.errors import TokensmithError
    from embeddings.files import write_failure_error
    from studio.cli import user_text

    seeds = [req.seed + index for index in range(req.num_images)]
    into_folder = out_file(args.out) is None
    images = session.each_image(req, store=store, on_step=progress)  # each one as soon as it is sampled
    for path in paths:
        try:
            result = next(images)
        except (TokensmithError, ValueError) as exc:  # e.g. out of memory at a larger seed's image
            if not written:
                raise
            note = _rest_note(written, seeds, paths, into_folder=into_folder)
            raise TokensmithError(f"{user_text(exc)} ({note})") from exc
        try:
            written.append(_write_result(result, path, args, into_folder=into_folder))
        except OSError as exc:  # a full or read-only disk: the images already written are kept, and named
            done = [entry["path"] for entry in written]
            then = "run the same command again"
            raise write_failure_error(exc, then=then, written=done, total=len(paths)) from None
        if not args.json:
            progress.write(_wrote_line(written[-1]))


# --- commands ---


def run_generate(args) -> int:
    from studio.cli import UsageError
    from studio.generation import check_swaps

    if args.trace_steps is not None and args.trace is None:
        raise UsageError("--trace-steps needs --trace DIR (the folder for the trace strips)")
    check_img2img(args.init_image, args.strength, [args.scheduler])
    seeds = list(range(args.seed, args.seed + max(args.num_images, 1)))
    paths = _output_paths(args.out, args.prompt, seeds, trace=args.trace, force=args.force)
    req = make_request(
        args, args.prompt, num_images=args.num_images, init_image=args.init_image, strength=args.strength
    )
    check_swaps([req])
    check_guides([req])
    store = store_of(args)
    check_embeddings([req], store)
    session = session_for(args)
    # the session's own count (img2img runs part, PNDM's warm-up counts too); it also checks the whole
    # batch (its last seed in range) before the first image samples
    steps = session.step_count(req)
    if args.trace:
        req = replace(req, trace_steps=_trace_steps(args.trace_steps, steps))
    progress = StepProgress(args.num_images * steps, "generate")
    written: list[dict] = []
    try:
        _write_each(session, req, paths, args, store=store, progress=progress, written=written)
    except KeyboardInterrupt:  # what is written stays, and is named (as `import` does)
        progress.close()  # first: the lines below would otherwise run through the bar
        if written:
            if args.json:
                print(json.dumps(written, indent=2))
            note = _rest_note(written, seeds, paths, into_folder=out_file(args.out) is None)
            print(f"tokensmith generate: {note}", file=sys.stderr)
        raise
    finally:
        progress.close()
    if args.json:
        print(json.dumps(written, indent=2))
    return 0
