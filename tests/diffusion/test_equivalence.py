"""The graph's nodes give what diffusers' own pipelines give for the same components and noise."""
from __future__ import annotations

import pytest
import torch

from nodes._common import seeded_noise
from nodes.latent import empty_latent
from nodes.loaders import load_checkpoint_handles
from nodes.sampling import run_sampler
from nodes.text import encode_text, encode_text_sdxl
from nodes.types import Image
from nodes.vae import vae_decode, vae_encode

PROMPT = "a red circle on a blue background"
NEGATIVE = "a green square"


def _pipeline(cls, handles, scheduler):
    from nodes.sampling import make_scheduler

    model, te, vae = handles
    parts = dict(vae=vae.vae, unet=model.unet, scheduler=make_scheduler(scheduler, model.scheduler_config))
    if model.family.startswith("sdxl"):
        parts.update(text_encoder=te.encoders[0], text_encoder_2=te.encoders[1],
                     tokenizer=te.tokenizers[0], tokenizer_2=te.tokenizers[1])
    else:
        parts.update(text_encoder=te.encoders[0], tokenizer=te.tokenizers[0], safety_checker=None,
                     feature_extractor=None, requires_safety_checker=False)
    pipe = cls(**parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(seed, batch):
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]


def _graph_txt2img(ctx, handles, scheduler, seed=7, steps=6, cfg=5.0, batch=1):
    model, te, vae = handles
    pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, NEGATIVE)
    latent = empty_latent(vae, width=64, height=64, batch=batch)
    out = run_sampler(ctx, model, pos, latent, neg, seed=seed, steps=steps, cfg=cfg, scheduler=scheduler)
    return vae_decode(ctx, vae, out).pixels


@pytest.mark.parametrize("scheduler", ["dpmpp_2m", "euler_ancestral", "ddim", "unipc"])
def test_txt2img_matches_stable_diffusion_pipeline(ctx, scheduler):
    from diffusers import StableDiffusionPipeline

    handles = load_checkpoint_handles(ctx, "tiny-sd")
    ours = _graph_txt2img(ctx, handles, scheduler, batch=2)
    pipe = _pipeline(StableDiffusionPipeline, handles, scheduler)
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=6,
                  guidance_scale=5.0, num_images_per_prompt=2, generator=_generators(7, 2),
                  output_type="pt").images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    assert ours.shape == (2, 64, 64, 3) and ours.std() > 0.01


def test_single_file_checkpoint_loads_the_same_weights(ctx):
    folder = load_checkpoint_handles(ctx, "tiny-sd")
    single = load_checkpoint_handles(ctx, "tiny-sd-single", config="tiny-sd-single")
    a = _graph_txt2img(ctx, folder, "euler")
    b = _graph_txt2img(ctx, single, "euler")
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_img2img_matches_pipeline(ctx):
    from diffusers import StableDiffusionImg2ImgPipeline

    handles = load_checkpoint_handles(ctx, "tiny-sd")
    model, te, vae = handles
    torch.manual_seed(0)
    image = Image(torch.rand(1, 64, 64, 3))
    init = vae_encode(ctx, vae, image)
    pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, NEGATIVE)
    out = run_sampler(ctx, model, pos, init, neg, seed=3, steps=8, cfg=4.0, scheduler="dpmpp_2m", denoise=0.6)
    ours = vae_decode(ctx, vae, out).pixels
    pipe = _pipeline(StableDiffusionImg2ImgPipeline, handles, "dpmpp_2m")
    theirs = pipe(PROMPT, image=init.samples, negative_prompt=NEGATIVE, strength=0.6, num_inference_steps=8,
                  guidance_scale=4.0, generator=_generators(3, 1), output_type="pt").images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_sdxl_matches_pipeline(ctx):
    from diffusers import StableDiffusionXLPipeline

    handles = load_checkpoint_handles(ctx, "tiny-sdxl")
    model, te, vae = handles
    assert model.family == "sdxl"
    pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, NEGATIVE)
    latent = empty_latent(vae, width=64, height=64)
    out = run_sampler(ctx, model, pos, latent, neg, seed=11, steps=5, cfg=6.0, scheduler="euler")
    ours = vae_decode(ctx, vae, out).pixels
    pipe = _pipeline(StableDiffusionXLPipeline, handles, "euler")
    theirs = pipe(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=5,
                  guidance_scale=6.0, generator=_generators(11, 1), output_type="pt").images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    # micro-conditioning reaches the UNet
    cropped = encode_text_sdxl(ctx, te, PROMPT, original_width=128, original_height=128, crop_top=32)
    other = run_sampler(ctx, model, cropped, latent, neg, seed=11, steps=5, cfg=6.0, scheduler="euler")
    assert not torch.allclose(other.samples, out.samples)


def test_same_seed_same_image_alone_or_in_a_batch(ctx):
    handles = load_checkpoint_handles(ctx, "tiny-sd")
    batch = _graph_txt2img(ctx, handles, "euler_ancestral", seed=20, batch=3)
    alone = _graph_txt2img(ctx, handles, "euler_ancestral", seed=21, batch=1)
    torch.testing.assert_close(batch[1:2], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(batch[0], batch[1])


def test_noise_is_per_item():
    a, _ = seeded_noise((3, 4, 8, 8), 5, [0, 1, 2])
    b, _ = seeded_noise((1, 4, 8, 8), 6, [0])
    torch.testing.assert_close(a[1:2], b)
