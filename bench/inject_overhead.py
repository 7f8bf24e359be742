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

    from embeddings import Store
    from studio.generation import Session
    from trainers.models import load_model

    model = load_model(args.model)
    session = Session(model)
    with tempfile.TemporaryDirectory(prefix="tokensmith-bench-") as tmp:  # removed when the bench ends
        return _measure(args, model, session, Store(Path(tmp) / "embeddings"))


def _measure(args, model, session, store) -> int:
    """Time plain and injected prompts, interleaved, and print the ratio (the bench's lines)."""
    from embeddings import Embedding
    from studio.generation import GenerateRequest

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
    unet_only = _bare_unet_seconds(model, args.steps)
    print(f"model {args.model} ({model.family}), {args.steps} steps, {args.repeats} repeats, 1 thread")
    print(f"plain prompt    {plain_prompt!r}: median {p * 1000:.1f} ms per image")
    print(f"with embedding  {injected_prompt!r}: median {i * 1000:.1f} ms per image")
    print(f"first use of the embedding (store read + install + generate): {first_use * 1000:.1f} ms")
    print(f"bare UNet calls for the same steps: {unet_only * 1000:.1f} ms (engine/UNet: {p / unet_only:.3f})")
    print(f"one {args.steps}-step image under 1 s on one core: {'yes' if p < 1.0 else 'no'} (load matters)")
    print(f"ratio injected/plain: {i / p:.3f} (goal <= 1.02: {'met' if i / p <= 1.02 else 'NOT met'})")
    return 0


def _bare_unet_seconds(model, steps: int) -> float:
    """The UNet alone, `steps` classifier-free-guided calls (batch 2): the floor for one image."""
    pipe = model.pipe
    side = model.resolution // pipe.vae_scale_factor
    x = torch.randn(2, pipe.unet.config.in_channels, side, side)  # (2, C, h, w)
    hidden = torch.randn(
        2, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim
    )  # (2, L, D)
    added = None
    if model.is_sdxl:
        pooled = pipe.text_encoder_2.config.projection_dim
        added = {"text_embeds": torch.randn(2, pooled), "time_ids": torch.zeros(2, 6)}
    with torch.no_grad():
        start = time.perf_counter()
        for _ in range(steps):
            pipe.unet(x, 500, encoder_hidden_states=hidden, added_cond_kwargs=added)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
