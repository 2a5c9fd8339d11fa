"""FLUX and SD3.5 LoRAs (diffusers/peft format) applied by load_lora give what the pipelines'
load_lora_weights gives, and leave the shared model unchanged for handles without them.

The SD3.5 one adapts the transformer and both CLIP encoders with lora_alpha twice its rank,
which only the adapter metadata diffusers saves in the file records (SD3's LoRA loader reads
no other layout: kohya-style SD3 files are not converted by diffusers either)."""
from __future__ import annotations

import pytest
import torch

from nodes.latent import empty_latent
from nodes.loaders import load_checkpoint_handles, load_lora
from nodes.sampling import run_sampler
from nodes.text import encode_text

PROMPT = "a red circle on a blue background"


@pytest.fixture(scope="module")
def flux_lora(models_dir):
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = FluxTransformer2DModel.from_pretrained(models_dir / "checkpoints" / "tiny-flux", subfolder="transformer")
    torch.manual_seed(9)
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False,
                                       target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    FluxPipeline.save_lora_weights(models_dir / "loras", transformer_lora_layers=get_peft_model_state_dict(transformer),
                                   weight_name="tiny-flux-lora.safetensors")
    return "tiny-flux-lora.safetensors"


def _latents(ctx, model, te, vae):
    return run_sampler(ctx, model, encode_text(ctx, te, PROMPT), empty_latent(vae, width=64, height=64), seed=2,
                       steps=3, cfg=1.0, scheduler="euler", guidance=3.5).samples


def test_flux_lora_matches_the_pipeline(ctx, models_dir, flux_lora):
    from diffusers import FluxPipeline

    model, te, vae = load_checkpoint_handles(ctx, "tiny-flux")
    plain = _latents(ctx, model, te, vae)
    patched_model, patched_te = load_lora(ctx, model, te, flux_lora, strength_model=1.0)
    ours = _latents(ctx, patched_model, patched_te, vae)
    pipe = FluxPipeline.from_pretrained(models_dir / "checkpoints" / "tiny-flux", local_files_only=True)
    pipe.load_lora_weights(models_dir / "loras", weight_name=flux_lora)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, height=64, width=64, num_inference_steps=3, guidance_scale=3.5,
                  generator=[torch.Generator().manual_seed(2)], output_type="latent").images
    from nodes.families.flux import unpack

    torch.testing.assert_close(ours, unpack(theirs, 16, 16), atol=1e-4, rtol=1e-4)
    assert (ours - plain).abs().mean() > 1e-3
    torch.testing.assert_close(_latents(ctx, model, te, vae), plain)   # the base handle is untouched


@pytest.fixture(scope="module")
def sd3_lora(models_dir):
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict
    from transformers import CLIPTextModelWithProjection

    folder = models_dir / "checkpoints" / "tiny-sd3"
    transformer = SD3Transformer2DModel.from_pretrained(folder, subfolder="transformer")
    encoders = [CLIPTextModelWithProjection.from_pretrained(folder, subfolder=s) for s in ("text_encoder", "text_encoder_2")]
    torch.manual_seed(11)
    config = dict(r=4, lora_alpha=8, init_lora_weights=False)
    transformer.add_adapter(LoraConfig(target_modules=["to_q", "to_k", "to_v", "to_out.0"], **config))
    for encoder in encoders:   # through peft itself: transformers' add_adapter wants a newer peft
        inject_adapter_in_model(LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "out_proj"], **config), encoder)
    metadata = {"r": 4, "lora_alpha": 8, "target_modules": ["to_q", "to_k", "to_v", "to_out.0"]}
    te_metadata = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "out_proj"]}
    StableDiffusion3Pipeline.save_lora_weights(
        models_dir / "loras", transformer_lora_layers=get_peft_model_state_dict(transformer),
        text_encoder_lora_layers=get_peft_model_state_dict(encoders[0]),
        text_encoder_2_lora_layers=get_peft_model_state_dict(encoders[1]),
        transformer_lora_adapter_metadata=metadata, text_encoder_lora_adapter_metadata=te_metadata,
        text_encoder_2_lora_adapter_metadata=te_metadata, weight_name="tiny-sd3-lora.safetensors")
    return "tiny-sd3-lora.safetensors"


def _sd3_latents(ctx, model, te, vae):
    return run_sampler(ctx, model, encode_text(ctx, te, PROMPT), empty_latent(vae, width=64, height=64),
                       encode_text(ctx, te, ""), seed=2, steps=3, cfg=4.0, scheduler="euler").samples


@pytest.mark.parametrize("strength_model, strength_clip", [(1.0, 1.0), (0.6, 0.0)])
def test_sd3_lora_matches_the_pipeline(ctx, models_dir, sd3_lora, strength_model, strength_clip):
    from diffusers import StableDiffusion3Pipeline

    model, te, vae = load_checkpoint_handles(ctx, "tiny-sd3")
    plain = _sd3_latents(ctx, model, te, vae)
    ours = _sd3_latents(ctx, *load_lora(ctx, model, te, sd3_lora, strength_model=strength_model,
                                        strength_clip=strength_clip), vae)
    pipe = StableDiffusion3Pipeline.from_pretrained(models_dir / "checkpoints" / "tiny-sd3", local_files_only=True)
    pipe.load_lora_weights(models_dir / "loras", weight_name=sd3_lora, adapter_name="lora")
    pipe.set_adapters(["lora"], adapter_weights=[strength_model])
    if strength_clip == 0:
        from diffusers.loaders.lora_base import disable_lora_for_text_encoder

        disable_lora_for_text_encoder(pipe.text_encoder)
        disable_lora_for_text_encoder(pipe.text_encoder_2)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(PROMPT, negative_prompt="", height=64, width=64, num_inference_steps=3, guidance_scale=4.0,
                  generator=[torch.Generator().manual_seed(2)], output_type="latent").images
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    assert (ours - plain).abs().mean() > 1e-3
    torch.testing.assert_close(_sd3_latents(ctx, model, te, vae), plain)   # the base handles are untouched
