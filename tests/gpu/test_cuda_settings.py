"""What the device settings promise on a GPU: fp16 runs and agrees with fp32, cpu_offload gives
the same image and leaves the weights on the CPU between uses, VAE tiling decodes large images
like the untiled decoder."""
from __future__ import annotations

import pytest
import torch

from engine import CancelToken, Context, Executor, Graph, Settings
from engine.models import ModelManager, ModelPaths

from ..conftest import load_graph

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

FAST = {"model": "tiny-sd", "steps": 3, "seed": 1}


def decoded(models_dir, tmp_path, models=None, params=None, **settings) -> torch.Tensor:
    """The txt2img graph's decoded pixels [B, H, W, 3] with these settings."""
    doc = load_graph("txt2img.json").to_dict()
    doc["nodes"]["show"] = {"type": "show", "inputs": {"value": ["decode", "image"]}}
    executor = Executor(settings=Settings(models_dirs=[models_dir], output_dir=tmp_path / "out",
                                          input_dir=tmp_path / "in", **settings), models=models)
    result = executor.run(Graph.from_dict(doc), params={**FAST, **(params or {})}, use_cache=False)
    return result.outputs["show"]["value"].pixels


def test_fp16_on_cuda_runs_and_agrees_with_fp32(models_dir, tmp_path):
    full = decoded(models_dir, tmp_path, device="cuda", dtype="float32")
    half = decoded(models_dir, tmp_path, device="cuda", dtype="float16")
    assert half.shape == full.shape == (1, 64, 64, 3)
    assert torch.isfinite(half).all()
    assert (half - full).abs().mean() < 0.02


def test_cpu_offload_gives_the_same_image_and_keeps_weights_on_the_cpu(models_dir, tmp_path):
    from nodes.loaders import load_checkpoint_handles

    resident = decoded(models_dir, tmp_path, device="cuda")
    models = ModelManager(ModelPaths([models_dir]))
    settings = Settings(models_dirs=[models_dir], device="cuda", options={"cpu_offload": True})
    offloaded = decoded(models_dir, tmp_path, models=models, device="cuda",
                        options={"cpu_offload": True})
    torch.testing.assert_close(offloaded, resident, atol=1e-4, rtol=1e-4)
    ctx = Context("t", "t", "t", settings, models, Graph(), {}, CancelToken(), lambda event: None)
    unet = load_checkpoint_handles(ctx, "tiny-sd").model.unet   # the same handle the run used
    assert {p.device.type for p in unet.parameters()} == {"cpu"}


def test_vae_tiling_on_cuda_decodes_a_large_image_like_the_untiled_decoder(models_dir, tmp_path):
    size = {"width": 512, "height": 512}
    whole = decoded(models_dir, tmp_path, params=size, device="cuda")
    tiled = decoded(models_dir, tmp_path, params=size, device="cuda", options={"vae_tiling": True})
    assert tiled.shape == whole.shape == (1, 512, 512, 3)
    assert torch.isfinite(tiled).all()
    assert (tiled - whole).abs().mean() < 0.05
    assert not torch.equal(tiled, whole)   # the tiled path really ran
