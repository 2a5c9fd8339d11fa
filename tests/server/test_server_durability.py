"""A run accepted with 2xx is never lost: crashes, kill -9 and restarts re-queue or report it."""
from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

from loom_server_testing import steps_graph, wait_final, wait_status
from server.store import (CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, IdempotencyConflict,
                          RunStore)


@pytest.fixture
def store(tmp_path):
    s = RunStore(tmp_path / "runs.sqlite3")
    yield s
    s.close()


def test_runs_are_claimed_once_in_submission_order(store):
    ids = [store.create({"n": i}, {})[0].id for i in range(3)]
    claimed = [store.claim_next() for _ in range(4)]
    assert [r.id for r in claimed[:3]] == ids and claimed[3] is None
    assert all(r.status == RUNNING and r.attempts == 1 for r in claimed[:3])
    assert store.finish(ids[0], SUCCEEDED, {"ran": ["a"]}).status == SUCCEEDED
    assert store.finish(ids[0], FAILED) is None        # a run ends once


def test_concurrent_submissions_and_claims_never_share_a_run(store):
    created, claimed = [], []

    def submit():
        for i in range(25):
            created.append(store.create({"i": i}, {})[0].id)

    def claim():
        deadline = time.monotonic() + 5
        while len(claimed) < 100 and time.monotonic() < deadline:
            run = store.claim_next()
            if run is not None:
                claimed.append(run.id)

    threads = [threading.Thread(target=submit) for _ in range(4)] + \
              [threading.Thread(target=claim) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(created)) == 100
    assert sorted(claimed) == sorted(created)


def test_recover_requeues_an_interrupted_run_until_attempts_run_out(store):
    run_id = store.create({}, {})[0].id
    store.claim_next()
    [recovered] = store.recover(max_attempts=2)
    assert recovered.status == QUEUED and "re-queued" in recovered.notes[0]
    assert store.claim_next().attempts == 2
    [failed] = store.recover(max_attempts=2)
    assert failed.status == FAILED and failed.error["error"] == "interrupted"
    assert "2 of 2 attempts" in failed.error["message"]
    assert store.get(run_id).status == FAILED


def test_a_cancel_requested_before_a_crash_is_honoured_after_it(store):
    run_id = store.create({}, {})[0].id
    store.claim_next()
    assert store.request_cancel(run_id).cancel_requested
    [run] = store.recover(max_attempts=3)
    assert run.status == CANCELLED


def test_idempotency_keys_survive_and_refuse_a_different_body(tmp_path):
    path = tmp_path / "runs.sqlite3"
    first = RunStore(path)
    run, created = first.create({"g": 1}, {"p": 2}, idempotency_key="k1")
    first.close()
    again = RunStore(path)      # as after a restart
    same, created_again = again.create({"g": 1}, {"p": 2}, idempotency_key="k1")
    assert created and not created_again and same.id == run.id
    with pytest.raises(IdempotencyConflict):
        again.create({"g": 2}, {}, idempotency_key="k1")
    again.close()


def test_kill_9_while_a_run_runs_loses_and_duplicates_nothing(start_server, tmp_path):
    journal = tmp_path / "journal.txt"
    data = tmp_path / "data"
    proc = start_server(data_dir=data)
    with proc.client() as client:
        # The first run takes ~1.5 s, so the kill lands while it runs even on a busy machine.
        ids = [client.post("/v1/runs", json={"graph": steps_graph(
            steps=50 if i == 0 else 5, seconds=0.03, tag=f"run{i}", journal=str(journal))}).json()["id"]
            for i in range(4)]
        wait_status(client, ids[0], RUNNING)
        time.sleep(0.1)
    proc.kill()

    proc = start_server(data_dir=data)
    with proc.client() as client:
        runs = {run_id: wait_final(client, run_id, timeout=30) for run_id in ids}
        listed = client.get("/v1/runs", params={"limit": 500}).json()["runs"]
    assert all(r["status"] == SUCCEEDED for r in runs.values()), runs
    assert runs[ids[0]]["attempts"] == 2
    assert any("re-queued" in note for note in runs[ids[0]]["notes"])
    assert all(runs[i]["attempts"] == 1 for i in ids[1:])
    assert sorted(r["id"] for r in listed) == sorted(ids)          # none lost, none added
    completions = Counter(line.split()[0] for line in journal.read_text().splitlines())
    assert completions == Counter({run_id: 1 for run_id in ids})   # each ran to the end once


def test_a_run_that_keeps_crashing_the_server_is_failed_with_the_reason(start_server, tmp_path):
    data = tmp_path / "data"
    proc = start_server("--max-attempts", "1", data_dir=data)
    with proc.client() as client:
        doomed = client.post("/v1/runs", json={"graph": steps_graph(steps=50, seconds=0.05)}).json()["id"]
        after = client.post("/v1/runs", json={"graph": steps_graph(steps=2, tag="after")}).json()["id"]
        wait_status(client, doomed, RUNNING)
    proc.kill()
    proc = start_server("--max-attempts", "1", data_dir=data)
    with proc.client() as client:
        run = wait_final(client, doomed)
        assert run["status"] == FAILED and run["error"]["error"] == "interrupted"
        assert "not retried" in run["error"]["message"]
        assert wait_final(client, after)["status"] == SUCCEEDED


def test_a_clean_shutdown_puts_the_running_run_back_without_using_an_attempt(start_server, tmp_path):
    data = tmp_path / "data"
    proc = start_server(data_dir=data)
    with proc.client() as client:
        run_id = client.post("/v1/runs", json={"graph": steps_graph(steps=40, seconds=0.05)}).json()["id"]
        wait_status(client, run_id, RUNNING)
    proc.stop()
    proc = start_server(data_dir=data)
    with proc.client() as client:
        run = wait_final(client, run_id)
    assert run["status"] == SUCCEEDED and run["attempts"] == 1
    assert any("shut down" in note for note in run["notes"])
