"""Choosing runs for Ray workers, without Ray: model affinity rules and the store's guards."""
from __future__ import annotations

import time

import pytest

from engine import Executor, Registry, Settings
from engine.ray_backend import WorkerSpec
from server.ray_dispatch import RayDispatcher, RayOptions
from server.store import RunStore


@pytest.fixture
def store(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite3")
    yield store
    store.close()


def dispatcher(store, tmp_path, models: dict[str, frozenset], workers: int = 2, affinity: bool = True):
    settings = Settings(output_dir=tmp_path / "out", input_dir=tmp_path, models_dirs=[])
    options = RayOptions(WorkerSpec(settings), workers=workers, affinity=affinity)
    ray = RayDispatcher(store, Executor(registry=Registry(), settings=settings), options,
                        output_dir=tmp_path / "out")
    ray._models_of.update(models)     # what each run's plan reads, as planning would find it
    return ray


def queue(store, *names: str) -> dict[str, str]:
    return {name: store.create({"loom": 1, "nodes": {}, "name": name}, {})[0].id for name in names}


def test_a_worker_takes_the_oldest_run_whose_models_it_holds(store, tmp_path):
    ids = queue(store, "b1", "a1")
    ray = dispatcher(store, tmp_path, {ids["b1"]: frozenset({"B"}), ids["a1"]: frozenset({"A"})})
    ray.slots[0].holding = frozenset({"A"})
    assert ray._choose(ray.slots[0], store.queued()).id == ids["a1"]


def test_a_worker_prefers_a_run_no_other_worker_holds_warm(store, tmp_path):
    ids = queue(store, "a1", "b1")
    ray = dispatcher(store, tmp_path, {ids["a1"]: frozenset({"A"}), ids["b1"]: frozenset({"B"})})
    ray.slots[1].expecting = frozenset({"A"})          # busy with an A run
    assert ray._choose(ray.slots[0], store.queued()).id == ids["b1"]


def test_a_run_waits_for_its_warm_worker_unless_the_queue_is_long_or_it_waited(store, tmp_path):
    ids = queue(store, "a1")
    ray = dispatcher(store, tmp_path, {ids["a1"]: frozenset({"A"})})
    ray.slots[1].holding = frozenset({"A"})
    assert ray._choose(ray.slots[0], store.queued()) is None
    more = queue(store, "a2", "a3", "a4")
    ray._models_of.update({run_id: frozenset({"A"}) for run_id in more.values()})
    assert ray._choose(ray.slots[0], store.queued()) is None, "a short backlog waits too"
    ray._models_of[queue(store, "a5")["a5"]] = frozenset({"A"})
    assert ray._choose(ray.slots[0], store.queued()).id == ids["a1"], "5 queued > 2 per worker"
    patient = dispatcher(store, tmp_path, {ids["a1"]: frozenset({"A"})}, workers=4)
    patient.slots[1].holding = frozenset({"A"})
    patient._models_of.update(ray._models_of)
    patient.options = RayOptions(patient.options.spec, workers=4, affinity_wait=0.0)
    time.sleep(0.01)
    assert patient._choose(patient.slots[0], store.queued()).id == ids["a1"], "waited long enough"


def test_without_affinity_the_oldest_run_goes_first(store, tmp_path):
    ids = queue(store, "a1", "b1")
    ray = dispatcher(store, tmp_path, {ids["a1"]: frozenset({"A"}), ids["b1"]: frozenset({"B"})},
                     affinity=False)
    ray.slots[0].holding = frozenset({"B"})
    assert ray._choose(ray.slots[0], store.queued()).id == ids["a1"]


def test_the_store_claims_a_chosen_run_once_and_ignores_a_stale_attempt(store):
    first, second = queue(store, "one", "two").values()
    assert [r.id for r in store.queued()] == [first, second]
    claimed = store.claim(second)
    assert claimed.status == "running" and claimed.attempts == 1
    assert store.claim(second) is None
    store.requeue(second, "re-queued: worker lost")
    again = store.claim(second)
    assert again.attempts == 2
    assert store.finish(second, "succeeded", {}, attempt=1) is None, "a late reply of attempt 1"
    assert store.get(second).status == "running"
    assert store.finish(second, "succeeded", {}, attempt=2).status == "succeeded"
