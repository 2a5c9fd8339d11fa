"""POST /v1/models/pull: a token is required even on loopback; progress arrives on /v1/events."""
from __future__ import annotations

import time

from websockets.sync.client import connect

from loom_server_testing import TOKEN, recv_json
from tests.model_store.fake_hub import FakeHub


def test_pull_needs_a_token_even_on_loopback(start_server):
    server = start_server()
    with server.client() as client:
        response = client.post("/v1/models/pull", json={"source": "owner/name"})
    assert response.status_code == 403 and response.json()["error"] == "token_required"


def test_pull_through_the_server_reports_progress_and_lists_the_model(start_server, tmp_path,
                                                                        monkeypatch):
    data = bytes(range(256)) * 4000
    weights = b"".join([len(b'{"w":{"dtype":"U8","shape":[1024000],"data_offsets":[0,1024000]}}')
                        .to_bytes(8, "little"),
                        b'{"w":{"dtype":"U8","shape":[1024000],"data_offsets":[0,1024000]}}', data])
    with FakeHub() as hub:
        hub.files["style.safetensors"] = weights
        server = start_server(token=TOKEN)
        with server.client() as client, connect(
                f"{server.ws_url}/v1/events",
                additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
            started = client.post("/v1/models/pull", json={
                "source": f"{hub.url}/files/style.safetensors", "kind": "loras"})
            assert started.status_code == 202, started.text
            pull_id = started.json()["id"]
            events = []
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                event = recv_json(ws)
                if event["kind"] == "model_pull":
                    events.append(event["data"])
                    if event["data"]["status"] != "running":
                        break
            assert events[-1]["status"] == "installed", events[-1]
            assert events[-1]["id"] == pull_id and events[-1]["done"] == len(weights)
            assert client.get(f"/v1/models/pulls/{pull_id}").json()["status"] == "installed"
            listed = client.get("/v1/models").json()
            entry = next(e for e in listed["entries"] if e["name"] == "style.safetensors")
            assert entry["kind"] == "loras" and entry["size"] == len(weights)
            assert entry["format"] == "safetensors" and len(entry["sha256"]) == 64
            assert "style.safetensors" in listed["models"]["loras"]


def test_one_pull_at_a_time_per_source(monkeypatch, tmp_path):
    import threading

    from server import model_pulls
    from server.model_pulls import AlreadyPulling, ModelPulls

    release = threading.Event()

    def slow_pull(source, models_dir, **kwargs):
        release.wait(10)
        raise model_pulls.PullError("stopped by the test")

    monkeypatch.setattr(model_pulls, "pull", slow_pull)
    events = []
    pulls = ModelPulls([tmp_path], allow_pickle=False, publish=events.append)
    first = pulls.start("owner/model")
    try:
        pulls.start("owner/model")
        raise AssertionError("a second pull of the same source started")
    except AlreadyPulling as exc:
        assert exc.pull_id == first["id"]
    other = pulls.start("owner/other")     # another source is not blocked
    release.set()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            pulls.get(p["id"])["status"] == "running" for p in (first, other)):
        time.sleep(0.05)
    assert pulls.get(first["id"])["status"] == "failed"
    assert pulls.get(first["id"])["message"] == "stopped by the test"
    assert pulls.start("owner/model")["id"] != first["id"]   # free again once finished
