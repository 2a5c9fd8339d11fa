"""Latent nodes: empty latents sized from the VAE's own down-sampling factor, batching, masks.

The noise itself is drawn by the sampler from its seed (see `_common.seeded_noise`): item i
of a batch uses seed + batch_index[i], so a seed gives the same image alone or in a batch.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from engine.errors import NodeInputError
from engine.limits import Limit
from engine.node import node

from .types import Latent, Mask, Vae

if TYPE_CHECKING:
    import torch

Size = Annotated[int, Field(ge=8, le=8192, multiple_of=8, description="pixels, a multiple of 8")]


@node("empty_latent", category="latent", version=1)
def empty_latent(vae: Vae, width: Annotated[Size, Limit("width"), Limit("pixels")] = 512,
                 height: Annotated[Size, Limit("height"), Limit("pixels")] = 512,
                 batch: Annotated[int, Field(ge=1, le=64), Limit("batch")] = 1) -> Latent:
    """A batch of zero latents for a width x height image; the latent size and channel count
    come from the VAE (its own down-sampling factor, not a fixed 8)."""
    import torch
    f = vae.scale_factor
    for name, value in (("width", width), ("height", height)):
        if value % f:
            raise NodeInputError(name, f"{value} is not a multiple of the VAE's factor {f}")
    return Latent(torch.zeros(batch, vae.latent_channels, height // f, width // f))


@node("latent_batch", category="latent", version=1)
def latent_batch(a: Latent, b: Latent) -> Latent:
    """Concatenate two latent batches (b's seeds follow a's)."""
    import torch
    if a.samples.shape[1:] != b.samples.shape[1:]:
        raise NodeInputError("b", f"latent shape {tuple(b.samples.shape[1:])} differs from "
                                  f"{tuple(a.samples.shape[1:])}")
    start = max(a.offsets()) + 1
    return Latent(torch.cat([a.samples, b.samples]), a.offsets() + [start + o for o in b.offsets()])


@node("latent_from_batch", category="latent", version=1)
def latent_from_batch(latent: Latent, index: Annotated[int, Field(ge=0, le=63)] = 0,
                      length: Annotated[int, Field(ge=1, le=64)] = 1) -> Latent:
    """Items index..index+length-1 of a batch, keeping their seed offsets (so a picked item
    re-samples to the same image it had in the batch)."""
    if index >= latent.batch:
        raise NodeInputError("index", f"batch has {latent.batch} items")
    sl = slice(index, index + length)
    pick = lambda t: None if t is None else t[sl]  # noqa: E731
    return Latent(latent.samples[sl], latent.offsets()[sl], pick(latent.noise_mask),
                  pick(latent.masked_image))


def mask_to_latent(mask: torch.Tensor, latent: torch.Tensor) -> torch.Tensor:
    """[B, H, W] pixel mask -> [B, 1, h, w] at latent size (bilinear), batch matched."""
    import torch.nn.functional as F
    m = mask.float()
    if m.ndim == 2:
        m = m[None]
    m = F.interpolate(m[:, None], size=latent.shape[-2:], mode="bilinear", align_corners=False)
    if m.shape[0] != latent.shape[0]:
        m = m.repeat(latent.shape[0] // m.shape[0] + 1, 1, 1, 1)[:latent.shape[0]]
    return m.clamp(0, 1)


@node("set_latent_noise_mask", category="latent", version=1)
def set_latent_noise_mask(latent: Latent, mask: Mask) -> Latent:
    """Restrict sampling to the masked area (1 = regenerate); the rest keeps the latent."""
    return latent.replace(noise_mask=mask_to_latent(mask.mask, latent.samples))


@node("upscale_latent", category="latent", version=1)
def upscale_latent(latent: Latent, scale: Annotated[float, Field(gt=0, le=8), Limit("scale")] = 1.5,
                   mode: Literal["nearest-exact", "bilinear", "bicubic", "area"] = "nearest-exact") -> Latent:
    """Resize latents (for a hires-fix pass: upscale, then sample again with denoise < 1)."""
    import torch.nn.functional as F
    h, w = (round(s * scale) for s in latent.samples.shape[-2:])
    resize = lambda t: None if t is None else F.interpolate(t, size=(h, w), mode=mode)  # noqa: E731
    return Latent(resize(latent.samples), latent.batch_index, resize(latent.noise_mask),
                  resize(latent.masked_image))
