"""Benchmark: the txt2img graph against diffusers' StableDiffusionPipeline on the same tiny model
(and, for SD3.5 and FLUX, the shipped graphs against StableDiffusion3Pipeline / FluxPipeline).

    python bench/diffusion.py [--steps 20] [--repeats 5] [--threads 2] [--families sd|flow|all]

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
    ap.add_argument("--families", choices=["sd", "flow", "all"], default="all",
                    help="sd: SD 1.x txt2img figures; flow: SD3.5 and FLUX graph vs pipeline")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from engine.registry import Registry

    # built once, as a `loom run` process or the server does: the runs below compare the work of
    # a run, not the node catalogue's start-up (bench/cli.py measures that)
    registry = Registry.default()
    if args.families in ("flow", "all"):
        bench_flow_families(registry, args.steps, args.repeats)
    if args.families == "flow":
        return
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
    warm = Executor(registry=registry, settings=settings, models=models)
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
        Executor(registry=registry, settings=settings, models=models, cache=Cache()).run(graph, params={**params, "seed": seed})

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
        Executor(registry=registry, settings=settings, models=fresh, cache=Cache()).run(graph, params={**params, "seed": seed})

    rerun_executor = Executor(registry=registry, settings=settings, models=models)
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


def bench_flow_families(registry, steps: int, repeats: int) -> None:
    """SD3.5 and FLUX: the shipped graphs on the shipped tiny models against StableDiffusion3Pipeline
    / FluxPipeline built on the very modules the graph loaded (warm: models in memory, a fresh
    result cache per graph run). Target ratio <= 1.03."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, StableDiffusion3Pipeline

    from engine import Cache, CancelToken, Context, Executor, Graph, Settings
    from engine.models import ModelManager, ModelPaths
    from nodes.component_loaders import load_denoiser, load_text_encoders, load_vae
    from nodes.loaders import load_checkpoint_handles

    settings = Settings(models_dirs=[ROOT / "models"], output_dir=Path(tempfile.mkdtemp(prefix="loom-bench-")))
    models = ModelManager(ModelPaths(settings.models_dirs))
    ctx = Context("bench", "bench", "bench", settings, models, Graph(), {}, CancelToken(), lambda e: None)
    prompt = "a red circle on a blue background"

    model, te, vae = load_checkpoint_handles(ctx, "sd35-tiny")
    sd3 = StableDiffusion3Pipeline(
        transformer=model.unet, vae=vae.vae, scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
        **dict(zip(("text_encoder", "text_encoder_2", "text_encoder_3"), te.encoders)),
        **dict(zip(("tokenizer", "tokenizer_2", "tokenizer_3"), te.tokenizers)))
    flux_model = load_denoiser(ctx, "flux-tiny")
    flux_te = load_text_encoders(ctx, family="flux", clip_l="flux-tiny-clip_l", t5xxl="flux-tiny-t5xxl")
    flux = FluxPipeline(transformer=flux_model.unet, vae=load_vae(ctx, "flux-tiny-ae").vae,
                        scheduler=FlowMatchEulerDiscreteScheduler.from_config(flux_model.scheduler_config),
                        text_encoder=flux_te.encoders[0], tokenizer=flux_te.tokenizers[0],
                        text_encoder_2=flux_te.encoders[1], tokenizer_2=flux_te.tokenizers[1])
    cases = {
        "sd35": ("sd35.json", {"steps": steps, "cfg": 4.5},
                 lambda seed: sd3(prompt, negative_prompt="", height=64, width=64, num_inference_steps=steps,
                                  guidance_scale=4.5, generator=[torch.Generator().manual_seed(seed)], output_type="pil")),
        "flux": ("flux.json", {"steps": steps, "guidance": 3.5},
                 lambda seed: flux(prompt, height=64, width=64, num_inference_steps=steps, guidance_scale=3.5,
                                   generator=[torch.Generator().manual_seed(seed)], output_type="pil")),
    }
    for name, (graph_file, params, raw) in cases.items():
        sd3.set_progress_bar_config(disable=True), flux.set_progress_bar_config(disable=True)
        graph = Graph.load(ROOT / "graphs" / graph_file)

        def graph_warm(seed: int, graph=graph, params=params) -> None:
            Executor(registry=registry, settings=settings, models=models, cache=Cache()).run(graph, params={**params, "seed": seed})

        fns = {"raw": raw, "graph": graph_warm}
        for fn in fns.values():
            fn(0)
        times: dict[str, list[float]] = {k: [] for k in fns}
        for i in range(repeats):
            for key, fn in fns.items():
                t = time.perf_counter()
                fn(1000 + i)
                times[key].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(json.dumps({"bench": f"{name}_txt2img_graph_vs_raw", "steps": steps, "graph_s": round(med["graph"], 4),
                          "pipeline_s": round(med["raw"], 4), "ratio": round(med["graph"] / med["raw"], 3),
                          "target": 1.03, "ok": med["graph"] / med["raw"] <= 1.03}))


if __name__ == "__main__":
    main()
