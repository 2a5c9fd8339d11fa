"""ComfyUI's text-encoding, conditioning and ControlNet-apply class types, over Loom's nodes."""
from __future__ import annotations

from typing import Annotated, NamedTuple

from pydantic import Field

from engine.context import Context
from engine.node import node

from ..control_types import ControlNet
from ..types import Conditioning, Image, TextEncoder, Vae
from .ports import Control, with_control


@node("CLIPTextEncode", category="comfy/conditioning", output="CONDITIONING")
def clip_text_encode(ctx: Context, text: str, clip: TextEncoder) -> Conditioning:
    """Encode a prompt (Loom's encode_text: weights, long prompts, both SDXL encoders)."""
    from ..text import encode_text

    return encode_text(ctx, clip, text)


@node("ConditioningCombine", category="comfy/conditioning", output="CONDITIONING")
def conditioning_combine(conditioning_1: Conditioning, conditioning_2: Conditioning) -> Conditioning:
    """Use both prompts: their noise predictions are averaged."""
    from ..text import conditioning_combine as combine

    return combine(conditioning_1, conditioning_2)


@node("ConditioningAverage", category="comfy/conditioning", output="CONDITIONING")
def conditioning_average(conditioning_to: Conditioning, conditioning_from: Conditioning,
                         conditioning_to_strength: Annotated[float, Field(ge=0, le=1)] = 1.0) -> Conditioning:
    """to * strength + from * (1 - strength)."""
    from ..text import conditioning_average as average

    return average(conditioning_to, conditioning_from, conditioning_to_strength)


@node("ConditioningConcat", category="comfy/conditioning", output="CONDITIONING")
def conditioning_concat(conditioning_to: Conditioning, conditioning_from: Conditioning) -> Conditioning:
    """Append the second prompt's tokens to the first's."""
    from ..text import conditioning_concat as concat

    return concat(conditioning_to, conditioning_from)


@node("ConditioningZeroOut", category="comfy/conditioning", output="CONDITIONING")
def conditioning_zero_out(conditioning: Conditioning) -> Conditioning:
    """The same conditioning with every embedding (and SDXL's pooled one) set to zero."""
    from ..sampling import zero_conditioning

    return zero_conditioning(conditioning)


Strength = Annotated[float, Field(ge=0, le=10)]
Percent = Annotated[float, Field(ge=0, le=1)]


@node("ControlNetApply", category="comfy/conditioning", output="CONDITIONING")
def controlnet_apply(conditioning: Conditioning, control_net: ControlNet, image: Image,
                     strength: Strength = 1.0) -> Conditioning:
    """Attach a ControlNet guided by `image` to this conditioning; the sampler patches the model
    with it (Loom's apply_controlnet) for the pass of this conditioning only."""
    if strength == 0:
        return conditioning
    return with_control(conditioning, Control(control_net, image, strength, 0.0, 1.0))


class ControlNetAdvancedOutputs(NamedTuple):
    positive: Conditioning
    negative: Conditioning


@node("ControlNetApplyAdvanced", category="comfy/conditioning")
def controlnet_apply_advanced(positive: Conditioning, negative: Conditioning, control_net: ControlNet,
                              image: Image, strength: Strength = 1.0, start_percent: Percent = 0.0,
                              end_percent: Percent = 1.0, vae: Vae | None = None) -> ControlNetAdvancedOutputs:
    """Attach a ControlNet to both conditionings, active from start_percent to end_percent of
    the schedule. `vae` encodes the hint for ControlNets that take latents (SD3.5, FLUX)."""
    if strength == 0:
        return ControlNetAdvancedOutputs(positive, negative)
    control = Control(control_net, image, strength, start_percent, end_percent, vae)
    return ControlNetAdvancedOutputs(with_control(positive, control), with_control(negative, control))
