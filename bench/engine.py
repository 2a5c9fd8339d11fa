"""Engine overhead on arithmetic graphs: cold run, fully cached rerun, one dirty leaf, one dirty root.

Prints one JSON line per scenario. Run: python bench/engine.py
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

if not __package__:  # run as a file: this folder would shadow the `engine` package
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import nodes.primitives  # noqa: E402
from engine import Executor, GraphBuilder, Registry  # noqa: E402


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


def scenario(name: str, make, repeats: int = 3) -> dict:
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


def main() -> None:
    for name, make in [("chain_1000", lambda r: chain(1000, r)),
                       ("chain_5000", lambda r: chain(5000, r)),
                       ("layered_20x50", lambda r: layered(20, 50, r))]:
        print(json.dumps(scenario(name, make)), flush=True)


if __name__ == "__main__":
    main()
