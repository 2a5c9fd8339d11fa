"""Model families: what differs between SD 1.x, 2.x, SDXL, SD3 and FLUX, declared once per family.

A family is one `Family` object in its own module here (sd1, sd2, sdxl, sd3, flux). It says
how the family's files are recognised (single-file keys, a diffusers folder's
model_index.json), which components a folder holds (the denoiser's class, the text encoder
slots), its latent layout (channels, packing), how its text encoders form conditioning,
its denoising loop, its guidance style and its default scheduler. Nodes ask the family of
the handle they hold (`family(model.family)`); adding a family is a new module here plus
its configs and tests.

Functions are named as "module:attribute" strings and imported when used, so this package
loads without torch, diffusers or transformers (the node catalogue stays fast).
"""
from __future__ import annotations

import importlib
import json
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

__all__ = ["Family", "TextSlot", "ControlNetSupport", "family", "families", "detect_keys", "detect_folder", "FamilyError"]


class FamilyError(ValueError):
    """A file or folder no registered family recognises."""


@dataclass(frozen=True)
class TextSlot:
    """One text encoder of a family: the diffusers subfolders and classes it loads from, and
    the name it has in the ComfyUI layout and in error messages (clip_l, clip_g, t5xxl)."""

    role: str
    encoder: str = "text_encoder"
    tokenizer: str = "tokenizer"
    encoder_class: str = "CLIPTextModel"
    tokenizer_class: str = "CLIPTokenizer"


@dataclass(frozen=True)
class ControlNetSupport:
    """A family's own ControlNet architecture (SD3's, FLUX's), as diffusers implements it.

    model_class    the diffusers class; also the `_class_name` in the config.json of its folders
    matches_keys   single-file keys (diffusers layout) -> is this file such a ControlNet?
    hint           "module:function" (ctx, vae, controlnet, pixels [B, 3, H, W] in 0..1 at the
                   sampled size) -> the hint as the ControlNet takes it (VAE latents, or pixels)
    residuals      "module:function" (model, controlnet, hint, scale, mode, step) -> the keyword
                   arguments of the family's `predict` that carry the residuals (step: a
                   `FlowStepInfo`; mode: a union ControlNet's control type, else None)
    takes_latents  controlnet -> whether its hint goes through the VAE (then a VAE is required)
    """

    model_class: str
    matches_keys: Callable[[dict[str, tuple]], bool]
    hint: str
    residuals: str
    takes_latents: Callable[[Any], bool] = lambda controlnet: True

    def function(self, attribute: str) -> Callable:
        return _imported(getattr(self, attribute))


def _imported(reference: str) -> Callable:
    """The function a "module:function" string names, imported now."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Family:
    """Everything Loom needs to know to load, encode for, sample and decode one model family.

    name               the id carried by handles and conditionings ("sd1", "sdxl", "flux", ...)
    label              how messages name it
    latent_channels    channels of the VAE latent (4 for SD, 16 for SD3/FLUX)
    packing            side of the latent patches the denoiser reads as one token (FLUX: 2); 1 = none
    denoiser           (subfolder, diffusers class) of the denoising network in a diffusers folder
    text               the text encoder slots, in the order the family concatenates them
    clip_layer         which CLIP hidden state conditions the denoiser: "final" or "penultimate"
    micro_conditioning whether conditioning carries SDXL's size / crop / aesthetic micro-conditioning
    guidance           "cfg" (classifier-free guidance), "distilled" (a guidance value fed to the
                       denoiser, no negative pass) or "none"
    default_scheduler  what graphs for this family name by default
    default_guidance   the distilled guidance value used when a graph gives none
    predict            "module:function" of a flow family's denoiser call: (model, latents [B, C, h, w],
                       timestep, embeds, pooled, guidance, **residuals) -> velocity [B, C, h, w]
    controlnet         the family's own ControlNet architecture; None where its ControlNets are
                       the UNet kind (SD 1.x, 2.x, SDXL: nodes/control.py) or it has none
    linear_sigmas      whether the family's pipeline hands the scheduler linear sigmas 1 .. 1/steps
    encode             "module:function" (ctx, text_encoder, text) -> Conditioning
    sampler            "module:function": the denoising loop (same arguments as nodes.sampling.run_sampler)
    pipeline           diffusers pipeline class for single-file loading and equivalence tests
    inpaint_pipeline   the same for 9-channel inpainting checkpoints, if the family has them
    config             shipped config folder (nodes/configs/<config>) for single files
    config_for_keys    picks among several shipped configs from a single file's keys (SD3.5 Large/Medium)
    detection_order    lower is tried first (more specific key layouts before broader ones)
    matches_keys       single-file keys -> does this family own the file?
    matches_folder     (model_index.json, folder) -> does this family own the folder?
    """

    name: str
    label: str
    latent_channels: int
    denoiser: tuple[str, str]
    text: tuple[TextSlot, ...]
    encode: str
    sampler: str
    pipeline: str
    matches_keys: Callable[[dict[str, tuple]], bool]
    matches_folder: Callable[[dict, Path], bool]
    packing: int = 1
    clip_layer: Literal["final", "penultimate"] = "final"
    micro_conditioning: bool = False
    guidance: Literal["cfg", "distilled", "none"] = "cfg"
    default_scheduler: str = "dpmpp_2m"
    default_guidance: float | None = None
    predict: str | None = None
    linear_sigmas: bool = False
    inpaint_pipeline: str | None = None
    config: str | None = None
    config_for_keys: Callable[[dict[str, tuple]], str] | None = None
    lora_loader: str = "StableDiffusionLoraLoaderMixin"
    controlnet: ControlNetSupport | None = None
    detection_order: int = 100
    extra: dict[str, Any] = field(default_factory=dict)

    def function(self, attribute: str) -> Callable:
        """The function one of the "module:function" fields names, imported now."""
        return _imported(getattr(self, attribute))

    def pipeline_class(self, inpainting: bool = False):
        import diffusers

        name = self.inpaint_pipeline if inpainting else self.pipeline
        if name is None:
            raise FamilyError(f"{self.label} has no inpainting checkpoints")
        return getattr(diffusers, name)

    def config_name(self, inpainting: bool = False, keys: dict[str, tuple] | None = None) -> str | None:
        """The shipped config folder for a single file of this family."""
        if self.config_for_keys is not None and keys is not None:
            return self.config_for_keys(keys)
        if self.config is None:
            return None
        return self.config + ("-inpainting" if inpainting else "")

    @property
    def roles(self) -> tuple[str, ...]:
        return tuple(slot.role for slot in self.text)


_REGISTRY: dict[str, Family] = {}


def _load() -> dict[str, Family]:
    if not _REGISTRY:
        for info in pkgutil.iter_modules(__path__):
            if info.name.startswith("_"):
                continue
            module = importlib.import_module(f"{__name__}.{info.name}")
            for value in vars(module).values():
                if isinstance(value, Family):
                    _REGISTRY[value.name] = value
    return _REGISTRY


def families() -> list[Family]:
    """Every registered family, in detection order."""
    return sorted(_load().values(), key=lambda f: (f.detection_order, f.name))


def family(name: str) -> Family:
    try:
        return _load()[name]
    except KeyError:
        raise FamilyError(f"unknown model family {name!r} (known: {', '.join(sorted(_load()))})") from None


def has_prefix(keys: dict[str, tuple], *prefixes: str) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def detect_keys(keys: dict[str, tuple]) -> Family:
    """The family whose single-file key layout these keys are (FamilyError if none)."""
    for fam in families():
        if fam.matches_keys(keys):
            return fam
    raise FamilyError("unknown checkpoint family: expected " + ", ".join(f.label for f in families())
                      + " weights in one of their released key layouts (e.g. model.diffusion_model.* "
                        "with cond_stage_model.* or conditioner.embedders.*, joint_blocks.*, double_blocks.*)")


def detect_folder(folder: Path) -> Family:
    """The family of a diffusers folder, from its model_index.json (FamilyError if none)."""
    index = json.loads((folder / "model_index.json").read_text())
    for fam in families():
        if fam.matches_folder(index, folder):
            return fam
    raise FamilyError(f"{folder.name}: unknown checkpoint family (pipeline class "
                      f"{index.get('_class_name')}; known: {', '.join(f.label for f in families())})")


def has_component(index: dict, slot: str) -> bool:
    """Whether model_index.json names a component in `slot` (not [null, null])."""
    return bool((index.get(slot) or [None])[0])
