"""The shipped graphs run as-is; reruns redo only what changed; bad input names the node."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image as PILImage

from engine import Graph, GraphError, NodeError

from ..conftest import GRAPHS, load_graph

FAST = {"model": "tiny-sd", "steps": 3}


def _example_png(settings, alpha_hole: bool = True) -> None:
    img = PILImage.new("RGBA", (64, 64), (0, 0, 255, 255))
    if alpha_hole:
        for x in range(16, 48):
            for y in range(16, 48):
                img.putpixel((x, y), (0, 0, 0, 0))
    img.save(settings.input_dir / "example.png")


def test_txt2img_saves_png_with_graph_and_params(executor, settings):
    result = executor.run(load_graph("txt2img.json"), params={**FAST, "seed": 4})
    [path] = result.outputs["save"]["files"]
    png = PILImage.open(path)
    assert png.size == (64, 64)
    assert json.loads(png.text["loom"])["nodes"]["sampler"]["inputs"]["seed"] == 4
    assert json.loads(png.text["loom_params"])["seed"] == 4
    assert "Seed: 4" in png.text["parameters"] and "a red circle" in png.text["parameters"]
    again = executor.run(load_graph("txt2img.json"), params={**FAST, "seed": 4}, use_cache=False)
    assert again.outputs["save"]["files"][0] != path   # a second save never overwrites


def test_seed_change_reruns_only_noise_onwards(executor):
    graph = load_graph("txt2img.json")
    executor.run(graph, params={**FAST, "seed": 1})
    result = executor.run(graph, params={**FAST, "seed": 2})
    assert set(result.ran) == {"sampler", "decode", "save"}
    assert {"ckpt", "pos", "neg", "latent"} <= set(result.cached)


def test_negative_change_keeps_positive_encoding(executor):
    graph = load_graph("txt2img.json")
    executor.run(graph, params={**FAST, "negative": "a green square"})
    result = executor.run(graph, params={**FAST, "negative": "a white triangle"})
    assert "neg" in result.ran and "pos" in result.cached and "ckpt" in result.cached


@pytest.mark.parametrize("name", ["img2img.json", "inpaint.json", "outpaint.json"])
def test_image_graphs_run_from_drawn_sources(executor, name):
    result = executor.run(load_graph(name), params=FAST)
    [path] = result.outputs["save"]["files"]
    assert PILImage.open(path).size == (64, 64)


def _png_pixels(path) -> torch.Tensor:
    return torch.tensor(np.asarray(PILImage.open(path).convert("RGB")), dtype=torch.float32)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sd-inpainting"])   # 4- and 9-channel UNets
def test_inpaint_regenerates_the_masked_area_and_keeps_every_other_pixel(executor, model):
    from nodes.draw import draw_mask, draw_shape

    nodes = load_graph("inpaint.json").to_dict()["nodes"]
    source = draw_shape(**nodes["img"]["inputs"])
    mask_inputs = {k: v for k, v in nodes["mask"]["inputs"].items() if k != "image"}
    mask = draw_mask(**mask_inputs, image=source).mask[0]
    expected = (source.pixels[0] * 255).round()
    result = executor.run(load_graph("inpaint.json"), params={**FAST, "model": model})
    out = _png_pixels(result.outputs["save"]["files"][0])
    outside, inside = mask == 0, mask >= 0.999
    assert outside.sum() > 1000 and inside.sum() > 1000
    assert torch.equal(out[outside], expected[outside])                  # untouched, exactly
    assert (out[inside] - expected[inside]).abs().mean() > 10            # regenerated


def test_outpaint_keeps_the_drawn_image(executor):
    result = executor.run(load_graph("outpaint.json"), params=FAST)
    out = torch.tensor(np.asarray(PILImage.open(result.outputs["save"]["files"][0]))).reshape(64, 64, 3)
    assert out[:40, :40].float().std() > 0      # the drawn area is decoded, not grey
    assert out.shape == (64, 64, 3)


def test_swapping_the_drawn_source_for_load_image(executor, settings):
    """What img2img.json's description tells users: replace "img" with load_image."""
    _example_png(settings)
    doc = load_graph("img2img.json").to_dict()
    doc["nodes"]["img"] = {"type": "load_image", "inputs": {"name": "example.png"}}
    for p in ("shape", "colour", "background"):
        doc["params"].pop(p)
    result = executor.run(Graph.from_dict(doc), params=FAST)
    assert result.status == "succeeded" and "img" in result.ran


def test_batch_items_match_their_seed_alone(executor):
    graph = load_graph("batch_seeds.json")
    batch = executor.run(graph, params={**FAST, "seed": 10, "batch": 3}).outputs["save"]["files"]
    alone = executor.run(graph, params={**FAST, "seed": 12, "batch": 1}).outputs["save"]["files"]
    a = torch.tensor(np.asarray(PILImage.open(batch[2])), dtype=torch.float32)
    b = torch.tensor(np.asarray(PILImage.open(alone[0])), dtype=torch.float32)
    assert (a - b).abs().max() <= 1


def test_lcm_lora_changes_the_result_and_matches_the_pipeline(executor, ctx, models_dir):
    from diffusers import LCMScheduler, StableDiffusionPipeline

    from nodes.loaders import load_checkpoint_handles

    graph = load_graph("lcm_lora.json")
    fixture = {"model": "tiny-sd", "lora": "lcm-lora-wiring-fixture", "seed": 3}
    with_lora = executor.run(graph, params=fixture)
    without = executor.run(graph, params={**fixture, "strength": 0.0})
    latent = executor.run(graph, params=fixture)
    assert latent.ran == ["save"]                 # only the file writer: it writes its own file
    lora_img = with_lora.outputs["save"]["files"][0]
    base_img = without.outputs["save"]["files"][0]
    assert np.asarray(PILImage.open(lora_img)).tolist() != np.asarray(PILImage.open(base_img)).tolist()

    # the same file through diffusers' own LoRA loading gives the same latents
    from nodes.latent import empty_latent
    from nodes.loaders import load_lora
    from nodes.sampling import run_sampler
    from nodes.text import encode_text
    model, te, vae = load_checkpoint_handles(ctx, "tiny-sd")
    model, te = load_lora(ctx, model, te, "lcm-lora-wiring-fixture")
    ours = run_sampler(ctx, model, encode_text(ctx, te, "a red circle"), empty_latent(vae, 64, 64),
                       seed=3, steps=4, cfg=1.0, scheduler="lcm").samples
    fresh = StableDiffusionPipeline.from_pretrained(models_dir / "checkpoints" / "tiny-sd", local_files_only=True,
                                                    safety_checker=None, requires_safety_checker=False)
    fresh.scheduler = LCMScheduler.from_config(fresh.scheduler.config)
    fresh.load_lora_weights(models_dir / "loras", weight_name="lcm-lora-wiring-fixture.safetensors")
    fresh.set_progress_bar_config(disable=True)
    theirs = fresh("a red circle", height=64, width=64, num_inference_steps=4, guidance_scale=1.0,
                   generator=[torch.Generator().manual_seed(3)], output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_refiner_hand_off(executor):
    """A refiner of its own layout (second text encoder only, aesthetic-score time ids) takes
    over the base's latents for the last steps: 24 of 30 on the base, 6 on the refiner."""
    from engine.events import NODE_PROGRESS

    graph = load_graph("sdxl_refiner.json")
    params = {"base": "tiny-sdxl", "refiner": "tiny-sdxl-refiner", "width": 64, "height": 64}
    steps: dict[str, int] = {}

    def count(event):
        if event.kind == NODE_PROGRESS:
            steps[event.node] = steps.get(event.node, 0) + 1

    result = executor.run(graph, params=params, listener=count)
    assert steps == {"base_sampler": 24, "refiner_sampler": 6}
    [path] = result.outputs["save"]["files"]
    assert PILImage.open(path).size == (64, 64)
    # the refiner starts from the base's latents: without the base's steps it draws another image
    alone = load_graph("sdxl_refiner.json").to_dict()
    alone["nodes"]["refiner_sampler"]["inputs"]["latent"] = ["latent", "latent"]
    other = executor.run(Graph.from_dict(alone), params=params).outputs["save"]["files"][0]
    assert (_png_pixels(path) - _png_pixels(other)).abs().mean() > 1


def test_refiner_graph_defaults_name_shipped_models():
    """The shipped wiring models exist where the graph's defaults point (loom run works as-is)."""
    from engine import Settings
    from nodes._common import resolve_model

    shipped = Settings(models_dirs=[GRAPHS.parent / "models"])
    nodes = load_graph("sdxl_refiner.json").to_dict()["nodes"]
    for node_id in ("base", "refiner"):
        folder = resolve_model(shipped, "checkpoints", nodes[node_id]["inputs"]["name"])
        assert (folder / "model_index.json").is_file() and (folder / "README.md").is_file()


def test_prompt_weights_scale_their_tokens_in_the_conditioning(ctx):
    from nodes.loaders import load_checkpoint_handles
    from nodes.text import encode_text

    encoder = load_checkpoint_handles(ctx, "tiny-sd").text_encoder

    def embeds(text):
        return encode_text(ctx, encoder, text).embeds[0]

    def emphasis(e):   # "red" (token 2: start, "a", "red") against its neighbour "circle"
        return float(e[2].norm() / e[3].norm())

    plain = embeds("a red circle")
    assert torch.allclose(embeds("a (red:1.0) circle"), plain)
    assert emphasis(embeds("a (red:1.4) circle")) / emphasis(plain) == pytest.approx(1.4, rel=1e-3)
    assert emphasis(embeds("a [red] circle")) / emphasis(plain) == pytest.approx(1 / 1.1, rel=1e-3)


def test_long_and_weighted_prompts_reach_the_sampler(executor, ctx):
    from nodes.loaders import load_checkpoint_handles
    from nodes.text import encode_text

    long_prompt = ", ".join(["a (red:1.4) circle on a [blue] background"] * 6)
    encoder = load_checkpoint_handles(ctx, "tiny-sd").text_encoder
    short, long = (encode_text(ctx, encoder, t).embeds for t in ("a red circle", long_prompt))
    assert long.shape[1] > short.shape[1] and long.shape[1] % short.shape[1] == 0   # chunked
    graph = load_graph("txt2img.json")
    images = [executor.run(graph, params={**FAST, "prompt": p}).outputs["save"]["files"][0]
              for p in ("a red circle", "a (red:1.6) circle", long_prompt)]
    plain, weighted, chunked = (_png_pixels(p) for p in images)
    assert (plain - weighted).abs().mean() > 0.5 and (plain - chunked).abs().mean() > 0.5


# -- errors name the node -----------------------------------------------------------------

def _node_error(executor, graph, params):
    with pytest.raises((GraphError, NodeError)) as info:
        executor.run(graph, params=params)
    return info.value


def test_missing_model_file(executor):
    err = _node_error(executor, load_graph("txt2img.json"), {**FAST, "model": "nope"})
    assert "ckpt" in str(err) and "nope" in str(err)


def test_unknown_scheduler(executor):
    err = _node_error(executor, load_graph("txt2img.json"), {**FAST, "scheduler": "heunpp2"})
    assert isinstance(err, GraphError) and "sampler" in str(err) and "scheduler" in str(err)


def test_width_not_multiple_of_8(executor):
    err = _node_error(executor, load_graph("txt2img.json"), {**FAST, "width": 60})
    assert isinstance(err, GraphError) and "latent" in str(err) and "width" in str(err)


def test_pickle_refused_without_opt_in(executor, models_dir):
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, models_dir / "checkpoints" / "old.ckpt")
    err = _node_error(executor, load_graph("txt2img.json"), {**FAST, "model": "old.ckpt"})
    assert "ckpt" in str(err) and "pickle" in str(err)


def test_unknown_family(executor, models_dir):
    from safetensors.torch import save_file

    save_file({"something.else": torch.zeros(2)}, str(models_dir / "checkpoints" / "weird.safetensors"))
    err = _node_error(executor, load_graph("txt2img.json"), {**FAST, "model": "weird"})
    assert "ckpt" in str(err) and "unknown checkpoint family" in str(err)


def test_a_cached_save_is_not_reused_for_another_output_folder(settings_factory, shared_models):
    from engine import Cache, Executor

    cache = Cache()
    graph = load_graph("txt2img.json")
    first = Executor(settings=settings_factory(), models=shared_models, cache=cache).run(graph, params=FAST)
    other = Executor(settings=settings_factory(), models=shared_models, cache=cache).run(graph, params=FAST)
    assert other.ran == ["save"]
    assert Path(other.outputs["save"]["files"][0]).is_file()
    assert other.outputs["save"]["files"] != first.outputs["save"]["files"]


def test_rerunning_a_saved_png_with_a_new_seed_in_a_new_process(settings, models_dir, tmp_path):
    """What the README says `loom run IMAGE.png --set seed=5` does: a new process (a fresh
    executor sharing only the disk cache) loads the checkpoint again (models are never written
    to the cache), takes the prompt encodings from the cache and runs the sampler onwards."""
    from engine import Cache, DiskCache, Executor
    from engine.documents import load_document
    from engine.models import ModelManager, ModelPaths

    def new_process() -> Executor:
        return Executor(settings=settings, cache=Cache(disk=DiskCache(tmp_path / "cache")),
                        models=ModelManager(ModelPaths([models_dir])))

    first = new_process().run(load_graph("txt2img.json"), params=FAST)
    executor = new_process()
    graph = load_document(first.outputs["save"]["files"][0], executor.registry)
    again = executor.run(graph, params={"seed": 5})
    assert set(again.ran) == {"ckpt", "sampler", "decode", "save"}
    assert set(again.cached) == {"pos", "neg", "latent"}
