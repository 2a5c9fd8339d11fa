"""Loom's own node types that have a ComfyUI class type doing the same job, for exporting a
Loom graph to ComfyUI's API format.

Each counterpart renames inputs and outputs; `check` refuses literal values the class type
cannot express (naming the input), and `literals` rewrites the rest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .vocabulary import SAMPLERS, SCHEDULES


class NoCounterpart(ValueError):
    def __init__(self, input: str | None, message: str):
        self.input = input
        super().__init__(message)


@dataclass(frozen=True)
class Counterpart:
    class_type: str
    inputs: dict[str, str | None]                 # linked Loom input -> ComfyUI input (None: not needed)
    outputs: dict[str, str]                       # Loom output -> ComfyUI output name
    literals: Callable[[dict], dict] = lambda values: values   # Loom literals -> ComfyUI literals
    defaults: dict[str, Any] = field(default_factory=dict)    # Loom defaults that must hold


def _require(values: dict, defaults: dict) -> None:
    for name, expected in defaults.items():
        if values.get(name, expected) != expected:
            raise NoCounterpart(name, f"{name}={values[name]!r} has no ComfyUI counterpart "
                                      f"(only {expected!r})")


_LOOM_SAMPLERS = {loom: comfy for comfy, loom in reversed(list(SAMPLERS.items()))}
_LOOM_SCHEDULES = {loom: comfy for comfy, loom in SCHEDULES.items()}


def _sample_literals(values: dict) -> dict:
    """Loom's sample as KSampler: denoise d over s steps runs int(s*d) steps of an s-step
    schedule, which is KSampler's int(s*d) steps at denoise int(s*d)/s."""
    steps, denoise = values.get("steps", 20), values.get("denoise", 1.0)
    schedule = "karras" if values.get("karras") else values.get("schedule", "default")
    if schedule not in _LOOM_SCHEDULES:
        raise NoCounterpart("schedule", f"schedule {schedule!r} (the checkpoint's own spacing) has no "
                                        f"ComfyUI counterpart; set one of {', '.join(_LOOM_SCHEDULES)}")
    scheduler = values.get("scheduler", "dpmpp_2m")
    if scheduler not in _LOOM_SAMPLERS:
        raise NoCounterpart("scheduler", f"scheduler {scheduler!r} has no ComfyUI sampler")
    run = min(int(steps * denoise), steps)
    if run == 0:
        raise NoCounterpart("denoise", f"denoise {denoise} with {steps} steps runs no step")
    comfy_denoise = run / steps
    while int(run / comfy_denoise) < steps:        # KSampler takes int(steps / denoise)
        comfy_denoise = math.nextafter(comfy_denoise, 0.0)
    return {"seed": values.get("seed", 0), "steps": run, "cfg": values.get("cfg", 7.0),
            "sampler_name": _LOOM_SAMPLERS[scheduler], "scheduler": _LOOM_SCHEDULES[schedule],
            "denoise": comfy_denoise}


COUNTERPARTS: dict[str, Counterpart] = {
    "load_checkpoint": Counterpart("CheckpointLoaderSimple", {}, {"model": "MODEL", "text_encoder": "CLIP", "vae": "VAE"},
                                   lambda v: {"ckpt_name": v["name"]}, {"config": "auto"}),
    "encode_text": Counterpart("CLIPTextEncode", {"text_encoder": "clip"}, {"conditioning": "CONDITIONING"},
                               lambda v: {"text": v["text"]}, {"clip_skip": 0}),
    "conditioning_combine": Counterpart("ConditioningCombine", {"a": "conditioning_1", "b": "conditioning_2"},
                                        {"conditioning": "CONDITIONING"}),
    # ComfyUI's empty latent needs no VAE: the sampler shapes it for its model
    "empty_latent": Counterpart("EmptyLatentImage", {"vae": None}, {"latent": "LATENT"},
                                lambda v: {"width": v.get("width", 512), "height": v.get("height", 512),
                                           "batch_size": v.get("batch", 1)}),
    "sample": Counterpart("KSampler", {"model": "model", "positive": "positive", "negative": "negative",
                                       "latent": "latent_image"}, {"latent": "LATENT"}, _sample_literals,
                          {"start_step": 0, "end_step": 10000, "add_noise": True}),
    "vae_decode": Counterpart("VAEDecode", {"vae": "vae", "latent": "samples"}, {"image": "IMAGE"},
                              lambda v: {}, {"tiled": False, "sliced": False}),
    "vae_encode": Counterpart("VAEEncode", {"vae": "vae", "image": "pixels"}, {"latent": "LATENT"},
                              lambda v: {}, {"tiled": False, "sliced": False}),
    "set_latent_noise_mask": Counterpart("SetLatentNoiseMask", {"latent": "samples", "mask": "mask"},
                                         {"latent": "LATENT"}),
    "load_image": Counterpart("LoadImage", {}, {"image": "IMAGE", "mask": "MASK"}, lambda v: {"image": v["name"]}),
    "save_image": Counterpart("SaveImage", {"images": "images"}, {"files": "files"},
                              lambda v: {"filename_prefix": v.get("prefix", "loom")}),
    "load_lora": Counterpart("LoraLoader", {"model": "model", "text_encoder": "clip"},
                             {"model": "MODEL", "text_encoder": "CLIP"},
                             lambda v: {"lora_name": v["name"], "strength_model": v.get("strength_model", 1.0),
                                        "strength_clip": v.get("strength_clip", 1.0)}),
    "load_controlnet": Counterpart("ControlNetLoader", {}, {"control_net": "CONTROL_NET"},
                                   lambda v: {"control_net_name": v["name"]}, {"config": "auto"}),
    "load_upscale_model": Counterpart("UpscaleModelLoader", {}, {"upscale_model": "UPSCALE_MODEL"},
                                      lambda v: {"model_name": v["name"]}),
    "upscale_with_model": Counterpart("ImageUpscaleWithModel", {"model": "upscale_model", "image": "image"},
                                      {"image": "IMAGE"}, lambda v: {}),
}


def comfy_literals(counterpart: Counterpart, literals: dict) -> dict:
    """The ComfyUI literals for a Loom node's literals, or NoCounterpart naming the input."""
    _require(literals, counterpart.defaults)
    return counterpart.literals(literals)
