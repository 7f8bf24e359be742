"""How long listing a big store takes: headers only (`Store.list`) vs loading every embedding (`Store.get`).

    python bench/store_list.py                 # 10,000 embeddings in a temp folder
    python bench/store_list.py --count 2000 --vectors 8

Prints both times and their ratio. The goal: listing 10,000 embeddings in under 1 s.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from embeddings import Embedding, Store
from embeddings.canonical import canonical_bytes


def fill(store: Store, count: int, vectors: int) -> None:
    """Write `count` canonical files (plain writes: the setup is not what is measured)."""
    store.root.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(0)
    for i in range(count):
        emb = Embedding(
            f"emb-{i:05d}", {"emb_params": torch.randn(vectors, 768, generator=gen)}, {"init": "cat"}
        )
        (store.root / f"{emb.name}.safetensors").write_bytes(canonical_bytes(emb))


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--vectors", type=int, default=4, help="vectors per embedding (width 768)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        store = Store(Path(folder) / "embeddings")
        setup, _ = timed(lambda: fill(store, args.count, args.vectors))
        list_s, entries = timed(store.list)
        load_s, loaded = timed(lambda: [store.get(name) for name in store.names()])
        assert len(entries) == len(loaded) == args.count
    print(f"store of {args.count} embeddings ({args.vectors} x 768 each), written in {setup:.1f} s")
    print(f"list (headers only): {list_s:.3f} s  ({1e6 * list_s / args.count:.0f} us per embedding)")
    print(f"load every embedding: {load_s:.3f} s")
    print(f"ratio load/list: {load_s / list_s:.1f}x; goal list < 1 s: {'met' if list_s < 1.0 else 'NOT met'}")


if __name__ == "__main__":
    main()
