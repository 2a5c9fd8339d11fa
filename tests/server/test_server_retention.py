"""Retention: finished runs and their output files are pruned by --keep-runs / --keep-days;
by default everything is kept, and the server says so when it starts."""
from __future__ import annotations

import time

from loom_server_testing import graph, wait_final
from server.retention import Retention
from server.store import FAILED, SUCCEEDED, RunStore


def finished_run(store: RunStore, output_dir, name: str, status: str = SUCCEEDED) -> str:
    run, _ = store.create({"n": name}, {})
    store.claim_next()
    if name:
        (output_dir / name).write_text(name)
    store.finish(run.id, status, {"files": [name] if name else []})
    return run.id


def test_keep_runs_deletes_older_finished_runs_with_their_files(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite3")
    out = tmp_path / "out"
    out.mkdir()
    ids = [finished_run(store, out, f"r{i}.png", FAILED if i == 1 else SUCCEEDED) for i in range(4)]
    queued, _ = store.create({"n": "waiting"}, {})
    assert Retention(keep_runs=2).prune(store, out) == 2
    assert [store.get(i) is not None for i in ids] == [False, False, True, True]
    assert store.get(queued.id) is not None
    assert sorted(p.name for p in out.iterdir()) == ["r2.png", "r3.png"]


def test_keep_days_deletes_runs_finished_before_then_but_not_files_still_listed(tmp_path):
    store = RunStore(tmp_path / "runs.sqlite3")
    out = tmp_path / "out"
    out.mkdir()
    old = finished_run(store, out, "shared.png")
    recent, _ = store.create({"n": "recent"}, {})
    store.claim_next()
    store.finish(recent.id, SUCCEEDED, {"files": ["shared.png"]})
    with store._lock:   # age the first run by ten days
        store._db.execute("UPDATE runs SET finished_at = ? WHERE id = ?", (time.time() - 10 * 86400, old))
    assert Retention(keep_days=7).prune(store, out) == 1
    assert store.get(old) is None and store.get(recent.id) is not None
    assert (out / "shared.png").exists()


def test_the_default_keeps_everything():
    assert Retention().keeps_everything
    assert "keeping every finished run" in Retention().describe()


def test_a_server_with_keep_runs_prunes_as_runs_finish_and_says_so(start_server):
    proc = start_server("--keep-runs", "1", "--log-level", "info")
    with proc.client() as c:
        first = c.post("/v1/runs?wait=true", json={"graph": graph({
            "img": {"type": "test.write_png", "inputs": {}}})}).json()
        path = proc.data_dir / "outputs" / first["files"][0]
        assert path.exists()
        second = c.post("/v1/runs?wait=true", json={"graph": graph({
            "img": {"type": "test.write_png", "inputs": {}}})}).json()
        wait_final(c, second["id"])
        assert c.get(f"/v1/runs/{first['id']}").status_code == 404
        assert not path.exists()
        assert c.get(second["outputs"]["img"]["value"]["url"]).status_code == 200
    assert "keeping the newest 1 finished runs" in proc.log.read_text()


def test_a_default_server_says_it_keeps_every_run(start_server):
    proc = start_server("--log-level", "info")
    assert "keeping every finished run and its output files" in proc.log.read_text()
