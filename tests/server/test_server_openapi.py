"""The OpenAPI document is generated from the API's models and kept as a reviewed snapshot.

After an intended API change, regenerate the snapshot and review the diff:

    LOOM_UPDATE_OPENAPI=1 python -m pytest tests/server/test_server_openapi.py
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from engine import Registry, Settings
from server.config import ServerConfig
from server.main import build

SNAPSHOT = Path(__file__).with_name("openapi.json")


def generated_openapi(tmp_path) -> dict:
    settings = Settings(output_dir=tmp_path / "out", input_dir=tmp_path / "in", models_dirs=[])
    server = build(ServerConfig(data_dir=tmp_path / "data"), settings, Registry())
    try:
        return json.loads(json.dumps(server.app.fastapi.openapi()))
    finally:
        server.store.close()


def test_openapi_matches_the_snapshot(tmp_path):
    spec = generated_openapi(tmp_path)
    if os.environ.get("LOOM_UPDATE_OPENAPI"):
        SNAPSHOT.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")
    assert spec == json.loads(SNAPSHOT.read_text()), (
        "the API changed; regenerate with LOOM_UPDATE_OPENAPI=1 python -m pytest "
        "tests/server/test_server_openapi.py and review the diff")


def test_openapi_lists_every_endpoint(tmp_path):
    spec = generated_openapi(tmp_path)
    routes = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert routes == {
        ("/v1/runs", "post"), ("/v1/runs", "get"), ("/v1/runs/{run_id}", "get"),
        ("/v1/runs/{run_id}/cancel", "post"), ("/v1/runs/{run_id}/outputs/{name}", "get"),
        ("/v1/nodes", "get"), ("/v1/models", "get"), ("/v1/uploads", "post"), ("/healthz", "get"),
        ("/v1/models/pull", "post"), ("/v1/models/pulls/{pull_id}", "get"), ("/v1/models/loaded", "get"),
    }
    submit = spec["paths"]["/v1/runs"]["post"]
    assert {"202", "200", "409", "422"} <= set(submit["responses"])
    assert any(p["name"] == "idempotency-key" for p in submit["parameters"])
