"""ControlNet nodes: loading in both formats, parity with diffusers' pipelines, preprocessors, graphs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine import NodeInputError

from ..conftest import load_graph


def _hint(seed: int, size: int = 64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(1, size, size, 3, generator=g) > 0.7).float()


def _ours(ctx, tiny, patches, steps=6, seed=3):
    from nodes.control import apply_controlnet, load_controlnet
    from nodes.loaders import load_checkpoint_handles
    from nodes.sampling import run_sampler
    from nodes.types import Conditioning, Image, Latent

    model, _, _ = load_checkpoint_handles(ctx, "tiny-sd")
    for name, hint, strength, start, end in patches:
        model = apply_controlnet(model, load_controlnet(ctx, name), Image(hint), strength, start, end)
    pos, neg = tiny.pipe.encode_prompt("a red circle", "cpu", 1, True, "a blue square")
    latent = Latent(torch.zeros(1, 4, 64 // tiny.factor, 64 // tiny.factor))
    out = run_sampler(ctx, model, Conditioning(pos), latent, Conditioning(neg), seed=seed, steps=steps,
                      cfg=5.0, scheduler="ddim")
    return out.samples, pos, neg


def _pipeline(tiny, nets, hints, scales, starts, ends, pos, neg, steps=6, seed=3):
    from diffusers import DDIMScheduler, StableDiffusionControlNetPipeline

    p = tiny.pipe
    pipe = StableDiffusionControlNetPipeline(
        vae=p.vae, text_encoder=p.text_encoder, tokenizer=p.tokenizer, unet=p.unet,
        controlnet=nets if len(nets) > 1 else nets[0], scheduler=DDIMScheduler.from_config(p.scheduler.config),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    images = [h.permute(0, 3, 1, 2) for h in hints]
    one = len(nets) == 1
    return pipe(prompt_embeds=pos, negative_prompt_embeds=neg, image=images[0] if one else images,
                height=64, width=64, num_inference_steps=steps, guidance_scale=5.0,
                controlnet_conditioning_scale=scales[0] if one else scales,
                control_guidance_start=starts[0] if one else starts,
                control_guidance_end=ends[0] if one else ends,
                generator=torch.Generator().manual_seed(seed), output_type="latent").images


def test_single_controlnet_matches_diffusers_pipeline(ctx, tiny):
    hint = _hint(0)
    ours, pos, neg = _ours(ctx, tiny, [("tiny-cn", hint, 0.8, 0.0, 1.0)])
    ref = _pipeline(tiny, [tiny.cn1], [hint], [0.8], [0.0], [1.0], pos, neg)
    plain, _, _ = _ours(ctx, tiny, [])
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()
    assert (ours - plain).abs().max() > 1e-3          # the ControlNet changes the result


def test_multi_controlnet_with_ranges_matches_diffusers(ctx, tiny):
    h1, h2 = _hint(1), _hint(2)
    ours, pos, neg = _ours(ctx, tiny, [("tiny-cn", h1, 1.0, 0.0, 0.5), ("tiny-cn-2", h2, 0.6, 0.3, 1.0)])
    ref = _pipeline(tiny, [tiny.cn1, tiny.cn2], [h1, h2], [1.0, 0.6], [0.0, 0.3], [0.5, 1.0], pos, neg)
    assert torch.allclose(ours, ref, atol=1e-4), (ours - ref).abs().max()


def test_single_file_controlnet_loads_same_weights(ctx):
    from nodes.control import load_controlnet

    a = load_controlnet(ctx, "tiny-cn").model.state_dict()
    b = load_controlnet(ctx, "tiny-cn-single.safetensors").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_missing_controlnet_names_the_input(ctx):
    from nodes.control import load_controlnet

    with pytest.raises(NodeInputError) as err:
        load_controlnet(ctx, "nope")
    assert err.value.input == "name" and "tiny-cn" in str(err.value)


def test_weightless_preprocessors_and_passthrough():
    from nodes.control_types import ControlHint
    from nodes.preprocess import canny, content_shuffle, lineart_standard
    from nodes.types import Image

    x = torch.zeros(1, 48, 64, 3)
    x[:, 10:30, 20:40] = 1.0
    edges = canny(Image(x))
    assert isinstance(edges, ControlHint) and edges.pixels.shape == (1, 48, 64, 3)
    assert edges.pixels.max() == 1.0 and edges.pixels.mean() < 0.2
    assert canny(edges) is edges                                     # a hint passes straight through
    assert torch.equal(content_shuffle(Image(x), 1).pixels, content_shuffle(Image(x), 1).pixels)
    assert lineart_standard(Image(x)).pixels.shape == (1, 48, 64, 3)


def test_weighted_preprocessor_names_missing_file(ctx):
    from nodes.preprocess import preprocess
    from nodes.types import Image

    with pytest.raises(NodeInputError) as err:
        preprocess(ctx, Image(torch.rand(1, 64, 64, 3)), "mlsd")
    assert "mlsd_large_512_fp32.pth" in str(err.value) and "annotators" in str(err.value)


def test_controlnet_canny_graph_runs_and_reruns_only_edited_nodes(executor):
    graph = load_graph("controlnet_canny.json")
    first = executor.run(graph).raise_for_status()
    files = first.outputs["save"]["files"]
    assert len(files) == 1
    second = executor.run(graph, {"strength": 0.5}).raise_for_status()
    assert "hint" in second.cached and "load_cn" in second.cached and "sampler" in second.ran


def test_multi_controlnet_graph_is_steered_by_both_nets(executor):
    """Turning either net off (strength 0) changes the image: both take part."""
    from PIL import Image as PILImage

    graph = load_graph("multi_controlnet.json")

    def image(**params):
        [path] = executor.run(graph, params).raise_for_status().outputs["save"]["files"]
        return torch.tensor(np.asarray(PILImage.open(path).convert("RGB")), dtype=torch.float32)

    both = image()
    assert both.shape == (64, 64, 3)
    without_canny, without_lines = image(canny_strength=0.0), image(lines_strength=0.0)
    neither = image(canny_strength=0.0, lines_strength=0.0)
    assert (both - without_canny).abs().mean() > 1
    assert (both - without_lines).abs().mean() > 1
    assert (without_canny - neither).abs().mean() > 1 and (without_lines - neither).abs().mean() > 1


def test_weighted_preprocessor_loads_from_models_folder(ctx, settings_factory, shared_models, tiny):
    """HED with random weights saved under models/annotators, as the real file is named."""
    from controlnet_aux.hed import ControlNetHED_Apache2

    from engine import CancelToken, Context, Graph
    from nodes.control_types import ControlHint
    from nodes.preprocess import preprocess
    from nodes.types import Image

    folder = tiny.root / "annotators"
    folder.mkdir(exist_ok=True)
    torch.manual_seed(0)
    torch.save(ControlNetHED_Apache2().state_dict(), folder / "ControlNetHED.pth")
    with pytest.raises(NodeInputError, match="allow_pickle"):
        preprocess(ctx, Image(torch.rand(1, 64, 64, 3)), "hed")
    opted = Context("t", "t", "t", settings_factory(allow_pickle=True), shared_models, Graph(), {}, CancelToken(),
                    lambda e: None)
    hint = preprocess(opted, Image(torch.rand(1, 48, 64, 3)), "hed", resolution=64)
    assert isinstance(hint, ControlHint) and hint.pixels.shape == (1, 48, 64, 3) and hint.kind == "hed"
