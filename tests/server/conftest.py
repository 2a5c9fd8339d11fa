"""Fixtures for the server tests: a shared real server and a factory for extra ones."""
from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest

# The helpers and test nodes live beside this file; make them importable in any import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from loom_server_testing import ServerProcess  # noqa: E402


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> ServerProcess:
    """The shared server most tests talk to (no token, loopback)."""
    data = tmp_path_factory.mktemp("shared") / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    (data / "models" / "checkpoints" / "tiny.safetensors").write_bytes(b"not really weights")
    (data / "models" / "loras").mkdir()
    proc = ServerProcess(data).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(server) -> httpx.Client:
    with server.client() as c:
        yield c


@pytest.fixture
def start_server(tmp_path):
    """Start extra servers (own data folders unless given); all stopped at the end."""
    started: list[ServerProcess] = []

    def start(*extra: str, data_dir: Path | None = None, token: str | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / f"data{len(started)}", *extra, token=token)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


