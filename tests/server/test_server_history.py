"""Explain history on the server is kept per workflow, never shared by different graphs."""
from __future__ import annotations

import time

from engine import Executor, Graph, Registry
from server.dispatch import LocalDispatcher
from server.store import FINAL, RunStore


def adder(a: float, node_id: str = "sum") -> dict:
    return {"loom": 1, "nodes": {
        "a": {"type": "float", "inputs": {"value": a}},
        node_id: {"type": "add", "inputs": {"a": ["a", "value"], "b": 1.0}},
        "out": {"type": "show", "inputs": {"value": [node_id, "value"]}}}}


def test_a_graph_is_named_by_its_nodes_not_its_values():
    assert Graph.from_dict(adder(1)).named_by_shape().name == \
        Graph.from_dict(adder(2)).named_by_shape().name
    assert Graph.from_dict(adder(1)).named_by_shape().name != \
        Graph.from_dict(adder(1, node_id="total")).named_by_shape().name


def test_server_runs_keep_history_per_graph(tmp_path):
    registry = Registry()
    registry.load_module("nodes.primitives")
    executor = Executor(registry=registry)
    store = RunStore(tmp_path / "runs.sqlite3")
    dispatcher = LocalDispatcher(store, executor, output_dir=tmp_path / "out", poll_seconds=0.05)
    dispatcher.start()
    try:
        runs = [store.create(doc, {})[0].id for doc in (adder(1), adder(5, node_id="total"))]
        dispatcher.wake()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not all(store.get(r).status in FINAL for r in runs):
            time.sleep(0.05)
    finally:
        dispatcher.stop()
    first = executor.history.last(Graph.from_dict(adder(1)).named_by_shape().name)
    second = executor.history.last(Graph.from_dict(adder(5, "total")).named_by_shape().name)
    assert "sum" in first and "total" not in first
    assert "total" in second and "sum" not in second
    assert executor.history.last("graph") == {}
