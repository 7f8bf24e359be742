"""Injection overhead: generating with a stored embedding vs the same prompt with an ordinary word.

    python bench/inject_overhead.py [--model demo] [--steps 20] [--repeats 7]

Prints the median time per image of each and their ratio (goal: ≤ 1.02), plus the one-off cost of the first
use of an embedding (reading it from the store and installing it). Each request is timed end to end,
including the store lookup, prompt expansion and text encoding (the encoding cache is cleared each time).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="demo")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from embeddings import Embedding, Store
    from studio.generation import GenerateRequest, Session
    from trainers.models import load_model

    model = load_model(args.model)
    session = Session(model)
    store = Store(Path(tempfile.mkdtemp(prefix="tokensmith-bench-")) / "embeddings")
    vectors = {
        key: torch.randn(1, width, generator=torch.Generator().manual_seed(0))
        for key, width in model.widths.items()
    }
    store.put(Embedding("bench-token", vectors))

    def timed(prompt: str) -> float:
        session.encoder._cache.clear()  # time the encoding too, not a cached tensor
        start = time.perf_counter()
        session.generate(GenerateRequest(prompt, steps=args.steps, seed=0), store=store)
        return time.perf_counter() - start

    plain_prompt, injected_prompt = "a red circle", "a <bench-token> circle"
    timed(plain_prompt)  # warm-up: first-call allocations
    first_use = timed(injected_prompt)
    plain, injected = [], []
    for _ in range(args.repeats):  # interleaved so that machine load hits both alike
        plain.append(timed(plain_prompt))
        injected.append(timed(injected_prompt))
    p, i = statistics.median(plain), statistics.median(injected)
    print(f"model {args.model} ({model.family}), {args.steps} steps, {args.repeats} repeats, 1 thread")
    print(f"plain prompt    {plain_prompt!r}: median {p * 1000:.1f} ms per image")
    print(f"with embedding  {injected_prompt!r}: median {i * 1000:.1f} ms per image")
    print(f"first use of the embedding (store read + install + generate): {first_use * 1000:.1f} ms")
    print(f"ratio injected/plain: {i / p:.3f} (goal <= 1.02: {'met' if i / p <= 1.02 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
