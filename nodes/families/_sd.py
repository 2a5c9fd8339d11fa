"""What the UNet families (SD 1.x, 2.x, SDXL) share: the UNet, CLIP text slots and their sampler."""
from __future__ import annotations

from . import TextSlot

UNET = ("unet", "UNet2DConditionModel")
UNET_SAMPLER = "nodes.sampling:run_unet_sampler"
CLIP_ENCODE = "nodes.text:encode_clip"
CLIP_L = TextSlot("clip_l")
CLIP_G = TextSlot("clip_g", "text_encoder_2", "tokenizer_2", "CLIPTextModelWithProjection")


def is_original_sd(keys: dict[str, tuple]) -> bool:
    """Original (LDM) layout: the UNet under model.diffusion_model. (SD3's MMDiT, also stored there,
    is recognised first by its joint_blocks)."""
    return any(k.startswith("model.diffusion_model.") for k in keys)
