"""Benchmark: the txt2img graph against diffusers' StableDiffusionPipeline on the same tiny model.

    python bench/diffusion.py [--steps 20] [--repeats 5] [--threads 2]

Prints JSON lines, medians of interleaved repeats: the graph's full run against the raw
pipeline, both with the model in memory and both from disk (a fresh `loom run` against a
script that calls from_pretrained; target ratio <= 1.03), and a seed-only rerun (load and
text encoding cached) against each (target < 0.8). Uses a tiny random model built from
configs; on a tiny model sampling dominates, so the seed-only gain shows against the
from-disk pipeline.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from engine import Cache, Executor, Graph, Settings
    from engine.models import ModelManager, ModelPaths
    from nodes.loaders import load_checkpoint_handles
    from nodes.sampling import make_scheduler
    from tools.make_tiny_model import make_sd_pipeline

    tmp = Path(tempfile.mkdtemp(prefix="loom-bench-"))
    make_sd_pipeline(seed=0).save_pretrained(tmp / "models" / "checkpoints" / "shapes-tiny")
    settings = Settings(models_dirs=[tmp / "models"], output_dir=tmp / "out")
    models = ModelManager(ModelPaths(settings.models_dirs))
    graph = Graph.load(ROOT / "graphs" / "txt2img.json")
    params = {"steps": args.steps, "cfg": 4.0}
    prompt = graph.nodes["pos"].inputs["text"]

    # the pipeline on the very modules the graph loaded
    warm = Executor(settings=settings, models=models)
    warm.run(graph, params=params)
    from diffusers import StableDiffusionPipeline
    from engine import CancelToken, Context

    ctx = Context("bench", "bench", "bench", settings, models, graph, {}, CancelToken(), lambda e: None)
    model, te, vae = load_checkpoint_handles(ctx, "shapes-tiny")
    pipe = StableDiffusionPipeline(vae=vae.vae, text_encoder=te.encoders[0], tokenizer=te.tokenizers[0],
                                   unet=model.unet, scheduler=make_scheduler("dpmpp_2m", model.scheduler_config),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)

    def raw(seed: int) -> None:
        pipe(prompt, negative_prompt="", height=64, width=64, num_inference_steps=args.steps, guidance_scale=4.0,
             generator=[torch.Generator().manual_seed(seed)], output_type="pil")

    def graph_warm(seed: int) -> None:  # fresh result cache, models stay loaded (like the pipeline object)
        Executor(settings=settings, models=models, cache=Cache()).run(graph, params={**params, "seed": seed})

    def raw_from_disk(seed: int) -> None:  # a script's whole job: load the pipeline, generate
        p = StableDiffusionPipeline.from_pretrained(tmp / "models" / "checkpoints" / "shapes-tiny",
                                                    local_files_only=True, safety_checker=None,
                                                    requires_safety_checker=False)
        p.scheduler = make_scheduler("dpmpp_2m", model.scheduler_config)
        p.set_progress_bar_config(disable=True)
        p(prompt, negative_prompt="", height=64, width=64, num_inference_steps=args.steps, guidance_scale=4.0,
          generator=[torch.Generator().manual_seed(seed)], output_type="pil")

    def graph_from_disk(seed: int) -> None:  # a fresh `loom run`: new model manager and caches
        fresh = ModelManager(ModelPaths(settings.models_dirs))
        Executor(settings=settings, models=fresh, cache=Cache()).run(graph, params={**params, "seed": seed})

    rerun_executor = Executor(settings=settings, models=models)
    rerun_executor.run(graph, params={**params, "seed": 0})

    def graph_seed_only(seed: int) -> None:
        rerun_executor.run(graph, params={**params, "seed": seed})

    fns = {"raw": raw, "graph": graph_warm, "raw_from_disk": raw_from_disk,
           "graph_from_disk": graph_from_disk, "seed_only": graph_seed_only}
    for fn in fns.values():
        fn(0)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for i in range(args.repeats):          # interleaved, so machine load hits every variant alike
        for name, fn in fns.items():
            t = time.perf_counter()
            fn(1000 + i)
            times[name].append(time.perf_counter() - t)
    med = {name: statistics.median(v) for name, v in times.items()}
    for name, base, target in (("graph", "raw", 1.03), ("graph_from_disk", "raw_from_disk", 1.03),
                               ("seed_only", "raw", 0.8), ("seed_only", "raw_from_disk", 0.8)):
        print(json.dumps({"bench": f"txt2img_{name}_vs_{base}", "steps": args.steps, "threads": args.threads,
                          "graph_s": round(med[name], 4), "pipeline_s": round(med[base], 4),
                          "ratio": round(med[name] / med[base], 3), "target": target,
                          "ok": med[name] / med[base] <= target}))


if __name__ == "__main__":
    main()
