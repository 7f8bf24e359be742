"""`tokensmith demo`: the whole story, offline, on the demo world: render a held-out concept, train a token
on it, store it, generate with it and with a blend, and write a labelled contact sheet with the judge's
scores."""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import contextmanager

from studio.cli import at_least_one
from studio.cli_train import ProgressBar, set_cpu_threads

DEMO_EXAMPLE = """Example:
  tokensmith demo                          # renders a held-out concept, trains <demo-purple-triangle>, ...
  tokensmith demo --concept "orange star" --out demo-run/"""


def register(subparsers, common) -> None:
    from trainers.config import FIELDS

    demo = subparsers.add_parser(
        "demo",
        parents=[common],
        help="the main job, offline: render a new concept, train a token for it, generate, blend, compare",
        description="Render 5 images of a concept the demo world never saw, train a token on them, store it, "
        "generate with it and with a blend, and write a labelled contact sheet with before/after "
        "judge scores.",
        epilog=DEMO_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    demo.add_argument(
        "--concept",
        default=None,
        help="a demo-world concept; held-out ones show learning best (default: purple triangle)",
    )
    demo.add_argument("--out", default=None, metavar="DIR", help="output folder (default: HOME/demo)")
    demo.add_argument(
        "--steps",
        type=at_least_one,
        default=None,
        help=f"training steps, 1 or more (default: train's, {FIELDS['steps'].default})",
    )
    demo.add_argument(
        "--seed", type=int, default=0, help="seed for the rendered images and the samples (default 0)"
    )
    demo.add_argument("--json", action="store_true", help="print the scores as JSON on stdout")
    demo.set_defaults(run=run_demo)


DEMO_CONCEPT = "purple triangle"
DEMO_IMAGES = 5
DEMO_SAMPLES = 4
# The blend row turns the token halfway to a colour word (slerp): on the demo world its samples keep the
# concept's shape in the word's colour (measured: purple triangle -> 4/4 blue triangles, two trained tokens).
# A linear 0.5/0.5 mix with a word changed nothing: the trained vectors are longer than the word's.
DEMO_BLEND_WITH = ("blue", "red")  # the first that is not the concept's own colour


def _blend_prompt(name: str, concept) -> str:
    word = next(colour for colour in DEMO_BLEND_WITH if colour != concept.colour)
    return f"a <slerp(<{name}>, {word}, 0.5)>"


def _reads_as(images) -> dict:
    """What the judge reads most often in `images`: {'reads_as': 'blue triangle', 'count': 4, 'n': 4}."""
    from collections import Counter

    from demo.judge import judge

    seen = Counter(" ".join(filter(None, (v.colour, v.shape))) or "nothing" for v in map(judge, images))
    reads_as, count = seen.most_common(1)[0]
    return {"reads_as": reads_as, "count": count, "n": len(images)}


def _judge_row(images, concept) -> dict:
    """Judge scores of samples against a concept: mean colour distance, colour and shape hit counts."""
    from demo.judge import distance_to, judge

    verdicts = [judge(image) for image in images]
    distances = [min(distance_to(image, concept), 441.7) for image in images]
    return {
        "colour_distance": round(sum(distances) / len(distances), 1),
        "colour_hits": sum(v.colour == concept.colour for v in verdicts),
        "shape_hits": sum(v.shape == concept.shape for v in verdicts),
        "n": len(images),
    }


def _demo_folder(args):
    """The output folder (--out, else HOME/demo), refused when it is a file; nothing is written yet."""
    from pathlib import Path

    out = Path(args.out).expanduser() if args.out else args.home / "demo"
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: give a folder for the demo's images and run")
    return out


def _prepare_demo_folder(out) -> None:
    """Make the output folder; an old demo run folder in it is replaced (the demo is meant to be re-run)."""
    import shutil

    run = out / "run"
    if (run / "progress.jsonl").is_file() and (run / "config.toml").is_file():
        shutil.rmtree(run)
    (out / "images").mkdir(parents=True, exist_ok=True)


def _save_png(image, path) -> None:
    """Write a PNG completely or not at all (a full disk leaves no truncated file, an older one intact)."""
    from embeddings.files import atomic_write

    with _demo_writes(path):
        atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


@contextmanager
def _demo_writes(path):
    """A full or read-only disk while writing `path` as one line that names it and says what to do."""
    from embeddings.files import write_failure_error

    try:
        yield
    except OSError as exc:
        raise write_failure_error(exc, path, then="run `tokensmith demo` again") from None


@contextmanager
def _after_storing(name: str, stored):
    """Errors after the token was stored say so: it is kept and usable, whatever failed after it."""
    from embeddings.errors import TokensmithError

    try:
        yield
    except (OSError, TokensmithError) as exc:
        raise TokensmithError(
            f"{exc}; the token <{name}> was trained and stored before this ({stored}): prompts can use it "
            "as it is"
        ) from None


def _demo_echo(bar):
    """The trainer's lines for the bar, less its advice on continuing the run with --resume: the demo has no
    --resume, it starts afresh each time."""
    from trainers.commands import RESUME_NOTE

    def echo(text: str) -> None:
        if not text.removeprefix("note: ").startswith(RESUME_NOTE):
            bar.write(text)

    return echo


def _steps_text(emb) -> str:
    """'after 150 steps', with ', kept step 125 of 150, ...' when an earlier snapshot was stored."""
    from trainers.ending import kept_note
    from trainers.storing import summary

    kept, trained = int(emb.meta["steps"]), int(summary(emb).get("trained_steps", emb.meta["steps"]))
    return ", ".join(filter(None, [f"after {trained} step{'s' * (trained != 1)}", kept_note(kept, trained)]))


def run_demo(args) -> int:
    """Render a held-out concept, train a token on it, store it, generate with it and a blend, compare."""
    import random
    import time

    from demo.world import parse_concept, render
    from embeddings import Store
    from studio.generation import GenerateRequest, Session, compose
    from trainers.config import TrainConfig
    from trainers.families import spec_for
    from trainers.models import load_model
    from trainers.storing import summary
    from trainers.trainer import RunStopped, train

    set_cpu_threads()
    started = time.monotonic()
    concept = parse_concept(args.concept or DEMO_CONCEPT)
    if not concept.is_held_out:
        print(
            f"note: the demo world already knows '{concept}'; held-out ones show learning best",
            file=sys.stderr,
        )
    name = "demo-" + f"{concept.colour}-{concept.shape}"
    out = _demo_folder(args)
    # the training config first: a value it refuses fails now, not after rendering, loading and sampling
    changes = {"steps": args.steps} if args.steps is not None else {}
    cfg = TrainConfig(
        images=str(out / "images"),
        name=name,
        run_dir=str(out / "run"),
        overwrite=True,
        seed=args.seed,
        **changes,
    )
    with _demo_writes(out):
        _prepare_demo_folder(out)
    rng = random.Random(args.seed)
    shots = [render(concept, rng) for _ in range(DEMO_IMAGES)]
    for i, shot in enumerate(shots):
        _save_png(shot, out / "images" / f"{i}.png")
    print(f"rendered {DEMO_IMAGES} images of '{concept}' into {out / 'images'}", file=sys.stderr)

    model = load_model("demo")
    session, store = Session(model), Store.for_home(args.home)
    init = spec_for(model.family).default_init

    def sample(prompt: str) -> list:
        request = GenerateRequest(prompt=prompt, seed=args.seed, num_images=DEMO_SAMPLES)
        return [result.image for result in session.generate(request, store=store)]

    before = sample(f"a {init}")
    replacing = store.exists(name)  # an earlier demo's token of this concept: the demo replaces it
    bar = ProgressBar(cfg.steps)
    try:
        emb = train(cfg, home=args.home, on_progress=bar, model=model, echo=_demo_echo(bar))
    except RunStopped:  # Ctrl-C while it prepared; the demo starts afresh each time, so no --resume
        emb = None
    finally:
        bar.close()
    if emb is None or summary(emb).get("end") == "stopped":
        print(
            "tokensmith demo: stopped before it finished training; run `tokensmith demo` again",
            file=sys.stderr,
        )
        return 1
    sheet_path = out / "contact-sheet.png"
    with _after_storing(name, store.path(name)):
        after = sample(f"a <{name}>")
        blend_prompt = _blend_prompt(name, concept)
        blended = sample(blend_prompt)
        scores = {"before": _judge_row(before, concept), "after": _judge_row(after, concept)}
        blend = {"prompt": blend_prompt, **_reads_as(blended)}
        rows = [shots[:DEMO_SAMPLES], before, after, blended]
        labels = [f"training: {concept}", f"before: a {init}", f"after: a <{name}>"]
        labels.append(f"blend: {blend_prompt[2:]}")
        sheet = compose(rows, labels, [f"{i + 1} (seed {args.seed + i})" for i in range(DEMO_SAMPLES)])
        _save_png(sheet, sheet_path)
    result = {
        "concept": str(concept),
        "name": name,
        "held_out": concept.is_held_out,
        "steps": int(emb.meta["steps"]),  # the step stored, as in `train --json`
        "trained_steps": int(summary(emb).get("trained_steps", emb.meta["steps"])),
        "stored": str(store.path(name).resolve()),
        "replaced": replacing,
        "contact_sheet": str(sheet_path.resolve()),
        "seconds": round(time.monotonic() - started, 1),
        **scores,
        "blend": blend,
    }
    report = sys.stderr if args.json else sys.stdout  # with --json, stdout holds only the JSON
    b, a = scores["before"], scores["after"]
    lines = [
        f"concept        {concept} (never seen by the demo model)"
        if concept.is_held_out
        else f"concept        {concept}",
        f"token          <{name}> {_steps_text(emb)}, stored at {result['stored']}"
        + (" (replacing an earlier demo's)" if replacing else ""),
        f"before ({init:>6}) colour distance {b['colour_distance']:6.1f}   "
        f"colour {b['colour_hits']}/{b['n']}   shape {b['shape_hits']}/{b['n']}",
        f"after  (token)  colour distance {a['colour_distance']:6.1f}   "
        f"colour {a['colour_hits']}/{a['n']}   shape {a['shape_hits']}/{a['n']}",
        f"blend          {blend_prompt[2:]} reads as {blend['reads_as']} ({blend['count']}/{blend['n']})",
        f"contact sheet  {result['contact_sheet']}",
        f"time           {result['seconds']} s",
    ]
    print("\n".join(lines), file=report)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0
