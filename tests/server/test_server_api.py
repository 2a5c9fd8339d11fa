"""The run API against a real server: submit, wait, read, list, cancel, outputs, catalogue."""
from __future__ import annotations

import time
import uuid
from pathlib import Path

from websockets.sync.client import connect

from loom_server_testing import (add_graph, graph, recv_json, steps_graph, wait_final,
                                 wait_status)


def test_submit_returns_queued_then_the_run_succeeds_with_outputs(client):
    response = client.post("/v1/runs", json={"graph": add_graph(2, 3)})
    assert response.status_code == 202
    body = response.json()
    assert body["status"] == "queued" and body["id"].startswith("run_")
    assert response.headers["location"] == f"/v1/runs/{body['id']}"

    run = wait_final(client, body["id"])
    assert run["status"] == "succeeded"
    assert run["outputs"] == {"out": {"value": 5.0}}
    assert set(run["ran"]) | set(run["cached"]) == {"a", "sum", "out"}
    assert set(run["timings"]) >= set(run["ran"])
    assert run["attempts"] == 1 and run["error"] is None
    assert run["graph"]["nodes"]["sum"]["type"] == "add"


def test_wait_true_answers_with_outputs_and_params_apply(client):
    response = client.post("/v1/runs?wait=true", json={"graph": add_graph(2, 3), "params": {"b": 40}})
    assert response.status_code == 200
    run = response.json()
    assert run["status"] == "succeeded"
    assert run["outputs"]["out"]["value"] == 42.0


def test_second_run_with_an_edit_reuses_the_warm_cache(client):
    g = add_graph(a=1000.5, b=1)
    first = client.post("/v1/runs?wait=true", json={"graph": g}).json()
    second = client.post("/v1/runs?wait=true", json={"graph": g, "params": {"b": 2}}).json()
    assert "a" in first["ran"]
    assert second["cached"] == ["a"] and set(second["ran"]) == {"sum", "out"}
    assert second["outputs"]["out"]["value"] == 1002.5


def test_invalid_graph_is_refused_at_once_with_every_problem(client):
    bad = graph({"a": {"type": "flaot", "inputs": {"value": 1}},
                 "sum": {"type": "add", "inputs": {"a": ["missing", "value"], "b": "x"}},
                 "out": {"type": "show", "inputs": {"value": ["sum", "value"]}}})
    response = client.post("/v1/runs", json={"graph": bad})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_graph"
    located = {(p.get("node"), p.get("input")) for p in body["problems"]}
    assert ("a", None) in located          # unknown type
    assert ("sum", "a") in located         # link to a missing node
    assert ("sum", "b") in located         # wrong literal type
    assert any("flaot" in p["message"] for p in body["problems"])
    assert client.get("/v1/runs", params={"limit": 500}).json()["runs"][0]["id"] != body.get("id")


def test_malformed_request_bodies_are_422_with_problems(client):
    for payload in ({}, {"graph": "nope"}, {"graph": add_graph(), "extra": 1}, [1, 2]):
        response = client.post("/v1/runs", json=payload)
        assert response.status_code == 422, payload
        assert response.json()["error"] in ("invalid_request", "invalid_graph")
    response = client.post("/v1/runs", json={"graph": {"loom": 1, "nodes": {}}})
    assert response.status_code == 422


def test_graph_limits_are_refused_with_a_clear_message(client):
    big = graph({"img": {"type": "test.image_size", "inputs": {"width": 8192, "height": 512,
                                                               "batch_size": 64}},
                 "work": {"type": "test.steps", "inputs": {"steps": 5000}},
                 "out": {"type": "show", "inputs": {"value": ["img", "value"]}},
                 "out2": {"type": "show", "inputs": {"value": ["work", "value"]}}})
    response = client.post("/v1/runs", json={"graph": big})
    assert response.status_code == 422
    problems = {(p["node"], p["input"]): p["message"] for p in response.json()["problems"]}
    assert "limit of 2048" in problems[("img", "width")]
    assert "limit of 8" in problems[("img", "batch_size")]
    assert "limit of 150" in problems[("work", "steps")]

    # A param can't sneak past a limit either.
    g = graph({"img": {"type": "test.image_size", "inputs": {"width": 64}},
               "out": {"type": "show", "inputs": {"value": ["img", "value"]}}},
              params={"w": {"node": "img", "input": "width"}})
    response = client.post("/v1/runs", json={"graph": g, "params": {"w": 100_000}})
    assert response.status_code == 422
    assert response.json()["problems"][0]["input"] == "width"

    repeats = graph({"r": {"type": "test.image_size", "inputs": {}},
                     "o": {"type": "show", "inputs": {"value": ["r", "value"]}}})
    from engine import Registry
    from server.config import GraphLimits
    from server.limits import check_graph, input_rules_of
    problems = check_graph({"loom": 1, "nodes": {
        "gate": {"type": "retry", "inputs": {"max_tries": 100}},
        "sheet": {"type": "batch_over", "inputs": {"values": list(range(50))}},
        "up": {"type": "upscale_latent", "inputs": {"scale": 8.0}}}}, {},
        GraphLimits().engine_limits(), input_rules_of(Registry.default().catalogue()),
        input_dir=Path("."), output_dir=Path("."))
    assert {(p.node, p.input) for p in problems} == {("gate", "max_tries"), ("sheet", "values"),
                                                     ("up", "scale")}
    assert client.post("/v1/runs", json={"graph": repeats}).status_code == 202

    many = graph({f"n{i}": {"type": "int", "inputs": {"value": i}} for i in range(300)}
                 | {"out": {"type": "show", "inputs": {"value": ["n0", "value"]}}})
    response = client.post("/v1/runs", json={"graph": many})
    assert response.status_code == 422
    assert "at most 200" in response.json()["problems"][0]["message"]


def test_idempotency_key_makes_a_retried_post_not_run_twice(client):
    key = uuid.uuid4().hex
    body = {"graph": add_graph(7, 1)}
    first = client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
    again = client.post("/v1/runs", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 202 and again.status_code == 200
    assert again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/runs", json={"graph": add_graph(7, 2)}, headers={"Idempotency-Key": key})
    assert other.status_code == 409 and other.json()["run"] == first.json()["id"]
    ids = [r["id"] for r in client.get("/v1/runs", params={"limit": 500}).json()["runs"]]
    assert ids.count(first.json()["id"]) == 1


def test_failing_node_fails_the_run_naming_the_node(client):
    g = graph({"bad": {"type": "test.fail", "inputs": {"message": "out of paint"}},
               "out": {"type": "show", "inputs": {"value": ["bad", "value"]}}})
    run = client.post("/v1/runs?wait=true", json={"graph": g}).json()
    assert run["status"] == "failed"
    assert run["error"]["node"] == "bad" and run["error"]["type"] == "test.fail"
    assert "out of paint" in run["error"]["message"]


def test_list_filters_by_status_and_pages(client):
    ids = [client.post("/v1/runs", json={"graph": add_graph(i, 0.5)}).json()["id"] for i in range(5)]
    for run_id in ids:
        wait_final(client, run_id)
    page = client.get("/v1/runs", params={"status": "succeeded", "limit": 2}).json()
    assert len(page["runs"]) == 2 and page["next"] is not None
    assert all(r["status"] == "succeeded" for r in page["runs"])
    seen = [r["id"] for r in page["runs"]]
    while page["next"] is not None:
        page = client.get("/v1/runs", params={"status": "succeeded,failed", "limit": 2,
                                              "before": page["next"]}).json()
        seen += [r["id"] for r in page["runs"]]
    assert len(seen) == len(set(seen))
    assert set(ids) <= set(seen)
    assert seen.index(ids[-1]) < seen.index(ids[0])  # newest first
    assert client.get("/v1/runs", params={"status": "sleeping"}).status_code == 422


def test_cancel_stops_a_running_sampler_within_one_step(server, client):
    # Steps long enough that event delivery lag (a loaded machine) is small beside one step.
    run_id = client.post("/v1/runs", json={"graph": steps_graph(steps=100, seconds=0.25)}).json()["id"]
    with connect(f"{server.ws_url}/v1/events?run={run_id}") as ws:
        assert recv_json(ws)["kind"] == "run_status"
        step = 0
        while step < 2:
            event = recv_json(ws)
            if event["kind"] == "node_progress":
                step = event["data"]["step"]
        response = client.post(f"/v1/runs/{run_id}/cancel")
        assert response.status_code in (200, 202)
        at_cancel = step
        while True:
            event = recv_json(ws)
            if event["kind"] == "node_progress":
                step = event["data"]["step"]
            if event["kind"] == "run_cancelled":
                break
    assert step - at_cancel <= 2   # the step in flight, and at most one report racing the request
    run = client.get(f"/v1/runs/{run_id}").json()
    assert run["status"] == "cancelled"
    assert "work" in run["error"]["message"]
    again = client.post(f"/v1/runs/{run_id}/cancel")
    assert again.status_code == 409


def test_cancel_a_queued_run_and_it_never_starts(client):
    blocker = client.post("/v1/runs", json={"graph": steps_graph(steps=100, seconds=0.05)}).json()["id"]
    wait_status(client, blocker, "running")
    queued = client.post("/v1/runs", json={"graph": steps_graph(steps=2, tag="never")}).json()["id"]
    response = client.post(f"/v1/runs/{queued}/cancel")
    assert response.status_code == 200 and response.json()["status"] == "cancelled"
    client.post(f"/v1/runs/{blocker}/cancel")
    run = wait_final(client, queued)
    assert run["status"] == "cancelled" and run["attempts"] == 0 and run["ran"] == []
    assert client.post("/v1/runs/run_nope/cancel").status_code == 404


def test_output_files_are_downloadable_with_safe_headers(client):
    g = graph({"img": {"type": "test.write_png", "inputs": {"size": 16}},
               "note": {"type": "test.write_file", "inputs": {"text": "<script>alert(1)</script>"}}})
    run = client.post("/v1/runs?wait=true", json={"graph": g}).json()
    assert run["status"] == "succeeded", run
    image = run["outputs"]["img"]["value"]
    assert image["file"] in run["files"]
    response = client.get(image["url"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.content.startswith(b"\x89PNG")
    note = client.get(run["outputs"]["note"]["value"]["url"])
    assert note.headers["content-type"].startswith("text/plain")
    assert "sandbox" in note.headers["content-security-policy"]
    # Only files the run produced: another existing output is not reachable through it.
    other = client.post("/v1/runs?wait=true", json={"graph": graph({
        "img": {"type": "test.write_png", "inputs": {}}})}).json()
    assert client.get(f"/v1/runs/{run['id']}/outputs/{other['files'][0]}").status_code == 404


def test_non_json_outputs_are_summarised(client):
    g = graph({"t": {"type": "test.tensor", "inputs": {"n": 4}},
               "o": {"type": "show", "inputs": {"value": ["t", "value"]}}})
    run = client.post("/v1/runs?wait=true", json={"graph": g}).json()
    assert run["outputs"]["o"]["value"] == {"type": "ndarray", "shape": [4, 2], "dtype": "float32"}


def test_unknown_run_is_404(client):
    assert client.get("/v1/runs/run_does_not_exist").status_code == 404
    assert client.get("/v1/runs/run_does_not_exist/outputs/x.png").status_code == 404


def test_catalogue_models_and_health(client):
    nodes = {n["type"]: n for n in client.get("/v1/nodes").json()["nodes"]}
    assert {"add", "show", "test.steps"} <= set(nodes)
    assert nodes["add"]["inputs"]["properties"]["a"]["type"] == "number"
    assert nodes["show"]["output_node"] is True
    models = client.get("/v1/models").json()["models"]
    assert models["checkpoints"] == ["tiny.safetensors"] and models["loras"] == []
    assert client.get("/healthz").json() == {"status": "ok"}


def test_wait_true_with_timeout_answers_202_while_running(client):
    started = time.monotonic()
    response = client.post("/v1/runs?wait=true&timeout=0.3",
                           json={"graph": steps_graph(steps=30, seconds=0.05)})
    assert time.monotonic() - started < 3
    assert response.status_code == 202 and response.json()["status"] in ("queued", "running")
    client.post(f"/v1/runs/{response.json()['id']}/cancel")


def test_the_example_graphs_fit_the_default_limits():
    import json

    from engine import Registry
    from server.config import GraphLimits
    from server.limits import check_graph, input_rules_of, too_many_nodes

    rules = input_rules_of(Registry.default().catalogue())
    examples = sorted((Path(__file__).resolve().parents[2] / "graphs").glob("*.json"))
    for path in examples:
        g = json.loads(path.read_text())
        assert too_many_nodes(g, GraphLimits()) is None, path.name
        problems = check_graph(g, {}, GraphLimits().engine_limits(), rules, input_dir=Path("in"),
                               output_dir=Path("out"))
        assert problems == [], path.name
