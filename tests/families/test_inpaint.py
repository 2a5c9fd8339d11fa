"""Inpainting with the flow-matching families, as Loom's graphs do it (vae_encode_inpaint, or
vae_encode + set_latent_noise_mask, then sample with denoise), gives what diffusers'
StableDiffusion3InpaintPipeline and FluxInpaintPipeline give for the same image, mask,
prompts and noise: pure noise in the hole at strength 1, noise mixed into the image below it,
and the known area re-noised to the next step's level and blended back after every step.

The pipelines binarise the mask and shrink it to latent size by nearest neighbour, Loom by
bilinear filtering (soft masks stay soft); a mask whose edges lie on the latent grid (8 pixels
for the released VAEs, 4 for the tiny one) is the same under both, so the mask here is drawn on
that grid. The image goes to the pipelines as its latents (as the img2img tests do): given
pixels they would sample the VAE's posterior with the seed's generator instead of taking its
mean. SD3 is compared before decoding: StableDiffusion3InpaintPipeline decodes without adding
back the VAE's shift factor that its own encoder subtracted (the SD3 text-to-image and img2img
pipelines and FluxInpaintPipeline add it; Loom's vae_decode does too).
"""
from __future__ import annotations

import pytest
import torch

from nodes.latent import set_latent_noise_mask
from nodes.loaders import load_checkpoint_handles
from nodes.sampling import run_sampler
from nodes.text import encode_text
from nodes.types import Image, Mask
from nodes.vae import vae_decode, vae_encode, vae_encode_inpaint

from .pipelines import FLUX_SLOTS, SD3_SLOTS, pipeline_parts

PROMPT = "a yellow circle on a blue background"
NEGATIVE = "a green square"
STEPS = 8


def _image() -> Image:
    g = torch.Generator().manual_seed(0)
    return Image(torch.rand(1, 64, 64, 3, generator=g))


def _mask() -> Mask:
    """A hole on the latent grid: rows 16..48, columns 8..40 (latent cells 4..12 and 2..10)."""
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 8:40] = 1
    return Mask(mask)


def _latent(ctx, vae, how: str):
    """The masked latent as each of Loom's inpainting graphs builds it."""
    if how == "vae_encode_inpaint":
        return vae_encode_inpaint(ctx, vae, _image(), _mask())
    return set_latent_noise_mask(vae_encode(ctx, vae, _image()), _mask())


def _pipeline_inputs(latent, output_type):
    return dict(image=latent.samples, mask_image=_mask().mask[:, None], masked_image_latents=latent.samples,
                height=64, width=64, num_inference_steps=STEPS, output_type=output_type)


def _hole(latents):
    return latents[..., 4:12, 2:10]


@pytest.mark.parametrize("strength, how", [(1.0, "vae_encode_inpaint"), (0.75, "set_latent_noise_mask"),
                                           (0.6, "vae_encode_inpaint")])   # 8 x 0.6: 5 steps, as the pipeline rounds
def test_sd3_inpainting_matches_the_inpaint_pipeline(ctx, strength, how):
    from diffusers import StableDiffusion3InpaintPipeline

    handles = load_checkpoint_handles(ctx, "tiny-sd3")
    model, te, vae = handles
    latent = _latent(ctx, vae, how)
    out = run_sampler(ctx, model, encode_text(ctx, te, PROMPT), latent, encode_text(ctx, te, NEGATIVE), seed=4,
                      steps=STEPS, cfg=4.0, scheduler="euler", denoise=strength)
    pipe = StableDiffusion3InpaintPipeline(**pipeline_parts(handles, SD3_SLOTS))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, strength=strength, guidance_scale=4.0,
                  generator=[torch.Generator().manual_seed(4)], **_pipeline_inputs(latent, "latent")).images
    torch.testing.assert_close(out.samples, theirs, atol=1e-4, rtol=1e-4)
    assert _hole(out.samples - latent.samples).abs().mean() > 0.05, "the hole must be repainted"


@pytest.mark.parametrize("strength, how", [(1.0, "vae_encode_inpaint"), (0.6, "set_latent_noise_mask")])
def test_flux_inpainting_matches_the_inpaint_pipeline(ctx, strength, how):
    from diffusers import FluxInpaintPipeline

    handles = load_checkpoint_handles(ctx, "tiny-flux")
    model, te, vae = handles
    latent = _latent(ctx, vae, how)
    out = run_sampler(ctx, model, encode_text(ctx, te, PROMPT), latent, seed=6, steps=STEPS, cfg=1.0,
                      scheduler="euler", denoise=strength, guidance=3.5)
    ours = vae_decode(ctx, vae, out).pixels
    pipe = FluxInpaintPipeline(**pipeline_parts(handles, FLUX_SLOTS))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, strength=strength, guidance_scale=3.5, generator=[torch.Generator().manual_seed(6)],
                  **_pipeline_inputs(latent, "pt")).images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    known = torch.ones_like(out.samples, dtype=torch.bool)
    _hole(known)[...] = False
    torch.testing.assert_close(out.samples[known], latent.samples[known], atol=1e-5, rtol=1e-5)
