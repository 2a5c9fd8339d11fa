"""What ComfyUI's sockets carry that Loom's port types do not: an empty latent still in pixels,
the scale of a latent, and ControlNets attached to conditioning.

Both are subclasses of Loom's own types, so compat nodes and Loom nodes link freely.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from ..types import Conditioning, DiffusionModel, Latent


@dataclass
class ComfyLatent(Latent):
    """A latent with the pixels-per-latent-pixel of the model that made it (ComfyUI sizes
    latents in pixels). `pending`: EmptyLatentImage's zeros, written for ComfyUI's 4 channels
    at 1/8 before any model is known; the sampler or VAE that takes it reshapes it for itself."""

    scale: int = 8
    pending: bool = False

    @property
    def pixel_size(self) -> tuple[int, int]:
        """(height, width) in pixels."""
        h, w = self.samples.shape[-2:]
        return h * self.scale, w * self.scale


def comfy_latent(latent: Latent, scale: int) -> ComfyLatent:
    values = {f.name: getattr(latent, f.name) for f in dataclasses.fields(Latent)}
    return ComfyLatent(**values, scale=scale)


def latent_scale(latent: Latent) -> int:
    return latent.scale if isinstance(latent, ComfyLatent) else 8


def shaped_for(latent: Latent, scale: int, channels: int) -> Latent:
    """An empty latent given the shape a model with this scale and channel count needs."""
    if not (isinstance(latent, ComfyLatent) and latent.pending):
        return latent
    import torch

    h, w = latent.pixel_size
    return comfy_latent(Latent(torch.zeros(latent.batch, channels, h // scale, w // scale),
                               latent.batch_index), scale)


@dataclass
class Control:
    """One ControlNet applied to conditioning (ControlNetApply / ControlNetApplyAdvanced)."""

    controlnet: Any
    hint: Any            # an Image
    strength: float
    start: float
    end: float
    vae: Any = None      # encodes the hint for SD3 / FLUX ControlNets


@dataclass
class ComfyConditioning(Conditioning):
    """Conditioning with the ControlNets ComfyUI attaches to it; the sampler patches the model
    with them (Loom attaches ControlNets to the model)."""

    controls: list[Control] = field(default_factory=list)


def with_control(cond: Conditioning, control: Control) -> ComfyConditioning:
    values = {f.name: getattr(cond, f.name) for f in dataclasses.fields(Conditioning)}
    return ComfyConditioning(**values, controls=[*controls_of(cond), control])


def controls_of(cond: Conditioning | None) -> list[Control]:
    if cond is None:
        return []
    found = list(getattr(cond, "controls", []))
    for other in cond.combined:
        found.extend(c for c in getattr(other, "controls", []) if all(c is not f for f in found))
    return found


def model_with_controls(model: DiffusionModel, positive: Conditioning | None,
                        negative: Conditioning | None) -> DiffusionModel:
    """The model patched with every ControlNet attached to the conditionings, each once, guiding
    the passes of the conditionings it is attached to (ControlNetApply on the positive prompt
    guides the positive pass only, as in ComfyUI; ControlNetApplyAdvanced guides both)."""
    from ..control import apply_controlnet

    on_positive, on_negative = controls_of(positive), controls_of(negative)
    seen: list[Control] = []
    for control in [*on_positive, *on_negative]:
        if any(control is s for s in seen):
            continue
        seen.append(control)
        model = apply_controlnet(model, control.controlnet, control.hint, control.strength,
                                 control.start, control.end, vae=control.vae)
        guides_positive = any(control is c for c in on_positive)
        guides_negative = any(control is c for c in on_negative)
        if not (guides_positive and guides_negative):
            model = dataclasses.replace(model, hooks=[*model.hooks[:-1],
                                                      OnePass(model.hooks[-1], positive=guides_positive)])
    return model


class OnePass:
    """A ControlNet hook limited to the positive or the negative part of the guidance batch
    ([negatives..., positives...], as the samplers and the ControlNet hook lay it out; a
    flow-matching sampler says where the negatives end)."""

    def __init__(self, hook, positive: bool):
        self.hook = hook
        self.positive = positive

    def __call__(self, model: DiffusionModel, step) -> dict:
        if not step.cfg_batched:
            return self.hook(model, step) if self.positive else {}
        extra = self.hook(model, step)
        if not extra:
            return extra
        negatives = getattr(step, "negative_rows", step.sample.shape[0] // 2)
        other = slice(0, negatives) if self.positive else slice(negatives, None)

        def only_this_pass(value):
            if isinstance(value, (list, tuple)):
                return [only_this_pass(v) for v in value]
            if not hasattr(value, "clone"):      # flags and absent residuals pass as they are
                return value
            t = value.clone()
            t[other] = 0
            return t
        return {key: only_this_pass(value) for key, value in extra.items()}


def call_node(fn, ctx, **inputs):
    """Call a Loom node function with its inputs by name, handing it the context when it takes one."""
    return fn(ctx, **inputs) if fn.spec.wants_ctx else fn(**inputs)
