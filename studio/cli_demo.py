"""`tokensmith demo`: the whole story, offline, on the demo world: render a held-out concept, train a token
on it, store it, generate with it and with a blend, and write a labelled contact sheet with the judge's
scores."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from studio.cli import EXIT_ERROR, at_least_one
from studio.cli_demo_world import check_seed, readable
from studio.cli_options import add_command, store_of
from studio.cli_train import ProgressBar, set_cpu_threads
from studio.demofolder import (
    demo_folder,
    demo_writes,
    earlier_demo_run,
    prepare_demo_folder,
    save_png,
)

if TYPE_CHECKING:
    from demo.world import Concept
    from embeddings import Embedding

DEMO_EXAMPLE = """Example:
  tokensmith demo                          # renders a held-out concept, trains <demo-purple-triangle>, ...
  tokensmith demo --concept "orange star" --out demo-run/"""


def register(subparsers, common) -> None:
    from trainers.config import FIELDS

    demo = add_command(
        subparsers,
        common,
        "demo",
        "the main job, offline: render a new concept, train a token for it, generate, blend, compare",
        DEMO_EXAMPLE,
        description="Render 5 images of a concept the demo world never saw, train a token on them, store it, "
        "generate with it and with a blend, and write a labelled contact sheet with before/after "
        "judge scores.",
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


@dataclass
class _Trained:
    """What the demo's first half (render, sample `before`, train and store) hands its second (sample,
    blend, compare)."""

    concept: Concept
    name: str
    out: Path
    init: str  # the word the token started from: the `before` prompt is `a INIT`
    shots: list  # the rendered training images
    before: list  # samples of `a INIT`
    sample: Callable[[str], list]  # a prompt -> DEMO_SAMPLES images, with the demo's seed and store
    emb: Embedding  # the token as trained and stored
    stored: Path
    replacing: bool  # an earlier demo's token of this concept was replaced


STOPPED_TRAINING = "tokensmith demo: stopped before it finished training; run `tokensmith demo` again"


def run_demo(args) -> int:
    """Render a held-out concept, train a token on it, store it, generate with it and a blend, compare.

    A Ctrl-C stops it at any point as it stops train (exit 1, one line; README "CLI reference"), saying
    whether the token was stored; it need not be continued, since each demo starts afresh."""
    started = time.monotonic()
    try:
        trained = _train_demo(args)
    except KeyboardInterrupt:  # while rendering, loading, sampling `before`, or a second Ctrl-C in training
        trained = None
    if trained is None:
        print(STOPPED_TRAINING, file=sys.stderr)
        return EXIT_ERROR
    try:
        return _show_demo(args, trained, started)
    except KeyboardInterrupt:
        print(
            f"tokensmith demo: stopped after training: the token <{trained.name}> is stored "
            f"({trained.stored}) and prompts can use it; run `tokensmith demo` again for its samples and "
            "contact sheet",
            file=sys.stderr,
        )
        return EXIT_ERROR


def _train_demo(args) -> _Trained | None:
    """Render the concept, sample the init word, train and store the token; None when a Ctrl-C stopped the
    training (the trainer then stores nothing)."""
    import random

    from demo.world import parse_concept, render
    from studio.generation import GenerateRequest, Session
    from trainers.config import TrainConfig
    from trainers.families import spec_for
    from trainers.models import load_model
    from trainers.storing import summary
    from trainers.trainer import RunStopped, train

    set_cpu_threads()
    concept = parse_concept(args.concept or DEMO_CONCEPT)
    shown = readable(str(concept))  # 'an orange star'; prompts keep the model's own 'a orange star'
    if not concept.is_held_out:
        print(
            f"note: the demo world already knows '{shown}'; held-out ones show learning best", file=sys.stderr
        )
    name = "demo-" + f"{concept.colour}-{concept.shape}"
    check_seed(args.seed)  # in demo-images' words: TrainConfig's speak of a resume, which the demo has not
    out = demo_folder(args)
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
    replace_run = earlier_demo_run(out / "run")  # another's run there is refused before anything is written
    with demo_writes(out):
        prepare_demo_folder(out, replace_run)
    rng = random.Random(args.seed)
    shots = [render(concept, rng) for _ in range(DEMO_IMAGES)]
    for i, shot in enumerate(shots):
        save_png(shot, out / "images" / f"{i}.png")
    print(f"rendered {DEMO_IMAGES} images of '{shown}' into {out / 'images'}", file=sys.stderr)

    model = load_model("demo")
    session, store = Session(model), store_of(args)
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
        return None
    finally:
        bar.close()
    if summary(emb).get("end") == "stopped":
        return None
    return _Trained(concept, name, out, init, shots, before, sample, emb, store.path(name), replacing)


def _show_demo(args, t: _Trained, started: float) -> int:
    """Sample the stored token and its blend, write the contact sheet and print the judge's scores."""
    from studio.generation import compose
    from trainers.storing import summary

    concept, name = t.concept, t.name
    sheet_path = t.out / "contact-sheet.png"
    with _after_storing(name, t.stored):
        after = t.sample(f"a <{name}>")
        blend_prompt = _blend_prompt(name, concept)
        blended = t.sample(blend_prompt)
        scores = {"before": _judge_row(t.before, concept), "after": _judge_row(after, concept)}
        blend = {"prompt": blend_prompt, **_reads_as(blended)}
        rows = [t.shots[:DEMO_SAMPLES], t.before, after, blended]
        labels = [f"training: {readable(str(concept))}", f"before: a {t.init}", f"after: a <{name}>"]
        labels.append(f"blend: {blend_prompt[2:]}")
        sheet = compose(rows, labels, [f"{i + 1} (seed {args.seed + i})" for i in range(DEMO_SAMPLES)])
        save_png(sheet, sheet_path)
    result = {
        "concept": readable(str(concept)),
        "name": name,
        "held_out": concept.is_held_out,
        "steps": int(t.emb.meta["steps"]),  # the step stored, as in `train --json`
        "trained_steps": int(summary(t.emb).get("trained_steps", t.emb.meta["steps"])),
        "stored": str(t.stored.resolve()),
        "path": str(t.stored.resolve()),  # as every command's --json names the file stored
        "replaced": t.replacing,
        "contact_sheet": str(sheet_path.resolve()),
        "seconds": round(time.monotonic() - started, 1),
        **scores,
        "blend": blend,
    }
    report = sys.stderr if args.json else sys.stdout  # with --json, stdout holds only the JSON
    print("\n".join(_report_lines(result, t)), file=report)
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _report_lines(result: dict, t: _Trained) -> list[str]:
    """The scores as the README's Quick start shows them: one labelled line each."""
    b, a, blend = result["before"], result["after"], result["blend"]
    held_out = " (never seen by the demo model)" if t.concept.is_held_out else ""
    return [
        f"concept        {result['concept']}{held_out}",
        f"token          <{t.name}> {_steps_text(t.emb)}, stored at {result['stored']}"
        + (" (replacing an earlier demo's)" if t.replacing else ""),
        f"before ({t.init:>6}) colour distance {b['colour_distance']:6.1f}   "
        f"colour {b['colour_hits']}/{b['n']}   shape {b['shape_hits']}/{b['n']}",
        f"after  (token)  colour distance {a['colour_distance']:6.1f}   "
        f"colour {a['colour_hits']}/{a['n']}   shape {a['shape_hits']}/{a['n']}",
        f"blend          {blend['prompt'][2:]} reads as {blend['reads_as']} ({blend['count']}/{blend['n']})",
        f"contact sheet  {result['contact_sheet']}",
        f"time           {result['seconds']} s",
    ]
