"""ComfyUI's FLUX / SD3.5 class types are adapters over Loom's family nodes."""
from __future__ import annotations

import pytest
import torch

from nodes.comfy.flow_families import (clip_text_encode_flux, dual_clip_loader, empty_sd3_latent_image,
                                       flux_guidance, model_sampling_sd3, unet_loader)
from nodes.sampling import run_sampler

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def comfy_files(models_dir):
    """The tiny FLUX as ComfyUI users lay it out, with parts as folders (no config to name)."""
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(models_dir / "checkpoints" / "tiny-flux", local_files_only=True)
    pipe.transformer.save_pretrained(models_dir / "diffusion_models" / "tiny-flux-dit")
    for name, parts in (("tiny-flux-clip", (pipe.text_encoder, pipe.tokenizer)),
                        ("tiny-flux-t5", (pipe.text_encoder_2, pipe.tokenizer_2))):
        for part in parts:
            part.save_pretrained(models_dir / "text_encoders" / name)
    return models_dir


def test_flux_workflow_class_types(ctx, comfy_files):
    model = unet_loader(ctx, "tiny-flux-dit")
    clip = dual_clip_loader(ctx, "tiny-flux-t5", "tiny-flux-clip", type="flux")   # either order
    assert clip.roles == ["clip_l", "t5xxl"] and model.family == "flux"
    cond = clip_text_encode_flux(ctx, clip, PROMPT, PROMPT, guidance=2.0)
    latent = empty_sd3_latent_image(64, 64, 1)
    assert latent.samples.shape == (1, 16, 8, 8)
    by_conditioning = run_sampler(ctx, model, cond, latent, seed=1, steps=2, cfg=1.0, scheduler="euler").samples
    by_input = run_sampler(ctx, model, cond.replace(guidance=None), latent, seed=1, steps=2, cfg=1.0,
                           scheduler="euler", guidance=2.0).samples
    torch.testing.assert_close(by_conditioning, by_input)
    regained = run_sampler(ctx, model, flux_guidance(cond, 5.0), latent, seed=1, steps=2, cfg=1.0, scheduler="euler")
    assert not torch.allclose(regained.samples, by_conditioning)
    shifted = run_sampler(ctx, model_sampling_sd3(model, shift=1.0), cond, latent, seed=1, steps=2, cfg=1.0,
                          scheduler="euler").samples
    assert not torch.allclose(shifted, by_conditioning)


def test_class_types_are_registered():
    from engine import Registry

    registry = Registry.default()
    for name in ("UNETLoader", "DualCLIPLoader", "TripleCLIPLoader", "CLIPTextEncodeFlux", "FluxGuidance",
                 "ModelSamplingSD3", "ModelSamplingFlux", "EmptySD3LatentImage"):
        assert name in registry
