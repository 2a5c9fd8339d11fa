"""Image to image and inpainting with the flow-matching families give what diffusers'
StableDiffusion3Img2ImgPipeline, FluxImg2ImgPipeline and StableDiffusion3InpaintPipeline give."""
from __future__ import annotations

import pytest
import torch

from nodes.loaders import load_checkpoint_handles
from nodes.sampling import run_sampler
from nodes.text import encode_text
from nodes.types import Image, Mask
from nodes.vae import vae_decode, vae_encode, vae_encode_inpaint

from .pipelines import FLUX_SLOTS, SD3_SLOTS, pipeline_parts

PROMPT = "a yellow circle on a blue background"


def _generators(seed):
    return [torch.Generator("cpu").manual_seed(seed)]


def _image():
    g = torch.Generator().manual_seed(0)
    return Image(torch.rand(1, 64, 64, 3, generator=g))


def test_sd3_img2img_matches_the_pipeline(ctx):
    from diffusers import StableDiffusion3Img2ImgPipeline

    handles = load_checkpoint_handles(ctx, "tiny-sd3")
    model, te, vae = handles
    init = vae_encode(ctx, vae, _image())
    pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, "")
    ours = vae_decode(ctx, vae, run_sampler(ctx, model, pos, init, neg, seed=4, steps=8, cfg=4.0,
                                            scheduler="euler", denoise=0.5)).pixels
    pipe = StableDiffusion3Img2ImgPipeline(**pipeline_parts(handles, SD3_SLOTS))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=init.samples, negative_prompt="", strength=0.5, num_inference_steps=8,
                  guidance_scale=4.0, generator=_generators(4), output_type="pt").images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("denoise", [0.75, 0.6])     # 8 x 0.6 is not whole: the pipelines round the start down
def test_flux_img2img_matches_the_pipeline(ctx, denoise):
    from diffusers import FluxImg2ImgPipeline

    handles = load_checkpoint_handles(ctx, "tiny-flux")
    model, te, vae = handles
    init = vae_encode(ctx, vae, _image())
    ours = vae_decode(ctx, vae, run_sampler(ctx, model, encode_text(ctx, te, PROMPT), init, seed=6, steps=8,
                                            cfg=1.0, scheduler="euler", denoise=denoise, guidance=3.5)).pixels
    pipe = FluxImg2ImgPipeline(**pipeline_parts(handles, FLUX_SLOTS))
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, image=init.samples, height=64, width=64, strength=denoise, num_inference_steps=8,
                  guidance_scale=3.5, generator=_generators(6), output_type="pt").images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_sd3_inpainting_keeps_the_unmasked_area(ctx):
    """An ordinary (16-channel) SD3 transformer repaints only the hole: outside it the result is
    the encoded image, as StableDiffusion3InpaintPipeline blends it at every step."""
    handles = load_checkpoint_handles(ctx, "tiny-sd3")
    model, te, vae = handles
    mask = torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    latent = vae_encode_inpaint(ctx, vae, _image(), Mask(mask))
    out = run_sampler(ctx, model, encode_text(ctx, te, PROMPT), latent, encode_text(ctx, te, ""), seed=2,
                      steps=6, cfg=4.0, scheduler="euler")
    keep = latent.noise_mask == 0
    torch.testing.assert_close(out.samples[keep.expand_as(out.samples)],
                               latent.samples[keep.expand_as(latent.samples)], atol=1e-5, rtol=1e-5)
    assert (out.samples - latent.samples).abs()[~keep.expand_as(out.samples)].mean() > 0.05
