"""SDXL base and refiner: a UNet with micro-conditioning (text_time), CLIP-L + OpenCLIP bigG with
pooled embeddings, penultimate-layer hidden states; the refiner keeps only bigG."""
from __future__ import annotations

from . import Family, has_component, has_prefix
from ._sd import CLIP_ENCODE, CLIP_G, CLIP_L, UNET, UNET_SAMPLER, is_original_sd

SDXL = Family(
    name="sdxl", label="SDXL", latent_channels=4, denoiser=UNET, text=(CLIP_L, CLIP_G),
    encode=CLIP_ENCODE, sampler=UNET_SAMPLER, clip_layer="penultimate", micro_conditioning=True,
    pipeline="StableDiffusionXLPipeline", inpaint_pipeline="StableDiffusionXLInpaintPipeline",
    config="sdxl-base", lora_loader="StableDiffusionXLLoraLoaderMixin",
    matches_keys=lambda keys: is_original_sd(keys) and has_prefix(keys, "conditioner.embedders.1.model."),
    matches_folder=lambda index, folder: (has_component(index, "unet") and has_component(index, "text_encoder")
                                          and has_component(index, "text_encoder_2")),
    detection_order=20,
)

SDXL_REFINER = Family(
    name="sdxl_refiner", label="SDXL refiner", latent_channels=4, denoiser=UNET, text=(CLIP_G,),
    encode=CLIP_ENCODE, sampler=UNET_SAMPLER, clip_layer="penultimate", micro_conditioning=True,
    pipeline="StableDiffusionXLImg2ImgPipeline", config="sdxl-refiner",
    lora_loader="StableDiffusionXLLoraLoaderMixin",
    matches_keys=lambda keys: is_original_sd(keys) and has_prefix(keys, "conditioner.embedders.0.model."),
    matches_folder=lambda index, folder: (has_component(index, "unet") and has_component(index, "text_encoder_2")
                                          and not has_component(index, "text_encoder")),
    detection_order=30,
)
