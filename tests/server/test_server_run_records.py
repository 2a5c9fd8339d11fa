"""A finished run's 409 says what happened in words; run bodies never carry `graph: null`."""
from __future__ import annotations

from loom_server_testing import add_graph


def test_cancelling_a_finished_run_says_it_already_finished(client):
    run = client.post("/v1/runs?wait=true", json={"graph": add_graph(2, 3)}).json()
    assert run["status"] == "succeeded"
    assert "graph" not in run and "params" not in run        # left out, never null
    again = client.post(f"/v1/runs/{run['id']}/cancel")
    assert again.status_code == 409
    message = again.json()["message"]
    assert message == (f"run {run['id']} already finished (succeeded); only a queued or running "
                       "run can be cancelled")
    full = client.get(f"/v1/runs/{run['id']}").json()
    assert full["graph"]["nodes"] and full["params"] == {}


def test_submit_reports_missing_input_files_like_loom_validate(client):
    g = {"loom": 1, "nodes": {
        "read": {"type": "test.read_input", "inputs": {"image": "not-uploaded.png"}},
        "out": {"type": "show", "inputs": {"value": ["read", "value"]}}}}
    response = client.post("/v1/runs", json={"graph": g})
    assert response.status_code == 422
    problems = {(p.get("node"), p.get("input")): p["message"] for p in response.json()["problems"]}
    assert "no file 'not-uploaded.png' in the input folder" in problems[("read", "image")]
