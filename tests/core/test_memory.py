"""Memory that stays within budget: the result cache counts what it alone holds, the model
manager holds models within a per-device budget and really lets go of what it unloads."""
from __future__ import annotations

import gc
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from engine import Context, Executor, GraphBuilder, MemoryCache, node
from engine.footprint import footprint
from engine.models import ModelManager, ModelPaths

from .helpers import registry as base_registry


@dataclass(eq=False)
class Toy:
    """A handle on a loaded module, as model loaders return."""
    module: Any
    name: str


@node("load_toy", category="test")
def load_toy(ctx: Context, name: str, width: int = 256) -> Toy:
    """A module of width x width weights, loaded through the model manager."""
    module = ctx.models.get(("toy", name, width), lambda: torch.nn.Linear(width, width))
    return Toy(module, name)


@node("toy_output", category="test")
def toy_output(toy: Toy) -> torch.Tensor:
    """A small tensor computed with the toy model."""
    with torch.no_grad():
        return toy.module(torch.ones(1, toy.module.in_features))


@pytest.fixture(scope="module")
def registry():
    r = base_registry()
    r.register(load_toy)
    r.register(toy_output)
    return r


def toy_graph(registry, name: str, width: int = 256) -> GraphBuilder:
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("toy_output", node_id="y", toy=g.add(
        "load_toy", node_id="load", name=name, width=width)))
    return g


def weight_bytes(width: int) -> int:
    return (width * width + width) * 4


def test_the_result_cache_does_not_count_model_weights(registry):
    ex = Executor(registry=registry)
    ex.run(toy_graph(registry, "a", width=512).build())
    assert len(ex.cache.memory) == 3
    assert ex.cache.memory.bytes < 10_000 < weight_bytes(512)       # the output, not the weights
    assert ex.models.bytes("cpu") == weight_bytes(512)


def test_a_shared_tensor_is_counted_once_and_freed_with_its_last_entry():
    cache = MemoryCache()
    batch = torch.zeros(8, 1000)
    cache.put("whole", {"value": batch})
    alone = cache.bytes
    cache.put("first", {"value": batch[0:1]})                       # a view: the same storage
    assert alone >= batch.nbytes and cache.bytes - alone < 500
    cache.discard("whole")
    assert cache.bytes >= batch.nbytes                              # still held by the view
    cache.discard("first")
    assert cache.bytes == 0


def test_accounting_follows_what_entries_hold():
    cache = MemoryCache()
    values = {f"k{i}": {"t": torch.ones(1000 * (i + 1)), "text": "x" * 1000} for i in range(10)}
    for key, value in values.items():
        cache.put(key, value)
    held = sum(footprint(v).bytes for v in values.values())
    payload = sum(v["t"].nbytes + len(v["text"]) for v in values.values())
    assert cache.bytes == held and payload <= cache.bytes <= payload * 1.1


def test_models_are_kept_within_the_budget_and_unloaded_for_real(registry):
    budget = int(weight_bytes(512) * 1.5)
    ex = Executor(registry=registry, models=ModelManager(ModelPaths([]), budget_bytes=budget))
    ex.run(toy_graph(registry, "a", width=512).build())
    first = weakref.ref(ex.models.get(("toy", "a", 512), lambda: None))
    ex.run(toy_graph(registry, "b", width=512).build())               # does not fit beside "a"
    assert ex.models.bytes("cpu") <= budget and len(ex.models) == 1
    gc.collect()
    assert first() is None                  # no handle left in the result cache keeps it alive
    plan = ex.plan(toy_graph(registry, "a", width=512).build())
    assert plan.key("load") not in ex.cache.memory                   # its handle was dropped ...
    assert plan.key("y") in ex.cache.memory                           # ... results computed with it stay


def test_unloading_from_cuda_returns_memory_to_the_driver(monkeypatch):
    from engine import models as models_module

    monkeypatch.setattr(models_module, "device_bytes", lambda model: {"cuda:0": 600})
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    manager = ModelManager(ModelPaths([]), budget_bytes=1000)
    manager.get(("m", 1), lambda: torch.nn.Linear(2, 2))
    assert emptied == []
    manager.get(("m", 2), lambda: torch.nn.Linear(2, 2))
    assert emptied == [True] and ("m", 1) not in manager and ("m", 2) in manager


def test_two_runs_asking_for_one_model_at_once_load_it_once():
    manager = ModelManager(ModelPaths([]))
    loads = []

    def slow_load():
        loads.append(1)
        time.sleep(0.2)
        return torch.nn.Linear(4, 4)

    got = []
    threads = [threading.Thread(target=lambda: got.append(manager.get(("m",), slow_load))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(got) == 4 and all(m is got[0] for m in got)


def test_a_failed_load_reaches_every_waiter_and_is_retried_next_time():
    manager = ModelManager(ModelPaths([]))
    errors = []

    def failing():
        time.sleep(0.1)
        raise OSError("truncated file")

    def ask():
        try:
            manager.get(("m",), failing)
        except OSError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 3
    assert isinstance(manager.get(("m",), lambda: torch.nn.Linear(1, 1)), torch.nn.Linear)


def test_the_digest_memo_is_bounded(tmp_path, monkeypatch):
    from engine import models as models_module

    monkeypatch.setattr(models_module, "_DIGEST_MEMO_SIZE", 3)
    for i in range(10):
        path = tmp_path / f"f{i}"
        path.write_bytes(bytes([i]) * 10)
        models_module.file_digest(path)
    assert len(models_module._digest_memo) == 3


def test_run_history_is_bounded_and_keyed_per_graph(registry):
    from engine.explain import RunHistory

    history = RunHistory(keep=2)
    ex = Executor(registry=registry, history=history)
    for name in ("a", "b", "c"):
        g = toy_graph(registry, name)
        g.name = name
        ex.run(g.build())
    assert list(history._graphs) == ["b", "c"]
    assert set(history.last("c")) == {"load", "y", "out"}


def test_a_result_cache_that_goes_away_is_not_kept_alive_by_a_shared_manager(registry):
    manager = ModelManager(ModelPaths([]))
    ex = Executor(registry=registry, models=manager)
    ex.run(toy_graph(registry, "a").build())
    cache = weakref.ref(ex.cache.memory)
    del ex
    gc.collect()
    assert cache() is None


def test_the_models_budget_is_a_setting_and_a_flag():
    from engine import Settings
    from engine.cli import _settings, build_parser

    args = build_parser().parse_args(["run", "graph.json", "--models-memory-gb", "1.5"])
    settings = _settings(args)
    assert settings.models_memory_gb == 1.5
    assert Executor(settings=settings).models.budget("cpu") == int(1.5 * 2**30)
    assert Executor(settings=Settings()).models.budget("cpu") > 0      # from the machine's RAM
