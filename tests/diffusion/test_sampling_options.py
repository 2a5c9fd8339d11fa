"""Sampler and encoder options: clip_skip, attention slicing, cancelling mid-sampling, and
inpainting with a 9-channel UNet equal to diffusers' inpainting pipeline."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image as PILImage

from engine import CancelToken
from nodes.latent import empty_latent
from nodes.loaders import load_checkpoint_handles
from nodes.sampling import run_sampler
from nodes.text import encode_text
from nodes.types import Image, Mask
from nodes.vae import vae_encode_inpaint

from ..conftest import load_graph
from .test_equivalence import PROMPT, _generators, _pipeline


def test_clip_skip_takes_an_earlier_layer_as_the_pipelines_do(ctx):
    """diffusers' clip_skip: hidden state -(clip_skip + 1), then the final layer norm. (Its own
    encode_prompt(clip_skip=...) fails with transformers 5, so the reference is spelled out.)"""
    _, te, _ = load_checkpoint_handles(ctx, "tiny-sd")
    tokenizer, encoder = te.tokenizers[0], te.encoders[0]
    ids = tokenizer(PROMPT, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-2]
        theirs = encoder.final_layer_norm(hidden)
    skipped = encode_text(ctx, te, PROMPT, clip_skip=1).embeds
    torch.testing.assert_close(skipped, theirs, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(skipped, encode_text(ctx, te, PROMPT).embeds)
    assert te.clip_skip == 0                              # the shared handle is not changed


def test_attention_slicing_gives_the_same_latents_and_restores_processors(ctx, settings_factory):
    from dataclasses import replace

    model, te, vae = load_checkpoint_handles(ctx, "tiny-sd")
    before = {k: type(v) for k, v in model.unet.attn_processors.items()}
    seen = set()
    probe = lambda m, step: seen.update(type(p).__name__ for p in m.unet.attn_processors.values())  # noqa: E731
    cond, latent = encode_text(ctx, te, PROMPT), empty_latent(vae, 64, 64)
    plain = run_sampler(ctx, model, cond, latent, seed=1, steps=3, cfg=3.0).samples
    sliced_ctx = replace(ctx, settings=settings_factory(options={"attention_slicing": "max"}))
    sliced = run_sampler(sliced_ctx, model.with_patch(hooks=[probe]), cond, latent, seed=1, steps=3, cfg=3.0).samples
    assert seen == {"SlicedAttnProcessor"}
    torch.testing.assert_close(sliced, plain, atol=1e-5, rtol=1e-5)
    assert {k: type(v) for k, v in model.unet.attn_processors.items()} == before


def test_cancelling_during_sampling_stops_within_one_step(executor):
    token, steps_seen = CancelToken(), []

    def cancel_at_step_two(event):
        if event.node == "sampler" and event.kind == "node_progress":
            steps_seen.append(event.data["step"])
            if event.data["step"] == 2:
                token.cancel()

    result = executor.run(load_graph("txt2img.json"), params={"model": "tiny-sd", "steps": 10, "seed": 9},
                          cancel=token, listener=cancel_at_step_two, check=False)
    assert result.status == "cancelled"
    assert steps_seen == [1, 2]                 # no step ran after the one that saw the cancel
    assert "save" not in result.ran


def test_inpainting_unet_matches_the_inpaint_pipeline(ctx):
    from diffusers import StableDiffusionInpaintPipeline

    handles = load_checkpoint_handles(ctx, "tiny-sd-inpainting")
    model, te, vae = handles
    pil = PILImage.new("RGB", (64, 64), (0, 0, 255))
    pil.paste((255, 0, 0), (16, 16, 48, 48))
    mask_pil = PILImage.new("L", (64, 64), 0)
    mask_pil.paste(255, (24, 8, 56, 40))                     # aligned to the 4-pixel latent grid
    image = Image(torch.tensor(np.asarray(pil), dtype=torch.float32).reshape(1, 64, 64, 3) / 255)
    mask = Mask((torch.tensor(np.asarray(mask_pil), dtype=torch.float32).reshape(1, 64, 64) / 255))
    latent = vae_encode_inpaint(ctx, vae, image, mask)
    cond, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, "")
    ours = run_sampler(ctx, model, cond, latent, neg, seed=5, steps=2, cfg=4.0, scheduler="ddim").samples

    pipe = _pipeline(StableDiffusionInpaintPipeline, handles, "ddim")
    theirs = pipe(PROMPT, image=pil, mask_image=mask_pil, masked_image_latents=latent.masked_image,
                  negative_prompt="", height=64, width=64, num_inference_steps=2, guidance_scale=4.0,
                  strength=1.0, generator=_generators(5, 1), output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
