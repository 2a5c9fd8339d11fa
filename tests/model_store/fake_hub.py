"""A loopback HTTP server speaking the part of the Hugging Face hub's API that a download uses,
plus plain file serving for URL pulls. Tests point `HF_ENDPOINT` at it; nothing leaves the
machine.

Routes:
  GET  /api/models/{repo}[/revision/{rev}]       model info (sha, siblings)
  GET  /api/models/{repo}/tree/{rev}[/{path}]    file listing (size, oid, lfs sha256)
  HEAD/GET /{repo}/resolve/{rev}/{path}         file bytes (Range supported)
  HEAD/GET /files/{name}                        a plain file (Range supported)

`drop_after[path] = [n, ...]` makes the next GETs of that path (one per number) send their
headers, then n bytes, then close the connection: an interrupted transfer.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self):
        self.repos: dict[str, dict[str, bytes]] = {}
        self.files: dict[str, bytes] = {}
        # plain files whose SHA-256 the server states: name -> the bytes it states it for
        self.publish_digest: dict[str, bytes] = {}
        self.drop_after: dict[str, list[int]] = {}
        self.requests: list[tuple[str, str, str | None]] = []   # method, path, Range
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def gets(self, suffix: str) -> list[str | None]:
        """The Range header of every GET whose path ends with `suffix`."""
        return [r for m, p, r in self.requests if m == "GET" and p.endswith(suffix)]

    def _handler(self):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_HEAD(self):
                self._serve(body=False)

            def do_GET(self):
                self._serve(body=True)

            def _serve(self, body: bool):
                path = unquote(urlparse(self.path).path)
                hub.requests.append((self.command, path, self.headers.get("Range")))
                if path.startswith("/api/models/"):
                    return self._api(path[len("/api/models/"):], body)
                if path.startswith("/files/"):
                    name = path[len("/files/"):]
                    data = hub.files.get(name)
                    extra = {"Content-Disposition": f'attachment; filename="{name}"'}
                    if name in hub.publish_digest:
                        stated = hub.publish_digest[name]
                        digest = base64.b64encode(hashlib.sha256(stated).digest()).decode()
                        extra["Repr-Digest"] = f"sha-256=:{digest}:"
                    return self._bytes(path, data, body, extra)
                parts = path.strip("/").split("/")
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, file = "/".join(parts[:2]), "/".join(parts[4:])
                    data = hub.repos.get(repo, {}).get(file)
                    extra = {"X-Repo-Commit": COMMIT}
                    if data is not None:
                        extra["ETag"] = f'"{hashlib.sha256(data).hexdigest()}"'
                    return self._bytes(path, data, body, extra)
                self._status(404)

            def _api(self, rest: str, body: bool):
                parts = rest.split("/")
                repo = "/".join(parts[:2])
                files = hub.repos.get(repo)
                if files is None:
                    return self._json({"error": "Repository not found"}, 404, body,
                                      {"X-Error-Code": "RepoNotFound"})
                if len(parts) == 2 or parts[2] == "revision":
                    return self._json({"id": repo, "modelId": repo, "sha": COMMIT, "private": False,
                                       "siblings": [{"rfilename": f} for f in sorted(files)]},
                                      200, body)
                if parts[2] == "tree":
                    prefix = "/".join(parts[4:])
                    listing = [_tree_entry(f, d) for f, d in sorted(files.items())
                               if f.startswith(prefix)]
                    return self._json(listing, 200, body)
                self._status(404)

            def _json(self, payload, status: int, body: bool, extra: dict | None = None):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def _status(self, status: int):
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _bytes(self, path: str, data: bytes | None, body: bool, extra: dict):
                if data is None:
                    return self._status(404)
                start = 0
                range_header = self.headers.get("Range")
                if range_header and range_header.startswith("bytes="):
                    start = int(range_header[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("Accept-Ranges", "bytes")
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                if not body:
                    return
                cuts = hub.drop_after.get(path) if self.command == "GET" else None
                cut = cuts.pop(0) if cuts else None
                if cut is not None:
                    self.wfile.write(data[start:start + cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data[start:])

        return Handler


def _tree_entry(path: str, data: bytes) -> dict:
    entry = {"type": "file", "path": path, "size": len(data),
             "oid": hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()}
    if path.endswith((".safetensors", ".bin", ".gguf")):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                        "pointerSize": 134}
    return entry
