"""ComfyUI's class types for FLUX and SD3.5 workflows, over Loom's family nodes: split loaders,
FLUX's two-prompt encoder and guidance, the shift patches and the 16-channel empty latent."""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.node import node
from engine.settings import Settings
from engine.types import model_name

from ..types import Conditioning, DiffusionModel, Latent, TextEncoder

Size = Annotated[int, Field(ge=16, le=16384, multiple_of=16)]


def _denoiser_fingerprint(*, settings: Settings, unet_name: str, **_) -> str:
    from ..component_loaders import DENOISER_KINDS, _fingerprint

    return _fingerprint(DENOISER_KINDS, settings, unet_name)


@node("UNETLoader", category="comfy/loaders", output="MODEL", fingerprint=_denoiser_fingerprint)
def unet_loader(ctx: Context, unet_name: model_name("diffusion_models"),
                weight_dtype: Literal["default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"] = "default"
                ) -> DiffusionModel:
    """Load a FLUX or SD3.5 transformer file (Loom's load_diffusion_model). Weights are computed
    in the run's dtype; fp8 files are upcast as they load, so weight_dtype changes nothing."""
    from ..component_loaders import load_denoiser

    return load_denoiser(ctx, unet_name)


def _roles(ctx: Context, names: list[str]) -> dict[str, str]:
    """Which text encoder each file is, from its weights: T5 has encoder.block.*, CLIP-G is 1280 wide."""
    from ..component_loaders import TEXT_KINDS, _resolve, tensor_keys

    roles = {}
    for index, name in enumerate(names, start=1):
        path = _resolve(ctx, TEXT_KINDS, name, f"clip_name{index}")
        if path.is_dir():
            import json

            config = json.loads((path / "config.json").read_text())
            t5, width = config.get("model_type") == "t5", config.get("hidden_size")
        else:
            keys = tensor_keys(path, ctx.settings)
            t5 = any(".block." in k for k in keys)
            width = next((v[-1] for k, v in keys.items() if k.endswith("final_layer_norm.weight")), None)
        roles["t5xxl" if t5 else "clip_g" if width == 1280 else "clip_l"] = name
    return roles


def _text_fingerprint(*, settings: Settings, **literals) -> str:
    from ..component_loaders import TEXT_KINDS, _fingerprint

    return "|".join(_fingerprint(TEXT_KINDS, settings, v) for k, v in sorted(literals.items()) if k.startswith("clip_name"))


@node("DualCLIPLoader", category="comfy/loaders", output="CLIP", fingerprint=_text_fingerprint)
def dual_clip_loader(ctx: Context, clip_name1: model_name("text_encoders"), clip_name2: model_name("text_encoders"),
                     type: Literal["flux", "sd3"] = "flux") -> TextEncoder:
    """Load two text encoders (FLUX: clip_l + t5xxl; SD3: clip_l + clip_g) in either order."""
    from ..component_loaders import load_text_encoders

    return load_text_encoders(ctx, family=type, **_roles(ctx, [clip_name1, clip_name2]))


@node("TripleCLIPLoader", category="comfy/loaders", output="CLIP", fingerprint=_text_fingerprint)
def triple_clip_loader(ctx: Context, clip_name1: model_name("text_encoders"), clip_name2: model_name("text_encoders"),
                       clip_name3: model_name("text_encoders")) -> TextEncoder:
    """Load SD3.5's three text encoders: clip_l, clip_g and t5xxl."""
    from ..component_loaders import load_text_encoders

    return load_text_encoders(ctx, family="sd3", **_roles(ctx, [clip_name1, clip_name2, clip_name3]))


@node("CLIPTextEncodeFlux", category="comfy/conditioning", output="CONDITIONING")
def clip_text_encode_flux(ctx: Context, clip: TextEncoder, clip_l: str, t5xxl: str,
                          guidance: Annotated[float, Field(ge=0, le=100)] = 3.5) -> Conditioning:
    """FLUX conditioning with separate prompts for CLIP-L and T5-XXL, and the distilled guidance."""
    from ..families.flux import encode

    if clip.family != "flux":
        raise NodeInputError("clip", f"CLIPTextEncodeFlux needs FLUX text encoders, got {clip.family}")
    return encode(ctx, clip, clip_l, t5_text=t5xxl).replace(guidance=guidance)


@node("FluxGuidance", category="comfy/conditioning", output="CONDITIONING")
def flux_guidance(conditioning: Conditioning, guidance: Annotated[float, Field(ge=0, le=100)] = 3.5) -> Conditioning:
    """Set FLUX dev's distilled guidance on a conditioning."""
    return conditioning.replace(guidance=guidance)


def _shifted(model: DiffusionModel, **config) -> DiffusionModel:
    from ..families import family

    if family(model.family).predict is None:
        raise NodeInputError("model", f"{family(model.family).label} is not a flow-matching model")
    return dataclasses.replace(model, scheduler_config={**model.scheduler_config, **config})


@node("ModelSamplingSD3", category="comfy/advanced", output="MODEL")
def model_sampling_sd3(model: DiffusionModel, shift: Annotated[float, Field(ge=0, le=100)] = 3.0) -> DiffusionModel:
    """A fixed timestep shift for a flow-matching model (SD3's is 3)."""
    return _shifted(model, shift=shift, use_dynamic_shifting=False)


@node("ModelSamplingFlux", category="comfy/advanced", output="MODEL")
def model_sampling_flux(model: DiffusionModel, max_shift: Annotated[float, Field(ge=0, le=100)] = 1.15,
                        base_shift: Annotated[float, Field(ge=0, le=100)] = 0.5,
                        width: Size = 1024, height: Size = 1024) -> DiffusionModel:
    """FLUX's resolution-dependent shift between base_shift (256 tokens) and max_shift (4096);
    the sampler computes it from the latent it samples (width/height are that image's size)."""
    return _shifted(model, use_dynamic_shifting=True, base_shift=base_shift, max_shift=max_shift,
                    base_image_seq_len=256, max_image_seq_len=4096)


@node("EmptySD3LatentImage", category="comfy/latent", output="LATENT")
def empty_sd3_latent_image(width: Size = 1024, height: Size = 1024,
                           batch_size: Annotated[int, Field(ge=1, le=64)] = 1) -> Latent:
    """Zero 16-channel latents at 1/8 of the image size (SD3.5 and FLUX)."""
    import torch

    return Latent(torch.zeros(batch_size, 16, height // 8, width // 8))
