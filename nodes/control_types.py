"""Port types of the control, adapter, upscale and quality nodes.

Model handles (ControlNet, IPAdapter, UpscaleModel, ClipModel) wrap live torch modules and
are never persisted; their loader nodes re-create them from fingerprinted files. Values
(ControlHint, ImageEmbeds, QualityReport) are dataclasses / pydantic models of tensors,
numbers and strings, so the engine's disk cache can keep them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from .types import Image, _PortType, float32

if TYPE_CHECKING:
    import torch

__all__ = ["ControlNet", "ControlHint", "IPAdapter", "ImageEmbeds", "UpscaleModel", "ClipModel",
           "QualityReport", "WatermarkReport"]


@dataclass
class ControlHint(Image):
    """An image that already is a ControlNet hint (edges, depth, pose ...): preprocessors
    return it and pass it through unchanged when they receive one. `kind` says which
    preprocessor made it."""

    kind: str = "hint"


@dataclass(eq=False)
class ControlNet(_PortType):
    """A loaded diffusers ControlNet; `identity` is its file digest + device + dtype. `family` names
    the model family whose own ControlNet architecture it is (sd3: SD3ControlNetModel, flux:
    FluxControlNetModel); None for a UNet ControlNetModel (SD 1.x, 2.x, SDXL)."""

    model: Any
    identity: str
    device: str = "cpu"
    dtype: torch.dtype = field(default_factory=float32)
    family: str | None = None


@dataclass(eq=False)
class IPAdapter(_PortType):
    """IP-Adapter weights and the CLIP vision encoder that feeds them.

    projection       image projection module (ImageProjection, Resampler for "plus", MLP for
                     "full face"), as diffusers builds it from the file's `image_proj` weights
    layers           per cross-attention layer, in the UNet's attn_processors order:
                     (to_k_ip weight, to_v_ip weight)
    hidden_states    True when the projection takes the encoder's penultimate hidden states
                     (plus / face variants), False for the pooled image embedding
    """

    projection: Any
    layers: list[tuple[torch.Tensor, torch.Tensor]]
    encoder: Any
    processor: Any
    hidden_states: bool
    variant: str
    identity: str
    device: str = "cpu"
    dtype: torch.dtype = field(default_factory=float32)


@dataclass
class ImageEmbeds(_PortType):
    """CLIP vision features of the reference image(s) of one IP-Adapter.

    embeds     [N, E] pooled embeddings, or [N, S, E] hidden states (plus/face variants)
    negative   the same for the unconditional branch (zeros, or a black image's hidden states)
    adapter    identity of the IP-Adapter they were made for (checked when applied)
    """

    embeds: torch.Tensor
    negative: torch.Tensor
    adapter: str = ""


@dataclass(eq=False)
class UpscaleModel(_PortType):
    """A spandrel ImageModelDescriptor (ESRGAN, RealESRGAN compact, SwinIR, ...)."""

    descriptor: Any
    scale: int
    architecture: str
    identity: str


@dataclass(eq=False)
class ClipModel(_PortType):
    """A CLIP model (text + vision with projections) and its processor, for CLIP scores."""

    model: Any
    tokenizer: Any
    identity: str


class QualityReport(BaseModel):
    """What the quality check measured, and whether the image passed its thresholds.

    `metrics` holds, per image in the batch: sharpness (variance of the Laplacian of the
    luminance, scaled to a 512 px image), brightness (mean luminance 0..1), clipped (fraction
    of pixels at 0 or 1 in every channel), contrast (luminance standard deviation),
    colourfulness (Hasler and Suesstrunk, 0..~1), clip_score (cosine x 100, when a CLIP model
    was given). `reasons` says, in words, every threshold an image missed.
    """

    passed: bool
    reasons: list[str] = Field(default_factory=list)
    metrics: list[dict[str, float]] = Field(default_factory=list)

    def __bool__(self) -> bool:  # a report can stand where a bool check is expected
        return self.passed


class WatermarkReport(BaseModel):
    """What watermark detection found: the payload, per-bit confidence and a verdict."""

    found: bool
    bits: list[int]
    text: str = ""
    confidence: float = 0.0
    expected_bit_errors: int | None = None
    details: dict[str, Any] = Field(default_factory=dict)
