"""`tokensmith demo-images CONCEPT -n 5 --out DIR`: images of any demo-world concept (held-out ones too)."""

from __future__ import annotations

import argparse
import random
import re
import sys
from pathlib import Path

from studio.cli_options import add_command
from trainers.config import MAX_SEED

EPILOG = """\
Example:
  tokensmith demo-images "purple triangle" -n 5 --out images/purple-triangle
  tokensmith demo-images "small striped pink star on a blue background" -n 8 --out pink --seed 3

A concept is built from a shape, a colour and optionally a size (small, medium, large), a pattern (plain,
striped, dotted), a position (center, left, right, top, bottom) and 'on a COLOUR background'. Unspecified
size and position vary from image to image; the background defaults to gray.
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = add_command(
        subparsers,
        common,
        "demo-images",
        "render training images of a demo-world concept",
        EPILOG,
        description="Render images of a demo-world concept with the renderer the demo model was trained on.",
    )
    parser.add_argument("concept", help='e.g. "purple triangle" or "large pink star on a white background"')
    parser.add_argument("-n", "--num-images", type=int, default=5, help="how many images (default 5)")
    # its first name, before it took generate's --num-images: kept, unlisted, so that old scripts still run
    parser.add_argument(
        "--num", dest="num_images", type=int, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write PNGs into (created if missing)"
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help=f"random seed, 0 to {MAX_SEED} (default 0): same seed, same images",
    )
    parser.add_argument(
        "--resolution", type=int, default=None, help="image side in pixels (default: the model's)"
    )
    parser.add_argument("--json", action="store_true", help="print the written paths as JSON on stdout")
    parser.set_defaults(run=run)


def check_seed(seed: int) -> None:
    """A --seed of demo and demo-images: train's range, 0 to MAX_SEED. A negative one is refused because
    random.Random(-1) seeds with abs(-1): --seed -1 would quietly draw the images of --seed 1."""
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"--seed must be between 0 and {MAX_SEED}, not {seed}")


def readable(caption: str) -> str:
    """A caption as a person writes it: 'a orange star' -> 'an orange star'. Only for text a person reads:
    the demo model was trained on captions that always say 'a', so prompts keep them as they are."""
    return re.sub(r"\ba (?=[aeiou])", "an ", caption)


def run(args: argparse.Namespace) -> int:
    from demo import world
    from embeddings.files import atomic_write, refuse_file_as_folder, write_failure_error

    if args.num_images < 1:
        raise ValueError(f"--num-images must be 1 or more, not {args.num_images}")
    check_seed(args.seed)
    resolution = args.resolution or world.RESOLUTION
    if resolution < 16 or resolution > 1024:
        raise ValueError(f"--resolution must be between 16 and 1024 (got {resolution})")
    concept = world.parse_concept(args.concept)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: give a folder to write the images into")
    refuse_file_as_folder(out, "--out")  # a file above it: 'notes is a file, not a folder', not '[Errno 20]'
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure_error(exc, out, then="run the same command again") from None
    caption = world.caption(concept)  # 'a orange star', as the model was trained: the files' names
    stem = "-".join(caption.split()[1:])
    rng = random.Random(args.seed)
    written = []
    for i in range(args.num_images):
        image = world.render(concept, rng, resolution=resolution)
        path = out / f"{stem}-{i:03d}.png"
        try:
            atomic_write(path, lambda tmp, image=image: image.save(tmp, format="PNG"))
        except OSError as exc:
            raise write_failure_error(
                exc,
                path,
                then="run the same command again",
                written=[Path(w).name for w in written],
                total=args.num_images,
            ) from None
        written.append(str(path))
    if args.json:
        import json

        print(json.dumps({"concept": readable(caption), "held_out": concept.is_held_out, "files": written}))
    else:
        note = " (held out of the demo model's training)" if concept.is_held_out else ""
        count = f"{len(written)} image{'s' * (len(written) != 1)}"
        print(f"wrote {count} of '{readable(caption)}'{note} to {out}", file=sys.stderr)
        print(out)
    return 0
