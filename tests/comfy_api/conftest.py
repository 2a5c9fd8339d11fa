"""Fixtures for ComfyUI's protocol on `loom serve`: real servers on free loopback ports.

The shared server loads the primitive and drawing nodes, `save_image` and the server
tests' slow/failing test nodes, so a prompt makes a real PNG in milliseconds without a
model. The editor test starts its own server on the shipped shapes model.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

SERVER_TESTS = Path(__file__).resolve().parents[1] / "server"
sys.path.insert(0, str(SERVER_TESTS))

from loom_server_testing import ServerProcess  # noqa: E402

NODE_MODULES = ("--nodes", "nodes.draw", "--nodes", "nodes.image")


@pytest.fixture(scope="session")
def comfy(tmp_path_factory) -> ServerProcess:
    """The shared server (no token, loopback) the protocol tests talk to."""
    data = tmp_path_factory.mktemp("comfy") / "data"
    (data / "models" / "checkpoints").mkdir(parents=True)
    (data / "models" / "checkpoints" / "tiny.safetensors").write_bytes(b"not really weights")
    proc = ServerProcess(data, *NODE_MODULES).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(comfy):
    with comfy.client() as c:
        yield c


@pytest.fixture
def start_comfy(tmp_path):
    """Extra servers with their own data folders (or a given one); all stopped at the end."""
    started: list[ServerProcess] = []

    def start(*extra: str, data_dir: Path | None = None, token: str | None = None) -> ServerProcess:
        proc = ServerProcess(data_dir or tmp_path / f"data{len(started)}", *NODE_MODULES, *extra,
                             token=token)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.stop()


def draw_prompt(colour: str = "red", prefix: str = "comfy", size: int = 24) -> dict:
    """An API-format prompt: draw a shape, save it (Loom's own node types as class types)."""
    return {"1": {"class_type": "draw_shape", "inputs": {"shape": "circle", "colour": colour,
                                                          "background": "blue", "size": size,
                                                          "width": 64, "height": 64}},
            "2": {"class_type": "save_image", "inputs": {"images": ["1", 0], "prefix": prefix}}}


def steps_prompt(steps: int = 100, seconds: float = 0.02, tag: str = "") -> dict:
    return {"1": {"class_type": "test.steps", "inputs": {"steps": steps, "seconds_per_step": seconds,
                                                          "tag": tag}},
            "2": {"class_type": "show", "inputs": {"value": ["1", 0]}}}


def messages_until(ws, prompt_id: str, last: tuple = ("execution_success", "execution_error",
                                                      "execution_interrupted"),
                   timeout: float = 30.0) -> list[dict]:
    """JSON messages received until `prompt_id` ends (binary frames would fail the test)."""
    got = []
    while True:
        raw = ws.recv(timeout=timeout)
        assert isinstance(raw, str), "no binary frame may reach a client that did not ask"
        msg = json.loads(raw)
        got.append(msg)
        if msg["type"] in last and msg["data"].get("prompt_id") == prompt_id:
            return got
