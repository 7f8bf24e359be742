"""Does the trainer learn demo-world concepts? Train each with the defaults, judge samples it never saw.

    python bench/learn_concepts.py                         # the 5 held-out colour x shape combinations
    python bench/learn_concepts.py --set attributes        # concepts that also fix a background, size, ...
    python bench/learn_concepts.py "pink star" --image-seed 1 --option vectors=4 --option steps=300
    python bench/learn_concepts.py --images 3              # 3 training renders a concept instead of 5
    python bench/learn_concepts.py --render-size 128       # renders at 128 px (the trainer resizes them)

For each concept: render 5 training images (`--images N`) with `random.Random(image_seed)` (the dataset's own
renderer), train a token with TrainConfig's defaults (plus any `--option KEY=VALUE`) in a temporary home,
generate 12 images of `a <token>` with seeds 100-111 (the demo's defaults: 20 steps, guidance 4), and judge
each against the concept: the RGB distance of its foreground to the concept's colour, whether the judge names
that colour, whether it names that shape. A concept counts as learned when the mean distance is under 40 and
at least 9 of 12 samples have its colour and 9 of 12 its shape (the README's bar). The same 12 seeds with the
world's own words for the concept (`a purple triangle`) are judged too, as the reference of what the model
draws when told in words. About a minute a concept on a 2-core CPU. The last lines are one per concept:
`learned purple triangle: yes (distance 8.6, colour 12/12, shape 12/12, kept step 125 of 150; in words:
distance 21.1, colour 12/12, shape 12/12)`.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from PIL import Image

from demo.judge import judge
from demo.world import COLOURS, HELD_OUT_COMBOS, RESOLUTION, parse_concept, render

SETS = {
    "heldout": tuple(f"{colour} {shape}" for colour, shape in HELD_OUT_COMBOS),
    "attributes": (
        "striped orange star",
        "small green cross on the left",
        "yellow square on a black background",
        "dotted cyan circle",
        "large purple triangle on a blue background",
    ),
    "pink": ("pink square", "pink star"),
}
TRAINING_IMAGES = 5
SAMPLE_SEEDS = range(100, 112)
MAX_DISTANCE, MIN_RIGHT = 40.0, 0.75  # the README's bar for "learned": distance < 40, 9 of 12 right


@dataclass(frozen=True)
class Score:
    """How well a set of samples shows one concept."""

    distance: float  # mean RGB distance of the foregrounds to the concept's colour (441.7 for an empty image)
    colour: int  # samples the judge names the concept's colour
    shape: int  # samples the judge names the concept's shape
    samples: int

    @property
    def learned(self) -> bool:
        return self.distance < MAX_DISTANCE and min(self.colour, self.shape) >= MIN_RIGHT * self.samples


def score(images, concept_text: str) -> Score:
    """Judge `images` against a concept: `score(renders of "cyan circle", "cyan circle").learned` is True."""
    concept = parse_concept(concept_text)
    target = COLOURS[concept.colour]
    distances, colour, shape = [], 0, 0
    for image in images:
        verdict = judge(image)
        if verdict.colour_rgb is None:  # nothing drawn: as far as two RGB colours can be
            distances.append(255 * 3**0.5)
            continue
        distances.append(math.dist(verdict.colour_rgb, target))
        colour += verdict.colour == concept.colour
        shape += verdict.shape == concept.shape
    return Score(statistics.fmean(distances), colour, shape, len(distances))


def render_images(
    concept_text: str, folder: Path, seed: int, count: int = TRAINING_IMAGES, size: int = RESOLUTION
) -> Path:
    """`count` renders of the concept at `size` px, as `tokensmith demo-images` makes them."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    concept = parse_concept(concept_text)
    for i in range(count):
        render(concept, rng, resolution=size).save(folder / f"{i}.png")
    return folder


def learn(
    concept_text: str,
    *,
    home: Path,
    model,
    session,
    image_seed: int,
    options: dict,
    images: int = TRAINING_IMAGES,
    size: int = RESOLUTION,
) -> dict:
    """Train one concept with the defaults (+ options) and judge 12 fresh samples of `a <token>`."""
    from embeddings import Store
    from trainers import train
    from trainers.configfile import from_mapping

    name = concept_text.replace(" ", "-")
    folder = render_images(concept_text, home / "images" / name, image_seed, images, size)
    renders = sorted(folder.glob("*.png"))
    cfg = from_mapping({"images": str(folder), "name": name, "run_dir": str(home / "runs" / name), **options})
    start = time.perf_counter()
    embedding = train(cfg, home=home, model=model)
    seconds = time.perf_counter() - start
    store = Store.for_home(home)
    result = score(samples(session, f"a <{name}>", store), concept_text)
    words = score(samples(session, f"a {concept_text}", store), concept_text)
    trainer = json.loads(embedding.meta["trainer"])
    return {
        "concept": concept_text,
        "images": len(renders),
        "render_size": Image.open(renders[0]).size[0],  # read back: what the trainer was given
        "learned": result.learned,
        "distance": round(result.distance, 1),
        "colour": result.colour,
        "shape": result.shape,
        "samples": result.samples,
        "kept_step": int(embedding.meta["steps"]),
        "trained_steps": trainer["trained_steps"],
        "train_seconds": round(seconds, 1),
        "words": {"distance": round(words.distance, 1), "colour": words.colour, "shape": words.shape},
    }


def samples(session, prompt: str, store) -> list:
    """The 12 judged samples of `prompt` (seeds SAMPLE_SEEDS, the demo's generation defaults)."""
    from studio.generation import GenerateRequest

    request = GenerateRequest(prompt=prompt, seed=SAMPLE_SEEDS[0], num_images=len(SAMPLE_SEEDS))
    return [result.image for result in session.generate(request, store=store)]


def parse_options(pairs: list[str]) -> dict:
    """['vectors=4', 'steps=300'] -> {'vectors': '4', 'steps': '300'} (TrainConfig checks keys and types)."""
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--option {pair!r}: write KEY=VALUE, e.g. --option vectors=4")
        options[key.strip().replace("-", "_")] = value.strip()
    return options


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("concepts", nargs="*", help="demo-world concepts (default: the --set)")
    parser.add_argument("--set", choices=sorted(SETS), default="heldout", help="a named concept set")
    parser.add_argument("--image-seed", type=int, default=0, help="seed of the 5 training renders")
    parser.add_argument(
        "--images",
        type=int,
        default=TRAINING_IMAGES,
        metavar="N",
        help=f"training renders per concept (default {TRAINING_IMAGES})",
    )
    parser.add_argument(
        "--render-size",
        type=int,
        default=RESOLUTION,
        metavar="PX",
        help=f"side of the training renders (default {RESOLUTION}, the model's; the trainer resizes others)",
    )
    parser.add_argument(
        "--option", action="append", default=[], metavar="KEY=VALUE", help="a TrainConfig value; repeatable"
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON object per concept")
    args = parser.parse_args(argv)
    import torch

    from studio.generation import Session
    from trainers.configfile import from_mapping
    from trainers.models import load_model

    options = parse_options(args.option)
    from_mapping({"images": "x", "name": "x", **options})  # a bad key or value fails before any training
    concepts = list(dict.fromkeys(args.concepts or SETS[args.set]))  # each once: one token name each
    for text in concepts:
        parse_concept(text)  # an unknown word fails before any training
    torch.set_num_threads(1)  # as the README's measurements
    model = load_model("demo")
    session = Session(model)
    rows = []
    with tempfile.TemporaryDirectory(prefix="tokensmith-learn-") as tmp:
        for text in concepts:
            row = learn(
                text,
                home=Path(tmp),
                model=model,
                session=session,
                image_seed=args.image_seed,
                options=options,
                images=args.images,
                size=args.render_size,
            )
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
    for row in rows:
        verdict = "yes" if row["learned"] else "no"
        n, words = row["samples"], row["words"]
        print(
            f"learned {row['concept']}: {verdict} (distance {row['distance']}, colour {row['colour']}/{n}, "
            f"shape {row['shape']}/{n}, kept step {row['kept_step']} of {row['trained_steps']}; in words: "
            f"distance {words['distance']}, colour {words['colour']}/{n}, shape {words['shape']}/{n})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
