"""Helpers for the server tests: start `python -m server` on a free loopback port, build graphs, poll runs.

The server process loads the primitive nodes and the test-only nodes in
`loom_test_nodes.py`; nothing from the diffusion node library is imported.
(A uniquely named module rather than conftest, so `import` finds it unambiguously.)
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FINAL = {"succeeded", "failed", "cancelled"}
TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(port: int, data_dir: Path, *extra: str, host: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "server", "--host", host, "--port", str(port),
            "--data-dir", str(data_dir), "--models-dir", str(data_dir / "models"),
            "--nodes", "nodes.primitives", "--nodes", "loom_test_nodes", "--no-installed-nodes",
            "--log-level", "warning", *extra]


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(HERE), env.get("PYTHONPATH", "")])
    env.pop("LOOM_TOKEN", None)
    return env


class ServerProcess:
    """One `python -m server` process; `kill()` is kill -9, `stop()` a clean SIGTERM."""

    def __init__(self, data_dir: Path, *extra: str, token: str | None = None):
        self.data_dir = Path(data_dir)
        self.extra = list(extra) + (["--token", token] if token else [])
        self.token = token
        self.port = 0
        self.proc: subprocess.Popen | None = None
        self.log = self.data_dir.parent / f"{self.data_dir.name}-server.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerProcess":
        self.port = free_port()
        (self.data_dir / "models").mkdir(parents=True, exist_ok=True)   # a missing one is an error
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(server_command(self.port, self.data_dir, *self.extra),
                                     cwd=REPO, env=server_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start:\n{self.log.read_text()}")

    def client(self, **kwargs: Any) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        headers.update(kwargs.pop("headers", {}))
        return httpx.Client(base_url=self.url, headers=headers, timeout=30, **kwargs)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


# -- graphs -------------------------------------------------------------------------------

def graph(nodes: dict, params: dict | None = None) -> dict:
    return {"loom": 1, "params": params or {}, "nodes": nodes}


def add_graph(a: float = 2, b: float = 3) -> dict:
    return graph({"a": {"type": "float", "inputs": {"value": a}},
                  "sum": {"type": "add", "inputs": {"a": ["a", "value"], "b": b}},
                  "out": {"type": "show", "inputs": {"value": ["sum", "value"]}}},
                 params={"b": {"node": "sum", "input": "b"}})


def steps_graph(steps: int = 10, seconds: float = 0.02, tag: str = "", journal: str = "") -> dict:
    return graph({"work": {"type": "test.steps", "inputs": {"steps": steps, "seconds_per_step": seconds,
                                                          "tag": tag, "journal": journal}},
                  "out": {"type": "show", "inputs": {"value": ["work", "value"]}}})


def wait_final(client: httpx.Client, run_id: str, timeout: float = 30.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] in FINAL:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still {run['status']} after {timeout}s")
        time.sleep(0.05)


def wait_status(client: httpx.Client, run_id: str, status: str, timeout: float = 15.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(f"/v1/runs/{run_id}").json()
        if run["status"] == status:
            return run
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} is {run['status']}, never {status}")
        time.sleep(0.02)


def recv_json(ws, timeout: float = 10.0) -> dict:
    return json.loads(ws.recv(timeout=timeout))
