"""Stable Diffusion 1.x: a UNet over 4-channel latents, one CLIP ViT-L/14 text encoder, CFG."""
from __future__ import annotations

import json
from pathlib import Path

from . import Family, has_component, has_prefix
from ._sd import CLIP_ENCODE, CLIP_L, UNET, UNET_SAMPLER, is_original_sd


def _clip_width(folder: Path) -> int | None:
    config = folder / "text_encoder" / "config.json"
    return json.loads(config.read_text()).get("hidden_size") if config.is_file() else None


def is_sd1_or_sd2_folder(index: dict, folder: Path, width: int) -> bool:
    """One text encoder, no second: SD 1.x (CLIP-L, 768 wide) or 2.x (OpenCLIP-H, 1024 wide)."""
    return (has_component(index, "text_encoder") and not has_component(index, "text_encoder_2")
            and has_component(index, "unet") and (_clip_width(folder) == 1024) == (width == 1024))


SD1 = Family(
    name="sd1", label="Stable Diffusion 1.x", latent_channels=4, denoiser=UNET, text=(CLIP_L,),
    encode=CLIP_ENCODE, sampler=UNET_SAMPLER,
    pipeline="StableDiffusionPipeline", inpaint_pipeline="StableDiffusionInpaintPipeline", config="sd15",
    matches_keys=lambda keys: is_original_sd(keys) and has_prefix(keys, "cond_stage_model.transformer."),
    matches_folder=lambda index, folder: is_sd1_or_sd2_folder(index, folder, 768),
    detection_order=50,
)
