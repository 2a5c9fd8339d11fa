"""A FLUX transformer LoRA (diffusers/peft format) applied by load_lora gives what FluxPipeline's
load_lora_weights gives, and leaves the shared model unchanged for handles without it."""
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
