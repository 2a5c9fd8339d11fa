"""What a client may see and take: only its run's declared files, errors without internals,
uploads that leave process-wide state alone."""
from __future__ import annotations

import io
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import pytest
from PIL import Image
from websockets.sync.client import connect

from loom_server_testing import graph, recv_json, wait_final
from server.files import UploadRejected, describe_outputs, store_uploaded_image


def test_a_string_naming_someone_elses_file_does_not_make_it_downloadable(client):
    written = client.post("/v1/runs?wait=true", json={"graph": graph({
        "img": {"type": "test.write_png", "inputs": {}}})}).json()
    name = written["files"][0]
    assert written["outputs"]["img"]["value"]["file"] == name
    snoop = client.post("/v1/runs?wait=true", json={"graph": graph({
        "n": {"type": "test.name_a_file", "inputs": {"name": name}},
        "o": {"type": "show", "inputs": {"value": ["n", "value"]}}})}).json()
    assert snoop["status"] == "succeeded", snoop
    assert snoop["files"] == []
    assert isinstance(snoop["outputs"]["o"]["value"], str)
    assert client.get(f"/v1/runs/{snoop['id']}/outputs/{quote(name)}").status_code == 404


def test_only_declared_outputs_are_described_as_files(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    outputs = {"save": {"files": [str(tmp_path / "a.png")]}, "show": {"value": str(tmp_path / "a.png")}}
    described, files = describe_outputs(outputs, tmp_path, lambda n: f"/f/{n}",
                                        file_outputs={"save": ["files"]})
    assert files == ["a.png"]
    assert described["save"]["files"] == [{"file": "a.png", "url": "/f/a.png"}]
    assert described["show"]["value"] == str(tmp_path / "a.png")


def test_a_failed_run_shows_an_error_id_and_message_never_a_traceback(server, client):
    with connect(f"{server.ws_url}/v1/events", open_timeout=5) as ws:
        run_id = client.post("/v1/runs", json={"graph": graph({
            "f": {"type": "test.fail", "inputs": {"message": "disk on fire"}},
            "o": {"type": "show", "inputs": {"value": ["f", "value"]}}})}).json()["id"]
        events = []
        while not any(e["kind"] == "run_failed" and e.get("run_id") == run_id for e in events):
            events.append(recv_json(ws))
    run = wait_final(client, run_id)
    error = run["error"]
    assert error["error"] == "node_failed" and error["node"] == "f"
    assert error["message"] == "RuntimeError: disk on fire"
    assert error["id"].startswith("err_")
    mine = [e for e in events if e.get("run_id") == run_id and e["kind"] in ("node_failed", "run_failed")]
    assert len(mine) == 2
    for event in mine:
        assert "traceback" not in event["data"] and "Traceback" not in str(event)
        assert error["id"] in str(event["data"])
    assert "Traceback" not in client.get(f"/v1/runs/{run_id}").text
    log = server.log.read_text()
    assert error["id"] in log
    assert "Traceback" in log.split(error["id"], 1)[1]


def png(shade: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (shade, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_uploads_in_a_thread_pool_leave_the_warning_filters_alone(tmp_path, monkeypatch):
    def process_wide(*args, **kwargs):
        raise AssertionError("warnings.catch_warnings changes process-wide state")

    monkeypatch.setattr(warnings, "catch_warnings", process_wide)
    before = list(warnings.filters)
    seen_by_others: list[list] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            seen_by_others.append(list(warnings.filters))

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(4) as pool:
            stored = list(pool.map(lambda i: store_uploaded_image(png(i), tmp_path, max_pixels=64 * 64),
                                   range(16)))
    finally:
        stop.set()
        watcher.join()
    assert len({s.name for s in stored}) == 16
    assert warnings.filters == before
    assert all(f == before for f in seen_by_others)
    with pytest.raises(UploadRejected, match="pixels"):
        store_uploaded_image(png(1), tmp_path, max_pixels=63)


def test_an_unexpected_server_error_answers_an_id_and_logs_the_traceback(tmp_path, caplog):
    from fastapi.testclient import TestClient

    from engine import Registry, Settings
    from server.config import ServerConfig
    from server.main import build

    settings = Settings(output_dir=tmp_path / "out", input_dir=tmp_path / "in", models_dirs=[])
    server = build(ServerConfig(data_dir=tmp_path / "data"), settings, Registry())

    def broken():
        raise RuntimeError("cannot open /srv/secret/catalogue.db")

    server.service.catalogue = broken
    try:
        with TestClient(server.app, raise_server_exceptions=False,
                        base_url="http://127.0.0.1:8188") as client:
            response = client.get("/v1/nodes")
    finally:
        server.store.close()
    body = response.json()
    assert response.status_code == 500 and body["error"] == "internal"
    assert body["id"].startswith("err_") and body["id"] in body["message"]
    assert "secret" not in response.text and "Traceback" not in response.text
    logged = [r for r in caplog.records if body["id"] in r.getMessage()]
    assert logged and "cannot open /srv/secret" in str(logged[0].exc_info[1])
