"""ComfyUI's names and Loom's: port types, sampler and scheduler names, model-file names.

A name maps here only when Loom's counterpart does the same thing; anything else is left out
so that validation refuses it and lists what is supported.
"""
from __future__ import annotations

from typing import Literal

# ComfyUI sampler_name -> Loom scheduler (nodes.sampling.SCHEDULERS), in ComfyUI's order. The `_gpu` variants
# are the same solvers with their noise drawn on the GPU; Loom draws seeded noise on the CPU.
SAMPLERS: dict[str, str] = {
    "euler": "euler",
    "euler_ancestral": "euler_ancestral",
    "heun": "heun",
    "dpm_2": "dpm_2",
    "dpm_2_ancestral": "dpm_2_ancestral",
    "lms": "lms",
    "dpmpp_sde": "dpmpp_sde",
    "dpmpp_sde_gpu": "dpmpp_sde",
    "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m_sde",
    "dpmpp_2m_sde_gpu": "dpmpp_2m_sde",
    "dpmpp_3m_sde": "dpmpp_3m_sde",
    "dpmpp_3m_sde_gpu": "dpmpp_3m_sde",
    "ddpm": "ddpm",
    "lcm": "lcm",
    "deis": "deis",
    "ddim": "ddim",
    "uni_pc_bh2": "unipc",
}
SamplerName = Literal[tuple(SAMPLERS)]  # type: ignore[valid-type]

# ComfyUI scheduler -> Loom sigma schedule (nodes.sampling.SCHEDULE_OPTIONS).
SCHEDULES: dict[str, str] = {      # in ComfyUI's order (its first, "simple", is the default)
    "simple": "simple",
    "sgm_uniform": "sgm_uniform",
    "karras": "karras",
    "exponential": "exponential",
    "ddim_uniform": "ddim_uniform",
    "beta": "beta",
    "normal": "normal",
}
SchedulerName = Literal[tuple(SCHEDULES)]  # type: ignore[valid-type]

# Loom port class name -> ComfyUI socket type, for exporting and for /object_info.
COMFY_TYPES: dict[str, str] = {
    "DiffusionModel": "MODEL", "TextEncoder": "CLIP", "Vae": "VAE", "Conditioning": "CONDITIONING",
    "Latent": "LATENT", "Image": "IMAGE", "ControlHint": "IMAGE", "Mask": "MASK",
    "ControlNet": "CONTROL_NET", "UpscaleModel": "UPSCALE_MODEL",
}

# Class types Loom cannot run faithfully yet, with the reason given at validation.
REFUSED: dict[str, str] = {
    "ConditioningSetArea": "area conditioning is not supported by Loom's sampler yet; "
                           "remove the node or use ConditioningCombine",
}

UI_ONLY = {"Note", "MarkdownNote"}          # editor annotations: never part of a prompt
SEED_WIDGETS = {"seed", "noise_seed"}       # followed by "control after generate" in UI files

