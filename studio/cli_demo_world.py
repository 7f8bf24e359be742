"""`tokensmith demo-images CONCEPT -n 5 --out DIR`: images of any demo-world concept (held-out ones too)."""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

EPILOG = """\
Example:
  tokensmith demo-images "purple triangle" -n 5 --out images/purple-triangle
  tokensmith demo-images "small striped pink star on a blue background" -n 8 --out pink --seed 3

A concept is built from a shape, a colour and optionally a size (small, medium, large), a pattern (plain,
striped, dotted), a position (center, left, right, top, bottom) and 'on a COLOUR background'. Unspecified
size and position vary from image to image; the background defaults to gray.
"""


def register(subparsers, common: argparse.ArgumentParser) -> None:
    parser = subparsers.add_parser(
        "demo-images",
        parents=[common],
        help="render training images of a demo-world concept",
        description="Render images of a demo-world concept with the renderer the demo model was trained on.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("concept", help='e.g. "purple triangle" or "large pink star on a white background"')
    parser.add_argument("-n", "--num", type=int, default=5, help="how many images (default 5)")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write PNGs into (created if missing)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0): same seed, same images")
    parser.add_argument(
        "--resolution", type=int, default=None, help="image side in pixels (default: the model's)"
    )
    parser.add_argument("--json", action="store_true", help="print the written paths as JSON on stdout")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from demo import world
    from embeddings.files import atomic_write, write_failure_error

    if args.num < 1:
        raise ValueError(f"-n must be at least 1 (got {args.num})")
    resolution = args.resolution or world.RESOLUTION
    if resolution < 16 or resolution > 1024:
        raise ValueError(f"--resolution must be between 16 and 1024 (got {resolution})")
    concept = world.parse_concept(args.concept)
    out: Path = args.out
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file: give a folder to write the images into")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_failure_error(exc, out, then="run the same command again") from None
    stem = "-".join(world.caption(concept).split()[1:])
    rng = random.Random(args.seed)
    written = []
    for i in range(args.num):
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
                total=args.num,
            ) from None
        written.append(str(path))
    if args.json:
        import json

        print(
            json.dumps({"concept": world.caption(concept), "held_out": concept.is_held_out, "files": written})
        )
    else:
        note = " (held out of the demo model's training)" if concept.is_held_out else ""
        count = f"{len(written)} image{'s' * (len(written) != 1)}"
        print(f"wrote {count} of '{world.caption(concept)}'{note} to {out}", file=sys.stderr)
        print(out)
    return 0
