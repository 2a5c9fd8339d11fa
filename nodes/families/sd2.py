"""Stable Diffusion 2.x: the SD 1.x UNet layout over an OpenCLIP ViT-H text encoder (768-v: v-prediction)."""
from __future__ import annotations

from . import Family, TextSlot, has_prefix
from ._sd import CLIP_ENCODE, UNET, UNET_SAMPLER, is_original_sd
from .sd1 import is_sd1_or_sd2_folder

SD2 = Family(
    name="sd2", label="Stable Diffusion 2.x", latent_channels=4, denoiser=UNET, text=(TextSlot("clip_h"),),
    encode=CLIP_ENCODE, sampler=UNET_SAMPLER,
    # 2.x 768-v and 2.x-base single files have the same keys: the 768 v-prediction config is the
    # default, config="sd2-base" names the other
    pipeline="StableDiffusionPipeline", inpaint_pipeline="StableDiffusionInpaintPipeline", config="sd21",
    matches_keys=lambda keys: is_original_sd(keys) and has_prefix(keys, "cond_stage_model.model."),
    matches_folder=lambda index, folder: is_sd1_or_sd2_folder(index, folder, 1024),
    detection_order=40,
)
