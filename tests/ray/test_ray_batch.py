"""`loom batch --backend ray`'s backend: items spread over worker actors, files sent back as bytes."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from engine import Graph, Settings
from engine.batch import RayBackend, run_batch
from engine.ray_backend import WorkerSpec

BATCH_TESTS = Path(__file__).resolve().parents[1] / "batch"
sys.path.insert(0, str(BATCH_TESTS))


def test_a_batch_on_one_worker_per_gpu_writes_every_item_once(ray_cluster, tmp_path):
    graph = Graph.from_dict({"loom": 1, "params": {"seed": {"node": "item", "input": "seed"}},
                             "nodes": {"item": {"type": "test.batch_item",
                                                "inputs": {"seed": 0, "seconds": 0.1}}}})
    settings = Settings(output_dir=tmp_path / "unused", input_dir=tmp_path, models_dirs=[tmp_path])
    # No worker count: one per GPU (the session's Ray declares two).
    backend = RayBackend(WorkerSpec.here(settings, ["loom_batch_nodes"], installed_nodes=False),
                         workers=None, gpus_per_worker=1)
    try:
        report = run_batch(graph, [{"seed": s} for s in range(8)], tmp_path / "out", backend)
    finally:
        backend.close()
    assert (report.succeeded, report.failed, report.images) == (8, [], 8)
    records = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert sorted(r["item"] for r in records) == list(range(8))
    assert len({r["worker"] for r in records}) == 2
    for record in records:
        [name] = record["files"]
        assert name == f"{record['item']:05d}-item-{record['params']['seed']}.png"
        assert (tmp_path / "out" / name).read_bytes()[:4] == b"\x89PNG"
        assert record["outputs"] == {"item": {"value": name}}


def test_an_item_whose_worker_dies_is_tried_again_on_the_restarted_worker(ray_cluster, tmp_path):
    import ray

    journal = tmp_path / "journal"
    graph = Graph.from_dict({"loom": 1, "params": {"seed": {"node": "item", "input": "seed"}},
                             "nodes": {"item": {"type": "test.batch_item", "inputs": {
                                 "seed": 0, "seconds": 1.0, "journal": str(journal)}}}})
    settings = Settings(output_dir=tmp_path / "unused", input_dir=tmp_path, models_dirs=[tmp_path])
    backend = RayBackend(WorkerSpec.here(settings, ["loom_batch_nodes"], installed_nodes=False), workers=2)
    killed = []

    def kill_a_worker_once(report, record):
        # The worker that just answered is now 0.3 s into its next 1 s item: kill it there.
        if not killed:
            killed.append(record["worker"])
            time.sleep(0.3)
            ray.kill(backend.pool.actors[int(record["worker"].rsplit("-", 1)[1])], no_restart=False)

    try:
        report = run_batch(graph, [{"seed": s} for s in range(6)], tmp_path / "out", backend,
                           on_item=kill_a_worker_once)
    finally:
        backend.close()
    assert killed and (report.succeeded, report.failed) == (6, [])
    completions = journal.read_text().split()
    assert sorted(set(completions)) == [str(s) for s in range(6)]
    assert len(completions) == 6, "no item completed twice"
