"""ComfyUI's loader and model-patching class types, over Loom's loaders.

Model names are taken as workflows write them (with or without the file extension, with
sub-folders written with / or \\: Loom's models folders resolve both). A name that resolves
nowhere is a problem naming the node, the input and the models that are available, reported
before anything runs.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.node import node
from engine.settings import Settings
from engine.types import model_name

from .._common import fingerprint_model, refuse_pickle, resolve_model
from ..control_types import ControlNet, UpscaleModel
from ..types import DiffusionModel, LoraSpec, TextEncoder, Vae


def _model_fingerprint(kind: str, input_name: str):
    """The model file's digest; a name no models folder holds is a problem for this input, with
    what is available, before anything runs."""
    def fingerprint(*, settings: Settings, **literals) -> str:
        resolve_model(settings, kind, literals[input_name], input_name)
        return fingerprint_model(settings, kind, literals[input_name])
    return fingerprint


class CheckpointOutputs(NamedTuple):
    MODEL: DiffusionModel
    CLIP: TextEncoder
    VAE: Vae


@node("CheckpointLoaderSimple", category="comfy/loaders",
      fingerprint=_model_fingerprint("checkpoints", "ckpt_name"))
def checkpoint_loader_simple(ctx: Context, ckpt_name: model_name("checkpoints")) -> CheckpointOutputs:
    """Load a checkpoint (Loom's load_checkpoint): MODEL, CLIP, VAE."""
    from ..loaders import load_checkpoint_handles

    return CheckpointOutputs(*load_checkpoint_handles(ctx, ckpt_name))


@node("CheckpointLoader", category="comfy/loaders",
      fingerprint=_model_fingerprint("checkpoints", "ckpt_name"))
def checkpoint_loader(ctx: Context, config_name: str, ckpt_name: model_name("checkpoints")) -> CheckpointOutputs:
    """Load a checkpoint. `config_name` (an original-LDM yaml) is not needed: Loom recognises
    the architecture from the weights and uses the configs it ships."""
    return checkpoint_loader_simple(ctx, ckpt_name)


@node("VAELoader", category="comfy/loaders", fingerprint=_model_fingerprint("vae", "vae_name"))
def vae_loader(ctx: Context, vae_name: model_name("vae")) -> Vae:
    """Load a VAE from models/vae (Loom's load_vae): a diffusers folder, or a single file whose
    config follows from its latent channels (FLUX's ae; SD's, or SDXL's when the name says xl)."""
    from ..component_loaders import load_vae

    try:
        return load_vae(ctx, vae_name)
    except NodeInputError as exc:   # name the input as this class type calls it
        raise NodeInputError("vae_name" if exc.input == "name" else exc.input, exc.message) from None


class LoraOutputs(NamedTuple):
    MODEL: DiffusionModel
    CLIP: TextEncoder


Strength = Annotated[float, Field(ge=-100, le=100)]


@node("LoraLoader", category="comfy/loaders", fingerprint=_model_fingerprint("loras", "lora_name"))
def lora_loader(ctx: Context, model: DiffusionModel, clip: TextEncoder, lora_name: model_name("loras"),
                strength_model: Strength = 1.0, strength_clip: Strength = 1.0) -> LoraOutputs:
    """Apply a LoRA to the model and the text encoder (Loom's load_lora)."""
    from ..loaders import load_lora

    return LoraOutputs(*load_lora(ctx, model, clip, lora_name, strength_model, strength_clip))


@node("LoraLoaderModelOnly", category="comfy/loaders", output="MODEL",
      fingerprint=_model_fingerprint("loras", "lora_name"))
def lora_loader_model_only(ctx: Context, model: DiffusionModel, lora_name: model_name("loras"),
                           strength_model: Strength = 1.0) -> DiffusionModel:
    """Apply a LoRA to the model only."""
    from ..lora import check_lora
    from engine.models import file_digest

    path = resolve_model(ctx, "loras", lora_name, "lora_name")
    refuse_pickle(ctx.settings, path, "lora_name")
    spec = LoraSpec(name=lora_name, path=str(path), digest=file_digest(path), strength_model=strength_model,
                    strength_clip=0.0)
    check_lora(ctx, spec)
    return model.with_patch(loras=[spec])


@node("CLIPSetLastLayer", category="comfy/conditioning", output="CLIP")
def clip_set_last_layer(clip: TextEncoder,
                        stop_at_clip_layer: Annotated[int, Field(ge=-24, le=-1)] = -1) -> TextEncoder:
    """Take the prompt from an earlier layer: -1 is the last (Loom's clip_skip 0), -2 the one
    before (clip_skip 1)."""
    return clip.with_patch(clip_skip=-stop_at_clip_layer - 1)


@node("ModelSamplingDiscrete", category="comfy/loaders", output="MODEL")
def model_sampling_discrete(model: DiffusionModel,
                            sampling: Literal["eps", "v_prediction", "lcm", "x0"] = "eps",
                            zsnr: bool = False) -> DiffusionModel:
    """Say what the model predicts (eps, v_prediction, x0; lcm: eps, for LCM-distilled models
    sampled with the lcm sampler) and whether its schedule is rescaled to zero terminal SNR."""
    prediction = {"eps": "epsilon", "v_prediction": "v_prediction", "lcm": "epsilon", "x0": "sample"}[sampling]
    config = {**model.scheduler_config, "prediction_type": prediction}
    if zsnr:
        config["rescale_betas_zero_snr"] = True
    return dataclasses.replace(model, scheduler_config=config,
                               identity=f"{model.identity}|{sampling}|zsnr={zsnr}")


@node("ControlNetLoader", category="comfy/loaders", output="CONTROL_NET",
      fingerprint=_model_fingerprint("controlnet", "control_net_name"))
def controlnet_loader(ctx: Context, control_net_name: model_name("controlnet")) -> ControlNet:
    """Load a ControlNet (Loom's load_controlnet)."""
    from ..control import load_controlnet

    return load_controlnet(ctx, control_net_name)


@node("UpscaleModelLoader", category="comfy/loaders", output="UPSCALE_MODEL",
      fingerprint=_model_fingerprint("upscale_models", "model_name"))
def upscale_model_loader(ctx: Context, model_name: model_name("upscale_models")) -> UpscaleModel:
    """Load an image upscaler (Loom's load_upscale_model)."""
    from ..upscale import load_upscale_model

    return load_upscale_model(ctx, model_name)
