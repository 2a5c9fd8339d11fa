"""`loom explain` gives the true reason a node reruns in a new process: a value that cannot be
stored on disk (a loaded model) is re-created, not "evicted"."""
from __future__ import annotations

from engine import Cache, DiskCache, Executor, Graph, MemoryCache, Registry, node
from engine.explain import NOT_STORED, RunHistory


class Loaded:
    """Stands for a loaded model: a live object the disk tier cannot store."""


@node("test_explain.load", category="test")
def load_live(name: str = "m") -> Loaded:
    return Loaded()


@node("test_explain.use", category="test", output_node=True)
def use_live(model: Loaded, n: int = 1) -> int:
    return n


GRAPH = {"loom": 1, "params": {"n": {"node": "use", "input": "n"}}, "nodes": {
    "load": {"type": "test_explain.load", "inputs": {}},
    "use": {"type": "test_explain.use", "inputs": {"model": ["load", "loaded"], "n": 1}}}}


def executor(folder) -> Executor:
    """What each `loom` process builds: an empty memory tier over the same disk tier."""
    return Executor(registry=Registry([load_live.spec, use_live.spec]),
                    cache=Cache(MemoryCache(), DiskCache(folder / "results")),
                    history=RunHistory(folder / "history"))


def test_a_new_process_says_loaded_models_are_reloaded_not_evicted(tmp_path):
    graph = Graph.from_dict(GRAPH, name="g")
    executor(tmp_path).run(graph)
    reasons = {n: e.reason for n, e in executor(tmp_path).explain(graph, {"n": 2}).items()}
    assert reasons["load"] == NOT_STORED
    assert reasons["use"] == "input `n` changed"
    rerun = executor(tmp_path).run(graph, {"n": 2})
    assert rerun.reasons["load"] == NOT_STORED


def test_a_cleared_cache_is_not_mistaken_for_a_loaded_model(tmp_path):
    graph = Graph.from_dict(GRAPH, name="g")
    executor(tmp_path).run(graph)
    cleared = executor(tmp_path)
    cleared.cache.clear()
    assert cleared.explain(graph, {"n": 2})["load"].reason == "not in cache: evicted or cleared"
