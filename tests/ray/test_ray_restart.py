"""`kill -9` of a server whose runs are on Ray workers: on restart nothing is lost or run twice.

Real `python -m server --backend ray` processes join the session's Ray. The old server's
actors die with it (Ray ends the actors of a dead driver); the new server re-queues what
was running and its own workers finish every run exactly once.
"""
from __future__ import annotations

import time

from loom_server_testing import ServerProcess, steps_graph, wait_final

from test_ray_server import journal_counts


def test_server_killed_with_runs_in_flight_loses_and_repeats_nothing(ray_cluster, tmp_path):
    journal, data = tmp_path / "journal", tmp_path / "data"
    (data / "models").mkdir(parents=True)
    backend = ("--backend", "ray", "--ray-address", ray_cluster, "--workers", "1")
    first = ServerProcess(data, *backend).start(timeout=120)
    try:
        with first.client() as client:
            # One run on the worker, one queued behind it.
            ids = [client.post("/v1/runs", json={"graph": steps_graph(steps=40, seconds=0.1, tag=str(i),
                                                                      journal=str(journal))}).json()["id"]
                   for i in range(2)]
            deadline = time.monotonic() + 60
            while not client.get("/v1/runs", params={"status": "running"}).json()["runs"]:
                assert time.monotonic() < deadline, "the runs never started"
                time.sleep(0.05)
            time.sleep(0.5)
    finally:
        first.kill()

    second = ServerProcess(data, *backend).start(timeout=120)
    try:
        with second.client() as client:
            runs = {run_id: wait_final(client, run_id, timeout=120) for run_id in ids}
    finally:
        second.stop()
    assert {r["status"] for r in runs.values()} == {"succeeded"}
    first_run, queued_run = (runs[run_id] for run_id in ids)
    assert first_run["attempts"] == 2
    assert any("the server stopped" in note for note in first_run["notes"]), first_run["notes"]
    assert queued_run["attempts"] == 1
    assert journal_counts(journal) == {run_id: 1 for run_id in ids}
