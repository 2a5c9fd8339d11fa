"""The server on the Ray backend, in this process, over two worker actors on the session's Ray.

Each test reads what a user would: run records over HTTP (status, attempts, notes, outputs),
events from /v1/events, and a journal the test node appends to each time it completes.
"""
from __future__ import annotations

import time
from pathlib import Path

import pytest
import ray
from fastapi.testclient import TestClient

from loom_server_testing import graph, steps_graph

from engine import Settings
from engine.ray_backend import WorkerSpec
from server.main import ServerConfig, build, node_registry
from server.ray_dispatch import RayOptions

NODE_MODULES = ("nodes.primitives", "loom_test_nodes", "loom_ray_nodes")
FINAL = {"succeeded", "failed", "cancelled"}


@pytest.fixture(scope="module")
def served(ray_cluster, tmp_path_factory):
    """(server, client): two workers, one logical GPU each."""
    data = tmp_path_factory.mktemp("ray-server")
    (data / "models" / "checkpoints").mkdir(parents=True)
    settings = Settings(output_dir=data / "outputs", input_dir=data / "inputs",
                        models_dirs=[data / "models"])
    options = RayOptions(WorkerSpec.here(settings, NODE_MODULES, installed_nodes=False),
                         workers=2, gpus_per_worker=1)
    config = ServerConfig(data_dir=data, allowed_hosts=("testserver",))
    server = build(config, settings, node_registry(NODE_MODULES, installed=False), ray=options)
    with TestClient(server.app) as client:
        yield server, client


def submit(client, doc: dict, params: dict | None = None) -> str:
    answer = client.post("/v1/runs", json={"graph": doc, "params": params or {}})
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def wait_final(client, run_id: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in FINAL:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} did not finish in {timeout}s")


def journal_counts(path: Path) -> dict[str, int]:
    counts: dict[str, int] = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        run_id = line.split()[0]
        counts[run_id] = counts.get(run_id, 0) + 1
    return counts


def model_graph(name: str) -> dict:
    return graph({"load": {"type": "test.load_model", "inputs": {"name": name}},
                  "use": {"type": "test.use_model", "inputs": {"model": ["load", "value"]}},
                  "out": {"type": "show", "inputs": {"value": ["use", "value"]}}})


def test_twenty_runs_over_two_workers_each_run_exactly_once(served, tmp_path):
    _, client = served
    journal = tmp_path / "journal"
    ids = [submit(client, steps_graph(steps=3, seconds=0.02, tag=str(i), journal=str(journal)))
           for i in range(20)]
    runs = [wait_final(client, run_id) for run_id in ids]
    assert [r["status"] for r in runs] == ["succeeded"] * 20
    assert all(r["attempts"] == 1 for r in runs)
    assert journal_counts(journal) == {run_id: 1 for run_id in ids}
    assert [r["outputs"]["out"]["value"] for r in runs] == [str(i) for i in range(20)]
    assert len({r["worker"] for r in runs}) == 2, "both workers took runs"


def test_alternating_two_checkpoints_load_each_once(served):
    server, client = served
    folder = server.settings.models_dirs[0] / "checkpoints"
    for name in ("alpha", "beta"):
        (folder / f"{name}.safetensors").write_bytes(name.encode() * 100)
    ids = [submit(client, model_graph(["alpha", "beta"][i % 2])) for i in range(10)]
    runs = [wait_final(client, run_id) for run_id in ids]
    assert [r["status"] for r in runs] == ["succeeded"] * 10
    assert sum(r["model_loads"] for r in runs) == 2
    by_model = {}
    for i, run in enumerate(runs):
        by_model.setdefault(i % 2, set()).add(run["worker"])
    assert all(len(workers) == 1 for workers in by_model.values()), by_model


def test_worker_killed_mid_run_is_retried_once_and_completes_once(served, tmp_path):
    server, client = served
    journal = tmp_path / "journal"
    run_id = submit(client, steps_graph(steps=30, seconds=0.05, journal=str(journal)))
    deadline = time.monotonic() + 30
    while not any(s.run_id == run_id for s in server.dispatcher.slots):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.02)
    time.sleep(0.3)
    slot = next(s for s in server.dispatcher.slots if s.run_id == run_id)
    ray.kill(server.dispatcher.pool.actors[slot.index], no_restart=False)
    run = wait_final(client, run_id)
    assert run["status"] == "succeeded"
    assert run["attempts"] == 2
    assert any("was lost during attempt 1" in note for note in run["notes"]), run["notes"]
    assert journal_counts(journal) == {run_id: 1}


def test_node_failure_on_a_worker_fails_the_run_with_node_and_message(served):
    _, client = served
    run_id = submit(client, graph({"bad": {"type": "test.fail", "inputs": {"message": "no ink left"}},
                                   "out": {"type": "show", "inputs": {"value": ["bad", "value"]}}}))
    run = wait_final(client, run_id)
    assert run["status"] == "failed"
    assert run["attempts"] == 1
    assert run["error"]["node"] == "bad"
    assert "no ink left" in run["error"]["message"]
    assert "traceback" not in run["error"]


def test_output_files_come_back_as_bytes_and_download(served):
    server, client = served
    run_id = submit(client, graph({"png": {"type": "test.write_png", "inputs": {"size": 8}}}))
    run = wait_final(client, run_id)
    assert run["status"] == "succeeded", run
    [name] = run["files"]
    assert name.startswith(run_id + "/")
    assert (Path(server.settings.output_dir) / name).is_file()
    answer = client.get(f"/v1/runs/{run_id}/outputs/{name}")
    assert answer.status_code == 200
    assert answer.content.startswith(b"\x89PNG")


def test_events_arrive_in_order_within_a_second_and_cancel_stops_within_a_step(served):
    _, client = served
    step_seconds = 0.2
    with client.websocket_connect("/v1/events") as ws:
        run_id = submit(client, steps_graph(steps=100, seconds=step_seconds))
        progress, lags, acknowledged = [], [], None
        while True:
            event = ws.receive_json()
            if event.get("run_id") != run_id:
                continue
            if event["kind"] == "node_progress":
                progress.append(event)
                lags.append(time.time() - event["time"])
                if len(progress) == 3 and acknowledged is None:
                    assert client.post(f"/v1/runs/{run_id}/cancel").status_code == 202
                    acknowledged = time.time()
            if event["kind"] in ("run_finished", "run_failed", "run_cancelled"):
                ended = event
                break
    assert ended["kind"] == "run_cancelled"
    steps = [e["data"]["step"] for e in progress]
    assert steps == list(range(1, len(steps) + 1))
    assert max(lags) < 1.0, lags
    # Stamped on the worker: once the cancel was acknowledged, at most the step under way
    # (plus the hop to the worker) still reports.
    late = [e["data"]["step"] for e in progress if e["time"] > acknowledged + step_seconds + 0.3]
    assert not late, (late, steps)
    assert ended["time"] - acknowledged < step_seconds + 1.0
    assert wait_final(client, run_id)["status"] == "cancelled"
