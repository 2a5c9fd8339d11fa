"""Engine overhead on arithmetic graphs: cold run, fully cached rerun, one dirty leaf, one dirty root.

Chains of 1k, 10k and 100k nodes (the engine's own cost: validation, keys, scheduling,
caching), a 20x50 layered DAG, and the 100k chain with and without the disk tier.
Prints one JSON line per scenario.

Run: python bench/engine.py [--sizes 1000 10000 100000] [--no-disk]
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if not __package__:  # run as a file: this folder would shadow the `engine` package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import nodes.primitives  # noqa: E402
from engine import Cache, DiskCache, Executor, GraphBuilder, MemoryCache, Registry  # noqa: E402


def registry() -> Registry:
    r = Registry()
    r.load_module(nodes.primitives)
    return r


def chain(n: int, reg: Registry) -> tuple[GraphBuilder, str, str]:
    g = GraphBuilder(reg)
    prev = g.add("int", node_id="root", value=1)
    for i in range(1, n):
        prev = g.add("add", node_id=f"n{i}", a=prev, b=1)
    g.add("show", node_id="out", value=prev)
    return g, "root", f"n{n - 1}"


def layered(layers: int, width: int, reg: Registry) -> tuple[GraphBuilder, str, str]:
    """Each node adds two nodes of the layer before; the last layer is shown."""
    g = GraphBuilder(reg)
    previous = [g.add("int", node_id=f"l0_{j}", value=j) for j in range(width)]
    for layer in range(1, layers):
        previous = [g.add("add", node_id=f"l{layer}_{j}", a=previous[j], b=previous[(j + 1) % width])
                    for j in range(width)]
    total = previous[0]
    for j, handle in enumerate(previous[1:], 1):
        total = g.add("add", node_id=f"sum_{j}", a=total, b=handle)
    g.add("show", node_id="out", value=g.add("add", node_id="leaf", a=total, b=0))
    return g, "l0_0", "leaf"


def timed(executor: Executor, builder: GraphBuilder) -> float:
    graph = builder.build()
    started = time.perf_counter()
    executor.run(graph)
    return time.perf_counter() - started


def scenario(name: str, make, repeats: int) -> dict:
    """Best of `repeats` for each figure, so a busy machine disturbs the numbers less."""
    reg = registry()
    cold, cached, dirty_leaf, dirty_root = [], [], [], []
    for attempt in range(repeats):
        builder, root, leaf = make(reg)
        executor = Executor(registry=reg)
        cold.append(timed(executor, builder))
        cached.append(timed(executor, builder))
        builder.set(leaf, "b", 100 + attempt)
        dirty_leaf.append(timed(executor, builder))
        builder.set(root, "value", 100 + attempt)
        dirty_root.append(timed(executor, builder))
    return {"graph": name, "nodes": len(builder.build().nodes), "cold_s": round(min(cold), 4),
            "cached_s": round(min(cached), 4), "dirty_leaf_s": round(min(dirty_leaf), 4),
            "dirty_root_s": round(min(dirty_root), 4)}


def disk_tier(n: int) -> dict:
    """A cold run with and without the disk tier, and what the tier holds afterwards."""
    reg = registry()
    builder, _, _ = chain(n, reg)
    memory_only = timed(Executor(registry=reg), builder)
    with tempfile.TemporaryDirectory() as folder:
        disk = DiskCache(Path(folder) / "results")
        with_disk = timed(Executor(registry=reg, cache=Cache(MemoryCache(), disk)), builder)
        on_disk = sum(p.stat().st_blocks * 512 for p in Path(folder).rglob("*") if p.is_file())
        fresh_process = timed(Executor(registry=reg, cache=Cache(MemoryCache(), DiskCache(Path(folder) / "results"))),
                              builder)
    return {"graph": f"chain_{n}_disk_tier", "nodes": n + 1, "cold_memory_only_s": round(memory_only, 4),
            "cold_with_disk_s": round(with_disk, 4), "rerun_new_process_from_disk_s": round(fresh_process, 4),
            "disk_bytes_allocated": on_disk, "disk_bytes_per_result": round(on_disk / (n + 1), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--no-disk", action="store_true", help="skip the disk-tier scenario")
    args = parser.parse_args()
    for n in args.sizes:
        print(json.dumps(scenario(f"chain_{n}", lambda r, n=n: chain(n, r), 3 if n <= 10_000 else 1)), flush=True)
    print(json.dumps(scenario("layered_20x50", lambda r: layered(20, 50, r), 3)), flush=True)
    if not args.no_disk:
        print(json.dumps(disk_tier(max(args.sizes))), flush=True)


if __name__ == "__main__":
    main()
