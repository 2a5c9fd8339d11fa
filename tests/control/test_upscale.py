"""Upscale nodes: spandrel models (both formats, pickle policy), tiling, OOM fallback, SD x4,
resampling and progressive upscaling."""
from __future__ import annotations

import pytest
import torch

from engine import NodeInputError


def _image(h=24, w=20, seed=0):
    from nodes.types import Image

    return Image(torch.rand(1, h, w, 3, generator=torch.Generator().manual_seed(seed)))


def test_spandrel_models_detected_and_match_source_network(ctx, upscale_models):
    from nodes.upscale import load_upscale_model, upscale_with_model

    img = _image()
    for name, key, scale in (("tiny-esrgan-x2", "esrgan", 2), ("tiny-compact-x4", "compact", 4)):
        model = load_upscale_model(ctx, name)
        assert model.scale == scale
        out = upscale_with_model(ctx, model, img, tile=512)
        assert out.pixels.shape == (1, 24 * scale, 20 * scale, 3)
        with torch.no_grad():
            ref = upscale_models[key](img.pixels.permute(0, 3, 1, 2)).clamp(0, 1).permute(0, 2, 3, 1)
        assert torch.allclose(out.pixels, ref, atol=1e-5)


def test_pickle_needs_opt_in(ctx, settings_factory, shared_models, upscale_models):
    from engine import CancelToken, Context, Graph

    from nodes.upscale import load_upscale_model

    with pytest.raises(NodeInputError, match="allow_pickle"):
        load_upscale_model(ctx, "tiny-compact-x4.pth")
    opted = Context("t", "t", "t", settings_factory(allow_pickle=True), shared_models, Graph(), {}, CancelToken(),
                    lambda e: None)
    assert load_upscale_model(opted, "tiny-compact-x4.pth").scale == 4


def test_tiles_blend_close_to_whole_image_and_halve_on_oom(ctx, upscale_models):
    from nodes.control_types import UpscaleModel
    from nodes.upscale import load_upscale_model, upscale_pixels

    model = load_upscale_model(ctx, "tiny-compact-x4")
    img = torch.rand(1, 150, 140, 3, generator=torch.Generator().manual_seed(1))
    whole = upscale_pixels(ctx, model, img, 4096, 0)
    tiled = upscale_pixels(ctx, model, img, 64, 16)
    assert (whole - tiled).abs().mean() < 0.01

    seen = []

    class Tight:                       # runs out of memory on tiles above 64 px
        device, dtype = torch.device("cpu"), torch.float32
        model = torch.nn.Identity()

        def __call__(self, x):
            seen.append(x.shape[-1])
            if max(x.shape[-2:]) > 64:
                raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
            return model.descriptor(x)

    out = upscale_pixels(ctx, UpscaleModel(Tight(), 4, "test", "t"), img, 256, 16)
    assert out.shape == (1, 600, 560, 3) and max(seen) > 64 and seen[-1] <= 64


def test_resize_and_progressive_upscale(ctx, upscale_models):
    from nodes.upscale import load_upscale_model, progressive_upscale, resize_image

    img = _image(32, 32)
    assert resize_image(ctx, img, 1.5, method="lanczos").pixels.shape == (1, 48, 48, 3)
    assert resize_image(ctx, img, width=64, method="bicubic").pixels.shape == (1, 64, 64, 3)
    out = progressive_upscale(ctx, img, 300, 200, load_upscale_model(ctx, "tiny-esrgan-x2"))
    assert out.pixels.shape == (1, 200, 300, 3)
    assert progressive_upscale(ctx, img, 100, 100).pixels.shape == (1, 100, 100, 3)


def test_sd_x4_upscaler(ctx, upscale_models):
    from nodes.upscale import sd_upscale

    img = _image(16, 16)
    a = sd_upscale(ctx, img, "tiny-sd-x4", prompt="a red circle", noise_level=20, steps=3, seed=1)
    b = sd_upscale(ctx, img, "tiny-sd-x4", prompt="a red circle", noise_level=20, steps=3, seed=1)
    assert a.pixels.shape == (1, 64, 64, 3) and torch.equal(a.pixels, b.pixels)


def test_upscale_graph_enlarges_the_decoded_image_and_keeps_its_content(executor, upscale_models):
    """The shipped 2x model and lanczos both make 256 px images that, scaled back down, are the
    64 px source; the contact sheet holds both side by side. (The tiny random test checkpoint
    decodes noise, so the source here is the drawing the graph's prompt describes.)"""
    import torch.nn.functional as F
    from PIL import Image as PILImage

    from engine import Graph

    from ..conftest import load_graph

    doc = load_graph("upscale.json").to_dict()
    doc["nodes"]["decode"] = {"type": "draw_shape", "inputs": {
        "shape": "triangle", "colour": "yellow", "background": "black", "size": 40}}
    for name in ("decode", "model_up", "plain_up"):
        doc["nodes"][f"show_{name}"] = {"type": "show", "inputs": {"value": [name, "image"]}}
    result = executor.run(Graph.from_dict(doc)).raise_for_status()
    small = result.outputs["show_decode"]["value"].pixels
    assert small.shape == (1, 64, 64, 3) and small.std() > 0.05
    for name in ("model_up", "plain_up"):
        big = result.outputs[f"show_{name}"]["value"].pixels
        assert big.shape == (1, 256, 256, 3)
        down = F.avg_pool2d(big.permute(0, 3, 1, 2), 4).permute(0, 2, 3, 1)
        assert (down - small).abs().mean() < 0.03, name
    [path] = result.outputs["save"]["files"]
    sheet = PILImage.open(path)
    assert sheet.width >= 2 * 256 and sheet.height >= 256
