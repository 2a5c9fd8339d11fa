"""`loom watch` reruns a graph on every save of the graph or a file it reads, in one warm
process, and says what ran and why."""
from __future__ import annotations

import json
import threading
import time
from io import StringIO

from rich.console import Console

from engine import Executor, Registry, Settings
from engine.cli import load_graph
from engine.preflight import preflight
from engine.watch import watch

from .conftest import write_graph

NODES = {"x": {"type": "int", "inputs": {"value": 2}},
         "double": {"type": "multiply", "inputs": {"a": ["x", "value"], "b": 2}},
         "out": {"type": "show", "inputs": {"value": ["double", "value"]}}}


def wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_watch_reruns_what_an_edit_touches_and_survives_a_bad_save(elsewhere):
    path = write_graph(elsewhere, NODES)
    executor = Executor(registry=Registry.default(), settings=Settings())
    out, err = StringIO(), StringIO()
    stop = threading.Event()
    thread = threading.Thread(target=watch, args=(
        str(path), lambda: load_graph(str(path)),
        lambda graph: preflight(graph, {}, executor.registry, executor.settings), executor,
        Console(file=out, width=200), Console(file=err, width=200)),
        kwargs={"debounce": 0.05, "stop": stop}, daemon=True)
    thread.start()
    wait_for(lambda: "out.value = 4.0" in out.getvalue())
    wait_for(lambda: "watching" in err.getvalue())

    path.write_text("{ not json")
    wait_for(lambda: "invalid graph" in err.getvalue())

    edited = {**NODES, "x": {"type": "int", "inputs": {"value": 5}}}
    path.write_text(json.dumps({"loom": 1, "nodes": edited}))
    wait_for(lambda: "out.value = 10.0" in out.getvalue())
    stop.set()
    thread.join(timeout=10)
    assert not thread.is_alive()
    log = err.getvalue()
    assert "run 3: g.json changed" in log
    third = log.split("run 3")[1]
    assert "✓ ran x (int)" in third and "input `value` changed" in third
