"""Benchmark: a ComfyUI workflow through Loom against the same job as a Loom graph.

    python bench/comfy.py [--steps 20] [--repeats 3] [--threads 2]

Prints JSON lines: the time to read and convert the txt2img workflow in API and UI format
(mean of 200 reads), the medians of interleaved uncached runs of the converted workflow and
of the hand-written Loom graph on the shipped shapes-tiny model (models in memory), and the
conversion overhead (conversion / Loom run; target <= 1 %). Both graphs make the same image.
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


if __name__ == "__main__":
    main()
