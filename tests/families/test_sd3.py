"""SD3.5 through Loom's nodes gives what diffusers' StableDiffusion3Pipeline gives for the same
components, prompts and noise."""
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
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    model, te, vae = handles
    parts = {f"{slot}": enc for slot, enc in zip(("text_encoder", "text_encoder_2", "text_encoder_3"), te.encoders)}
    parts.update({f"{slot}": tok for slot, tok in zip(("tokenizer", "tokenizer_2", "tokenizer_3"), te.tokenizers)})
    pipe = StableDiffusion3Pipeline(transformer=model.unet, vae=vae.vae,
                                    scheduler=FlowMatchEulerDiscreteScheduler.from_config(model.scheduler_config),
                                    **parts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _generators(seed, batch):
    return [torch.Generator("cpu").manual_seed(seed + i) for i in range(batch)]


def test_sd3_folder_loads_as_the_sd3_family(ctx):
    model, te, vae = load_checkpoint_handles(ctx, "tiny-sd3")
    assert model.family == te.family == "sd3"
    assert te.roles == ["clip_l", "clip_g", "t5xxl"]
    assert vae.latent_channels == 16 and vae.shift_factor == pytest.approx(0.0609)


@pytest.mark.parametrize("batch", [1, 2])
def test_sd3_txt2img_matches_stable_diffusion_3_pipeline(ctx, batch):
    handles = load_checkpoint_handles(ctx, "tiny-sd3")
    model, te, vae = handles
    pos, neg = encode_text(ctx, te, PROMPT), encode_text(ctx, te, NEGATIVE)
    latent = empty_latent(vae, width=64, height=64, batch=batch)
    out = run_sampler(ctx, model, pos, latent, neg, seed=7, steps=4, cfg=4.5, scheduler="euler")
    ours = vae_decode(ctx, vae, out).pixels
    theirs = _pipeline(handles)(PROMPT, negative_prompt=NEGATIVE, height=64, width=64, num_inference_steps=4,
                                guidance_scale=4.5, num_images_per_prompt=batch,
                                generator=_generators(7, batch), output_type="pt").images
    torch.testing.assert_close(ours, theirs.permute(0, 2, 3, 1), atol=1e-4, rtol=1e-4)
    assert ours.shape == (batch, 64, 64, 3) and ours.std() > 0.01


def test_sd3_encoding_matches_the_pipeline_prompt_embeddings(ctx):
    handles = load_checkpoint_handles(ctx, "tiny-sd3")
    cond = encode_text(ctx, handles.text_encoder, PROMPT)
    embeds, _, pooled, _ = _pipeline(handles).encode_prompt(PROMPT, PROMPT, PROMPT, do_classifier_free_guidance=False)
    torch.testing.assert_close(cond.embeds, embeds, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cond.pooled, pooled, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_a_checkpoint_without_text_encoders_says_where_to_load_them(ctx, family):
    from engine.errors import NodeInputError
    from nodes.types import TextEncoder

    empty = TextEncoder(tokenizers=[], encoders=[], family=family, identity="transformer-only", roles=[])
    with pytest.raises(NodeInputError) as err:
        encode_text(ctx, empty, PROMPT)
    assert err.value.input == "text_encoder" and "clip_l" in str(err.value) and "load_text_encoders" in str(err.value)
