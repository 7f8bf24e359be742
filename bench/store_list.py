"""How long listing a big store takes: headers only (`Store.list`) vs loading every embedding (`Store.get`).

    python bench/store_list.py                 # 10,000 embeddings in a temp folder
    python bench/store_list.py --count 2000 --vectors 8

Prints both times and their ratio. The goal: listing 10,000 embeddings in under 1 s.
"""

from __future__ import annotations

import argparse
import os
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


def timed(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result): CPU time is what a busy machine distorts least."""
    start, cpu = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - start, time.process_time() - cpu, result


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
        setup, _, _ = timed(lambda: fill(store, args.count, args.vectors))
        list_s, list_cpu, entries = timed(store.list)
        load_s, load_cpu, loaded = timed(lambda: [store.get(name) for name in store.names()])
        assert len(entries) == len(loaded) == args.count
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    print(f"store of {args.count} embeddings ({args.vectors} x 768 each), written in {setup:.1f} s")
    print(f"machine load: {load:.1f} runnable tasks per core (timings above 1.0 are inflated)")
    each = 1e6 * list_s / args.count
    print(f"list (headers only):  {list_s:.3f} s wall, {list_cpu:.3f} s CPU ({each:.0f} us each)")
    print(f"load every embedding: {load_s:.3f} s wall, {load_cpu:.3f} s CPU")
    print(f"ratio load/list: {load_s / list_s:.1f}x wall, {load_cpu / max(list_cpu, 1e-9):.1f}x CPU")
    verdict = {True: "met", False: "NOT met"}
    print(f"goal list < 1 s: {verdict[list_s < 1.0]} (wall), {verdict[list_cpu < 1.0]} (CPU)")


if __name__ == "__main__":
    main()
