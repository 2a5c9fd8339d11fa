"""Secure by default: every escape, cross-site request, oversize body and unguarded bind is refused."""
from __future__ import annotations

import http.client
import io
import struct
import subprocess
import zlib
from pathlib import Path

import httpx
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from engine.errors import LoomError
from loom_server_testing import REPO, TOKEN, graph, server_command, server_env
from server.config import ServerConfig
from server.security import Guard


def raw_get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    """GET with the path sent byte for byte (no client-side normalisation of '..' or %2e)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host="Host" in (headers or {}), skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            conn.putheader(name, value)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def png_bytes(size=(8, 8), mode="RGB", fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128).save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image (a decompression bomb's calling card)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 1024)) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def finished_run(server):
    with server.client() as c:
        g = graph({"img": {"type": "test.write_png", "inputs": {}}})
        return c.post("/v1/runs?wait=true", json={"graph": g}).json()


ESCAPES = [
    "../loom.sqlite3",
    "../../loom.sqlite3",
    "..%2Floom.sqlite3",
    "%2e%2e/loom.sqlite3",
    "%2e%2e%2floom.sqlite3",
    "..%252floom.sqlite3",
    "..\\loom.sqlite3",
    "..%5cloom.sqlite3",
    "/etc/passwd",
    "%2fetc%2fpasswd",
    "//etc/passwd",
    "sub/../../loom.sqlite3",
    "x.png%00.txt",
    "./../loom.sqlite3",
    "....//loom.sqlite3",
]


@pytest.mark.parametrize("name", ESCAPES)
def test_output_names_cannot_escape_the_output_folder(server, finished_run, name):
    status, body = raw_get(server.port, f"/v1/runs/{finished_run['id']}/outputs/{name}")
    assert status in (400, 403, 404), (name, status)
    assert b"SQLite" not in body and b"root:" not in body


GRAPH_ESCAPES = [
    ("test.read_input", "image", "../loom.sqlite3"),
    ("test.read_input", "image", "/etc/passwd"),
    ("test.read_input", "image", "..\\..\\loom.sqlite3"),
    ("test.read_input", "image", "%2e%2e/loom.sqlite3"),
    ("test.read_input", "image", "a\x00b.png"),
    ("test.write_file", "prefix", "../../escaped"),
    ("test.write_file", "prefix", "/tmp/escaped"),
    ("test.model_bytes", "name", "../../loom.sqlite3"),
    ("test.model_bytes", "name", "/etc/passwd"),
]


@pytest.mark.parametrize("node_type,input_name,value", GRAPH_ESCAPES)
def test_file_names_inside_graphs_are_contained(client, node_type, input_name, value):
    g = graph({"n": {"type": node_type, "inputs": {input_name: value}},
               "o": {"type": "show", "inputs": {"value": ["n", "value"]}}})
    response = client.post("/v1/runs", json={"graph": g})
    assert response.status_code == 422
    problem = response.json()["problems"][0]
    assert (problem["node"], problem["input"]) == ("n", input_name)
    assert "refused" in problem["message"]


def test_a_symlink_out_of_the_input_folder_is_refused(server, client, tmp_path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(png_bytes())
    link = server.data_dir / "inputs" / "innocent.png"
    link.symlink_to(secret)
    g = graph({"n": {"type": "test.read_input", "inputs": {"image": "innocent.png"}},
               "o": {"type": "show", "inputs": {"value": ["n", "value"]}}})
    assert client.post("/v1/runs", json={"graph": g}).status_code == 422


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8188", "127.0.0.1.evil.example",
                                  "localhost.evil.example", "192.168.1.10"])
def test_dns_rebinding_host_names_are_refused(server, host):
    status, body = raw_get(server.port, "/v1/runs", {"Host": host})
    assert status == 403 and b"forbidden_host" in body


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_loopback_host_names_are_served(server, host):
    status, _ = raw_get(server.port, "/v1/runs", {"Host": f"{host}:{server.port}"})
    assert status == 200


CROSS_SITE = [
    {"Origin": "http://evil.example"},
    {"Origin": "null"},
    {"Origin": "file://"},
    {"Origin": "http://localhost:1"},                 # another local app on another port
    {"Origin": "http://127.0.0.1.evil.example:8188"},
    {"Sec-Fetch-Site": "cross-site"},
]


@pytest.mark.parametrize("headers", CROSS_SITE)
def test_cross_origin_requests_are_refused(server, headers):
    with server.client(headers=headers) as c:
        assert c.get("/v1/runs").status_code == 403
        response = c.post("/v1/runs", json={"graph": graph({
            "o": {"type": "show", "inputs": {"value": 1}}})})
        assert response.status_code == 403 and response.json()["error"] == "forbidden_origin"
        assert "access-control-allow-origin" not in response.headers


def test_same_origin_browser_requests_are_served(server):
    with server.client(headers={"Origin": f"http://127.0.0.1:{server.port}",
                                "Sec-Fetch-Site": "same-origin"}) as c:
        assert c.get("/v1/runs").status_code == 200
    with server.client(headers={"Origin": f"http://evil.example:{server.port}"}) as c:
        assert c.get("/v1/runs").status_code == 403


def test_a_wildcard_bind_still_requires_same_origin_and_the_token():
    guard = Guard(lambda *a: None, ServerConfig(host="0.0.0.0", port=8188, token=TOKEN))
    scope = {"type": "http", "path": "/v1/runs"}
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert guard.refusal(scope, {"host": "gpu-box.lan:8188", **auth}) is None
    assert guard.refusal(scope, {"host": "gpu-box.lan:8188", "origin": "http://gpu-box.lan:8188",
                                 **auth}) is None
    assert guard.refusal(scope, {"host": "gpu-box.lan:8188", "origin": "http://evil.example:8188",
                                 **auth})[0] == 403
    assert guard.refusal(scope, {"host": "gpu-box.lan:8188"})[0] == 401
    assert guard.refusal({"type": "http", "path": "/healthz"}, {"host": "gpu-box.lan:8188"}) is None


def ws_upgrade_status(port: int, headers: dict) -> int:
    """Status of a websocket upgrade sent with exactly these Host/Origin headers."""
    head = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13", **headers}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", "/v1/events", skip_host=True, skip_accept_encoding=True)
        for name, value in head.items():
            conn.putheader(name, value)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


@pytest.mark.parametrize("headers", [{"Origin": "http://evil.example"}, {"Origin": "null"},
                                     {"Host": "evil.example"},
                                     {"Host": "evil.example", "Origin": "http://evil.example"}])
def test_cross_site_websocket_upgrades_are_refused(server, headers):
    assert ws_upgrade_status(server.port, headers) == 403


def test_same_origin_websocket_upgrade_is_accepted(server):
    assert ws_upgrade_status(server.port, {"Origin": f"http://127.0.0.1:{server.port}"}) == 101


def test_every_response_carries_nosniff(server, client):
    for response in (client.get("/healthz"), client.get("/v1/runs/nope"),
                     client.get("/v1/runs", headers={"Origin": "null"})):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert "default-src 'none'" in response.headers["content-security-policy"]


def test_upload_stores_a_reencoded_png_that_load_image_nodes_read(server, client):
    polyglot = png_bytes((10, 6)) + b"<html><script>alert(1)</script></html>"
    response = client.post("/v1/uploads", files={"file": ("x.html", polyglot, "text/html")})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["name"].startswith("upload-") and body["name"].endswith(".png")
    assert (body["width"], body["height"], body["format"]) == (10, 6, "PNG")
    stored = (server.data_dir / "inputs" / body["name"]).read_bytes()
    assert b"<script>" not in stored and stored.startswith(b"\x89PNG")
    again = client.post("/v1/uploads", files={"file": ("y.png", polyglot, "image/png")}).json()
    assert again["name"] == body["name"]      # content-addressed: no collisions, no duplicates

    jpeg = client.post("/v1/uploads", files={"file": ("p.jpg", png_bytes((5, 5), fmt="JPEG"),
                                                      "image/jpeg")}).json()
    assert jpeg["format"] == "JPEG" and jpeg["name"].endswith(".png")

    g = graph({"n": {"type": "test.read_input", "inputs": {"image": body["name"]}},
               "o": {"type": "show", "inputs": {"value": ["n", "value"]}}})
    run = client.post("/v1/runs?wait=true", json={"graph": g}).json()
    assert run["outputs"]["o"]["value"] == len(stored)


@pytest.mark.parametrize("payload", [
    b"just text",
    b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>',
    b"GIF89a" + b"\x00" * 32,
    png_header_only(60_000, 60_000),   # PIL's own bomb limit
    png_header_only(5_000, 5_000),     # over this server's pixel limit
])
def test_uploads_that_are_not_safe_raster_images_are_refused(client, payload):
    if payload.startswith(b"GIF"):
        buffer = io.BytesIO()
        Image.new("P", (4, 4)).save(buffer, format="GIF")
        payload = buffer.getvalue()
    response = client.post("/v1/uploads", files={"file": ("a.png", payload, "image/png")})
    assert response.status_code == 415, response.text


def test_oversize_upload_is_refused(client):
    huge = b"\x89PNG\r\n\x1a\n" + b"\x00" * (21 * 1024 * 1024)
    response = client.post("/v1/uploads", files={"file": ("big.png", huge, "image/png")})
    assert response.status_code == 413


def test_oversize_body_is_refused_even_without_content_length(server):
    def chunks():
        for _ in range(40):
            yield b" " * 100_000
    with server.client() as c:
        response = c.post("/v1/runs", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_token_guards_every_endpoint_but_healthz(start_server):
    proc = start_server(token=TOKEN)
    plain = httpx.Client(base_url=proc.url, timeout=10)
    assert plain.get("/healthz").status_code == 200
    for method, path in [("GET", "/v1/runs"), ("GET", "/v1/nodes"), ("GET", "/v1/models"),
                         ("POST", "/v1/runs"), ("GET", "/openapi.json"), ("POST", "/v1/uploads")]:
        assert plain.request(method, path).status_code == 401, path
        assert plain.request(method, path, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert plain.request(method, path, headers={"Authorization": TOKEN}).status_code == 401
    with proc.client() as c:
        assert c.get("/v1/runs").status_code == 200
        run = c.post("/v1/runs?wait=true", json={"graph": graph({
            "o": {"type": "show", "inputs": {"value": ["n", "value"]}},
            "n": {"type": "int", "inputs": {"value": 4}}})}).json()
        assert run["outputs"]["o"]["value"] == 4

    with pytest.raises(InvalidStatus, match="401|403"):
        with connect(f"{proc.ws_url}/v1/events", open_timeout=5):
            pass
    with connect(f"{proc.ws_url}/v1/events", open_timeout=5,
                 additional_headers={"Authorization": f"Bearer {TOKEN}"}) as ws:
        assert ws.protocol is not None
    with connect(f"{proc.ws_url}/v1/events", open_timeout=5,
                 subprotocols=["loom.v1", f"loom.bearer.{TOKEN}"]) as ws:
        assert ws.subprotocol == "loom.v1"


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.1", "example.com"])
def test_binding_beyond_loopback_without_a_token_is_refused(host):
    with pytest.raises(LoomError, match="token"):
        ServerConfig(host=host).check_bind()
    with pytest.raises(LoomError, match="at least 16"):
        ServerConfig(host=host, token="short").check_bind()
    ServerConfig(host=host, token=TOKEN).check_bind()
    ServerConfig(host="127.0.0.1").check_bind()


def test_the_server_process_refuses_a_public_bind_without_a_token(tmp_path):
    (tmp_path / "d" / "models").mkdir(parents=True)
    result = subprocess.run(server_command(1, tmp_path / "d", host="0.0.0.0"), cwd=REPO,
                            env=server_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "without a token" in result.stderr
    assert not (tmp_path / "d" / "loom.sqlite3").exists()


def test_two_servers_cannot_share_a_data_folder(start_server, server):
    with pytest.raises(RuntimeError, match="another Loom server"):
        start_server(data_dir=Path(server.data_dir))


@pytest.mark.parametrize("pattern", ["*", "*.example.com", "0.0.0.0", "gpu-?.lan"])
def test_a_wildcard_allowed_host_on_loopback_needs_a_token(pattern):
    with pytest.raises(LoomError, match="DNS rebinding"):
        ServerConfig(allowed_hosts=(pattern,)).check_bind()
    ServerConfig(allowed_hosts=(pattern,), token=TOKEN).check_bind()
    ServerConfig(allowed_hosts=("gpu-box.lan",)).check_bind()


def test_the_server_process_refuses_allow_host_star_without_a_token(tmp_path):
    (tmp_path / "d" / "models").mkdir(parents=True)
    result = subprocess.run(server_command(1, tmp_path / "d", "--allow-host", "*"), cwd=REPO,
                            env=server_env(), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "DNS rebinding" in result.stderr
    assert not (tmp_path / "d" / "loom.sqlite3").exists()


def test_an_allowed_host_pattern_serves_matching_names_only():
    guard = Guard(lambda *a: None, ServerConfig(allowed_hosts=("*.lan",), token=TOKEN))
    scope = {"type": "http", "path": "/v1/runs"}
    auth = {"authorization": f"Bearer {TOKEN}"}
    assert guard.refusal(scope, {"host": "gpu-box.lan:8188", **auth}) is None
    assert guard.refusal(scope, {"host": "evil.example:8188", **auth})[0] == 403
