"""FLUX.1 through Loom's nodes gives what diffusers' FluxPipeline gives for the same components,
prompts and noise: packed latents, distilled guidance, true CFG when asked."""
from __future__ import annotations

import pytest
import torch

from nodes.latent import empty_latent
from nodes.loaders import load_checkpoint_handles
from nodes.sampling import run_sampler
from nodes.text import encode_text
from nodes.vae import vae_decode

PROMPT = "a red circle on a blue background"
NEGATIVE = "a green square"


def _pipeline(handles):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    model, te, vae = handles
    pipe = FluxPipeline(transformer=model.unet, vae=vae.vae,
                        scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
                        text_encoder=te.encoders[0], tokenizer=te.tokenizers[0],
                        text_encoder_2=te.encoders[1], tokenizer_2=te.tokenizers[1])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(seed, batch):
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]


def test_flux_folder_loads_as_the_flux_family(ctx):
    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    assert model.family == te.family == "flux"
    assert te.roles == ["clip_l", "t5xxl"] and vae.latent_channels == 16


@pytest.mark.parametrize("batch, guidance", [(1, 3.5), (2, 5.0)])
def test_flux_txt2img_matches_flux_pipeline(ctx, batch, guidance):
    handles = load_checkpoint_handles(ctx, "tiny-flux")
    model, te, vae = handles
    pos = encode_text(ctx, te, PROMPT)
    out = run_sampler(ctx, model, pos, empty_latent(vae, width=64, height=64, batch=batch), seed=3, steps=4,
                      cfg=1.0, scheduler="euler", guidance=guidance)
    ours = vae_decode(ctx, vae, out).pixels
    theirs = _pipeline(handles)(PROMPT, height=64, width=64, num_inference_steps=4, guidance_scale=guidance,
                                num_images_per_prompt=batch, generator=_generators(3, batch),
                                output_type="pt").images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    assert ours.shape == (batch, 64, 64, 3) and ours.std() > 0.01


def test_flux_true_cfg_with_a_negative_prompt_matches_the_pipeline(ctx):
    handles = load_checkpoint_handles(ctx, "tiny-flux")
    model, te, vae = handles
    pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, NEGATIVE)
    out = run_sampler(ctx, model, pos, empty_latent(vae, width=64, height=64), neg, seed=5, steps=3,
                      cfg=2.5, scheduler="euler", guidance=3.5)
    ours = vae_decode(ctx, vae, out).pixels
    theirs = _pipeline(handles)(PROMPT, negative_prompt=NEGATIVE, true_cfg_scale=2.5, height=64, width=64,
                                num_inference_steps=3, guidance_scale=3.5, generator=_generators(5, 1),
                                output_type="pt").images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)


def test_flux_without_a_negative_makes_no_negative_pass(ctx):
    """Distilled guidance: cfg > 1 without a negative prompt changes nothing (no second pass)."""
    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    pos, latent = encode_text(ctx, te, PROMPT), empty_latent(vae, width=64, height=64)
    a = run_sampler(ctx, model, pos, latent, seed=1, steps=2, cfg=1.0, scheduler="euler").samples
    b = run_sampler(ctx, model, pos, latent, seed=1, steps=2, cfg=7.0, scheduler="euler").samples
    torch.testing.assert_close(a, b)


def test_guidance_is_refused_for_a_cfg_family(ctx):
    from engine.errors import NodeInputError

    model, te, vae = load_checkpoint_handles(ctx, "tiny-sd3")
    with pytest.raises(NodeInputError, match="guidance"):
        run_sampler(ctx, model, encode_text(ctx, te, PROMPT), empty_latent(vae, width=64, height=64),
                    steps=1, scheduler="euler", guidance=3.0)


def test_flux_latent_must_fit_its_patches(ctx):
    from engine.errors import NodeInputError

    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    with pytest.raises(NodeInputError, match="multiple of 2"):
        run_sampler(ctx, model, encode_text(ctx, te, PROMPT), empty_latent(vae, width=68, height=64),
                    steps=1, scheduler="euler")
