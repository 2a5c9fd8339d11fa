"""The events websocket: every run or one run, step progress, and slow clients that never stall the worker."""
from __future__ import annotations

import asyncio
import socket
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from loom_server_testing import add_graph, graph, recv_json, steps_graph
from server.events import EVENTS_DROPPED, EventHub, Subscriber

TERMINAL = {"run_finished", "run_failed", "run_cancelled"}


def events_until_end(ws, run_id: str) -> list[dict]:
    seen = []
    while True:
        event = recv_json(ws)
        seen.append(event)
        if event.get("run_id") == run_id and event["kind"] in TERMINAL:
            return seen


def test_the_stream_carries_a_run_from_queued_to_finished_with_step_progress(server, client):
    with connect(f"{server.ws_url}/v1/events") as ws:
        run_id = client.post("/v1/runs", json={"graph": steps_graph(steps=4, seconds=0.01)}).json()["id"]
        events = [e for e in events_until_end(ws, run_id) if e.get("run_id") == run_id]
        # The record already says how it ended when the terminal event arrives.
        assert client.get(f"/v1/runs/{run_id}").json()["status"] == "succeeded"
    kinds = [e["kind"] for e in events]
    assert kinds[0] == "run_queued" and kinds[1] == "run_started" and kinds[-1] == "run_finished"
    steps = [e["data"]["step"] for e in events if e["kind"] == "node_progress"]
    assert steps == [1, 2, 3, 4]
    assert all(e["data"]["total"] == 4 for e in events if e["kind"] == "node_progress")
    finished = [e for e in events if e["kind"] == "node_finished"]
    assert {e["node"] for e in finished} == {"work", "out"}
    assert all(e["data"]["seconds"] >= 0 for e in finished)


def test_a_run_filter_streams_only_that_run(server, client):
    first = client.post("/v1/runs", json={"graph": steps_graph(steps=30, seconds=0.02, tag="1")}).json()["id"]
    with connect(f"{server.ws_url}/v1/events?run={first}") as ws:
        hello = recv_json(ws)
        assert hello["kind"] == "run_status" and hello["run_id"] == first
        assert hello["data"]["status"] in ("queued", "running")
        second = client.post("/v1/runs", json={"graph": add_graph(1, 1)}).json()["id"]
        events = events_until_end(ws, first)
    assert {e["run_id"] for e in events} == {first}
    assert second != first


def test_failures_are_streamed_with_the_failing_node(server, client):
    g = graph({"bad": {"type": "test.fail", "inputs": {}},
               "o": {"type": "show", "inputs": {"value": ["bad", "value"]}}})
    with connect(f"{server.ws_url}/v1/events") as ws:
        run_id = client.post("/v1/runs", json={"graph": g}).json()["id"]
        events = [e for e in events_until_end(ws, run_id) if e.get("run_id") == run_id]
    failed = [e for e in events if e["kind"] == "node_failed"]
    assert failed[0]["node"] == "bad" and "boom" in failed[0]["data"]["message"]
    assert events[-1]["kind"] == "run_failed" and events[-1]["data"]["status"] == "failed"


def test_an_unknown_run_filter_is_answered_and_closed(server):
    with connect(f"{server.ws_url}/v1/events?run=run_nope") as ws:
        assert recv_json(ws)["kind"] == "error"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=5)


def stuck_websocket(port: int) -> socket.socket:
    """A websocket client that completes the upgrade and then never reads again."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.sendall(f"GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                 "Sec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> bytes:
    """Everything the server sent, up to its close frame (or the end of the connection)."""
    sock.settimeout(timeout)
    data = b""
    while not data.endswith(b"too slow") and (chunk := sock.recv(1 << 16)):
        data += chunk
    return data


def test_a_client_that_stops_reading_never_stalls_the_worker(start_server):
    proc = start_server("--event-queue-size", "16", "--event-send-timeout", "1")
    # 300 events of 64 KiB: far more than the socket buffers hold for a client that does not read.
    flood = graph({"c": {"type": "test.chatter", "inputs": {"events": 300, "pad": "x" * 65536,
                                                         "pause": 0.002}},
                   "o": {"type": "show", "inputs": {"value": ["c", "value"]}}})
    laggard = stuck_websocket(proc.port)
    with proc.client() as client, connect(f"{proc.ws_url}/v1/events", max_size=None) as reader:
        started = time.monotonic()
        run = client.post("/v1/runs?wait=true&timeout=60", json={"graph": flood}).json()
        assert run["status"] == "succeeded"
        assert time.monotonic() - started < 10     # the run never waited for the stuck client
        after = client.post("/v1/runs?wait=true", json={"graph": add_graph(1, 2)}).json()
        assert after["status"] == "succeeded"
        deadline = time.monotonic() + 10
        while "stopped reading" not in proc.log.read_text():
            assert time.monotonic() < deadline, "the stuck client was never disconnected"
            time.sleep(0.1)
        # A client that keeps up still gets the whole story of both runs.
        kinds = []
        while "run_finished" not in kinds or kinds.count("run_finished") < 2:
            kinds.append(recv_json(reader)["kind"])
    received = read_until_closed(laggard)   # the server closed it: recv reaches the end
    laggard.close()
    assert len(received) < 300 * 65536
    # Its close frame (1013 "too slow") only gets through when the client's socket buffers still
    # had room for it; a client that never reads may just see the connection end.
    if b"too slow" in received:
        assert received.endswith(b"\x88\x0a\x03\xf5too slow")


def test_a_full_client_queue_drops_the_oldest_and_says_so():
    async def scenario():
        hub = EventHub(queue_size=3)
        hub.attach(asyncio.get_running_loop())
        sub: Subscriber = hub.subscribe()
        for i in range(10):
            hub.publish({"kind": "node_progress", "run_id": "r", "data": {"step": i}})
        await asyncio.sleep(0.01)
        batch = await sub.next_batch()
        hub.unsubscribe(sub)
        return batch

    batch = asyncio.run(scenario())
    assert batch[0]["kind"] == EVENTS_DROPPED and batch[0]["data"]["count"] == 7
    assert [e["data"]["step"] for e in batch[1:]] == [7, 8, 9]
