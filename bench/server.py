"""Server benchmark: many concurrent submissions of a small graph over loopback.

    python bench/server.py [--runs 200] [--url http://127.0.0.1:8188 --token T]

Without --url it starts `python -m server` on a free loopback port with a fresh data
folder (primitive nodes only) and stops it afterwards. All submissions are sent at once
from this process; then it waits until every accepted run has finished and checks each
one. Prints one JSON object: accepted, completed, failed, lost (must be 0), duplicates,
p50/p99/max submit latency in ms, submissions/s and completed runs/s.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
FINAL = {"succeeded", "failed", "cancelled"}


def small_graph() -> dict:
    return {"loom": 1, "params": {"b": {"node": "sum", "input": "b"}},
            "nodes": {"a": {"type": "float", "inputs": {"value": 1.5}},
                      "sum": {"type": "add", "inputs": {"a": ["a", "value"], "b": 0}},
                      "out": {"type": "show", "inputs": {"value": ["sum", "value"]}}}}


def start_server(data_dir: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-m", "server", "--port", str(port), "--data-dir", str(data_dir),
         "--nodes", "nodes.primitives", "--no-installed-nodes", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("server did not start")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def post_json(host: str, port: int, path: str, body: dict, headers: dict) -> tuple[int, dict]:
    """One POST on its own connection, HTTP/1.1 written by hand.

    A general-purpose async client spends several milliseconds of CPU per request; with
    200 requests in flight on a 2-core machine that queueing inside the client would be
    measured as server latency. This costs next to nothing.
    """
    payload = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(payload)}\r\nConnection: close\r\n{head}\r\n").encode() + payload
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        data = await reader.readexactly(length)
    finally:
        writer.close()
    return int(status_line.split()[1]), json.loads(data)


async def submit_all(url: str, headers: dict, runs: int) -> tuple[list[str], list[float], int, float]:
    parts = httpx.URL(url)

    async def one(i: int) -> tuple[str | None, float]:
        started = time.perf_counter()
        status, body = await post_json(parts.host, parts.port, "/v1/runs",
                                       {"graph": small_graph(), "params": {"b": i}}, headers)
        return (body["id"] if status == 202 else None), time.perf_counter() - started

    started = time.perf_counter()
    results = await asyncio.gather(*(one(i) for i in range(runs)))
    elapsed = time.perf_counter() - started
    ids = [run_id for run_id, _ in results if run_id]
    return ids, [latency for _, latency in results], runs - len(ids), elapsed


def wait_all(url: str, headers: dict, ids: list[str], timeout: float) -> dict[str, dict]:
    final: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
        while len(final) < len(ids) and time.monotonic() < deadline:
            for run_id in ids:
                if run_id in final:
                    continue
                run = client.get(f"/v1/runs/{run_id}").json()
                if run.get("status") in FINAL:
                    final[run_id] = run
                else:
                    break          # runs finish in order; come back to this one
            else:
                continue
            time.sleep(0.05)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--url", help="an already running server (default: start one)")
    parser.add_argument("--token", default=os.environ.get("LOOM_TOKEN"))
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}

    proc, scratch = None, None
    url = args.url
    if url is None:
        scratch = tempfile.TemporaryDirectory(prefix="loom-bench-")
        proc, url = start_server(Path(scratch.name) / "data")
    try:
        ids, latencies, refused, submit_seconds = asyncio.run(submit_all(url, headers, args.runs))
        started = time.perf_counter()
        final = wait_all(url, headers, ids, args.timeout)
        drain_seconds = time.perf_counter() - started
        with httpx.Client(base_url=url, headers=headers, timeout=30) as client:
            listed = []
            page = client.get("/v1/runs", params={"limit": 500}).json()
            listed += [r["id"] for r in page["runs"]]
            while page["next"] is not None:
                page = client.get("/v1/runs", params={"limit": 500, "before": page["next"]}).json()
                listed += [r["id"] for r in page["runs"]]
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            scratch.cleanup()

    completed = sum(1 for r in final.values() if r["status"] == "succeeded")
    total_seconds = submit_seconds + drain_seconds
    print(json.dumps({
        "runs": args.runs,
        "accepted": len(ids),
        "refused": refused,
        "completed": completed,
        "failed": sum(1 for r in final.values() if r["status"] != "succeeded"),
        "lost": len(set(ids) - set(final)) + len(set(ids) - set(listed)),
        "duplicates": len(listed) - len(set(listed)) if args.url is None else None,
        "submit_latency_ms": {"p50": round(percentile(latencies, 0.50) * 1000, 1),
                              "p99": round(percentile(latencies, 0.99) * 1000, 1),
                              "max": round(max(latencies) * 1000, 1)},
        "submissions_per_second": round(len(ids) / submit_seconds, 1),
        "runs_per_second": round(completed / total_seconds, 1),
        "seconds": {"submit": round(submit_seconds, 2), "drain": round(drain_seconds, 2)},
    }, indent=2))


if __name__ == "__main__":
    main()
