"""Benchmark: a ComfyUI workflow through Loom against the same job as a Loom graph.

    python bench/comfy.py [--steps 20] [--repeats 3] [--threads 2]

Prints JSON lines: the time to read and convert the txt2img workflow in API and UI format
(mean of 200 reads), the medians of interleaved uncached runs of the converted workflow and
of the hand-written Loom graph on the shipped shapes-tiny model (models in memory), and the
conversion overhead (conversion / Loom run; target <= 1 %). Both graphs make the same image.
Then, through `python -m server` on the same model: median submit-to-first-event and
submit-to-image latency of the txt2img prompt over ComfyUI's /prompt + /ws, against the same
graph over /v1/runs + /v1/events (`--latency-repeats` prompts each, interleaved).
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
WORKFLOWS = ROOT / "tests" / "comfy" / "workflows"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--latency-repeats", type=int, default=5,
                    help="prompts per API for the server latency figures")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from engine import Executor, GraphBuilder, Registry, Settings
    from engine.documents import Document, read_document

    registry = Registry.default()
    for name in ("txt2img.api.json", "txt2img.ui.json"):
        data = (WORKFLOWS / name).read_bytes()
        started = time.perf_counter()
        for _ in range(200):
            read_document(Document(data, source=name), registry)
        seconds = (time.perf_counter() - started) / 200
        print(json.dumps({"convert": name, "ms": round(seconds * 1000, 3)}))
    convert_s = seconds

    compat, _ = read_document(Document((WORKFLOWS / "txt2img.api.json").read_bytes()), registry)
    compat = compat.with_params({"3.steps": args.steps})
    g = GraphBuilder()
    ckpt = g.add("load_checkpoint", name="shapes-tiny")
    pos = g.add("encode_text", text_encoder=ckpt["text_encoder"], text="a red circle on a blue background")
    neg = g.add("encode_text", text_encoder=ckpt["text_encoder"], text="")
    latent = g.add("empty_latent", vae=ckpt["vae"], width=64, height=64, batch=1)
    sampled = g.add("sample", model=ckpt["model"], positive=pos, negative=neg, latent=latent, seed=0,
                    steps=args.steps, cfg=4.0, scheduler="dpmpp_2m", schedule="normal")
    g.add("save_image", images=g.add("vae_decode", vae=ckpt["vae"], latent=sampled), prefix="loom")
    loom = g.build()

    with tempfile.TemporaryDirectory() as tmp:
        executor = Executor(registry=registry, settings=Settings(models_dirs=[ROOT / "models"],
                                                                 output_dir=Path(tmp)))
        executor.run(compat), executor.run(loom)              # load the model once
        times = {"comfy": [], "loom": []}
        for _ in range(args.repeats):
            for label, graph in (("comfy", compat), ("loom", loom)):
                started = time.perf_counter()
                executor.run(graph, use_cache=False)
                times[label].append(time.perf_counter() - started)
    comfy_s, loom_s = statistics.median(times["comfy"]), statistics.median(times["loom"])
    print(json.dumps({"run_comfy_s": round(comfy_s, 3), "run_loom_s": round(loom_s, 3),
                      "ratio": round(comfy_s / loom_s, 3), "steps": args.steps}))
    print(json.dumps({"conversion_overhead_pct": round(100 * convert_s / loom_s, 3), "target_pct": 1.0}))
    server_latency(args.steps, args.latency_repeats)


# -- latency through the server: ComfyUI's /prompt + /ws against /v1/runs + /v1/events ---------

def txt2img_prompt(seed: int, steps: int) -> dict:
    """graphs/txt2img.json as an API-format prompt of Loom's own node types."""
    return {
        "1": {"class_type": "load_checkpoint", "inputs": {"name": "shapes-tiny"}},
        "2": {"class_type": "encode_text", "inputs": {"text_encoder": ["1", 1],
                                                      "text": "a red circle on a blue background"}},
        "3": {"class_type": "encode_text", "inputs": {"text_encoder": ["1", 1], "text": ""}},
        "4": {"class_type": "empty_latent", "inputs": {"vae": ["1", 2], "width": 64, "height": 64}},
        "5": {"class_type": "sample", "inputs": {"model": ["1", 0], "positive": ["2", 0],
                                                 "negative": ["3", 0], "latent": ["4", 0],
                                                 "seed": seed, "steps": steps, "cfg": 4.0}},
        "6": {"class_type": "vae_decode", "inputs": {"vae": ["1", 2], "latent": ["5", 0]}},
        "7": {"class_type": "save_image", "inputs": {"images": ["6", 0], "prefix": "bench"}},
    }


def server_latency(steps: int, repeats: int) -> None:
    """Median submit-to-first-event (the run's start: execution_start / run_started) and
    submit-to-image seconds, each seed new (the model and prompts come from the cache, the
    sampler runs), ComfyUI's protocol and /v1 interleaved."""
    import os
    import socket
    import subprocess

    import httpx
    from websockets.sync.client import connect

    from engine import Graph
    from nodes.comfy import read_api_prompt

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url, ws_url = f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server", "--port", str(port), "--data-dir", tmp,
             "--models-dir", str(ROOT / "models"), "--log-level", "warning"],
            cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("server did not start")
                time.sleep(0.2)
            client = httpx.Client(base_url=url, timeout=600)

            def comfy(seed: int) -> tuple[float, float]:
                with connect(f"{ws_url}/ws?clientId=bench") as ws:
                    ws.recv(timeout=10)
                    started = time.perf_counter()
                    pid = client.post("/prompt", json={"prompt": txt2img_prompt(seed, steps),
                                                       "client_id": "bench"}).json()["prompt_id"]
                    first = None
                    while True:
                        msg = json.loads(ws.recv(timeout=600))
                        if msg["data"].get("prompt_id") != pid:
                            continue
                        if msg["type"] == "execution_start":
                            first = time.perf_counter() - started
                        if msg["type"] == "executed":
                            return first, time.perf_counter() - started

            def v1(seed: int) -> tuple[float, float]:
                graph, _ = read_api_prompt(txt2img_prompt(seed, steps))
                with connect(f"{ws_url}/v1/events") as ws:
                    started = time.perf_counter()
                    run_id = client.post("/v1/runs", json={"graph": Graph.from_dict(graph).to_dict()}).json()["id"]
                    first = None
                    while True:
                        msg = json.loads(ws.recv(timeout=600))
                        if msg.get("run_id") != run_id:
                            continue
                        if msg["kind"] == "run_started":
                            first = time.perf_counter() - started
                        if msg["kind"] == "run_finished":
                            client.get(f"/v1/runs/{run_id}")      # where the image's name is
                            return first, time.perf_counter() - started

            comfy(10_000), v1(10_001)                     # load the model once
            times: dict[str, list[tuple[float, float]]] = {"comfy_ws": [], "v1": []}
            for i in range(repeats):
                times["comfy_ws"].append(comfy(2 * i))
                times["v1"].append(v1(2 * i + 1))
            for label, pairs in times.items():
                print(json.dumps({"api": label, "steps": steps, "repeats": repeats,
                                  "submit_to_first_event_ms": round(1000 * statistics.median(p[0] for p in pairs), 1),
                                  "submit_to_image_s": round(statistics.median(p[1] for p in pairs), 3)}))
        finally:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
