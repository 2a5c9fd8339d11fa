"""VAE nodes: pixels to latents and back, with tiling / slicing for memory, and inpaint encoding.

Latents leave `vae_encode` already multiplied by the VAE's scaling factor (and shifted where
the VAE has a shift), as the UNet sees them; `vae_decode` undoes that. Encoding uses the
distribution's mode, so it is deterministic and needs no seed. Tiling and slicing are
switched on by the settings options vae_tiling / vae_slicing or by the node's own inputs.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.node import node

from ._common import no_grad, on_device, option
from .latent import mask_to_latent
from .types import Image, Latent, Mask, Vae

if TYPE_CHECKING:
    import torch

_lock = threading.RLock()


@contextmanager
def _vae_mode(ctx: Context, vae: Vae, tiled: bool, sliced: bool):
    """The shared VAE with tiling/slicing set for this use only."""
    module = vae.vae
    tiled = tiled or bool(option(ctx.settings, "vae_tiling"))
    sliced = sliced or bool(option(ctx.settings, "vae_slicing"))
    with _lock, on_device(ctx, module):
        module.enable_tiling() if tiled else module.disable_tiling()
        module.enable_slicing() if sliced else module.disable_slicing()
        try:
            yield module
        finally:
            module.disable_tiling()
            module.disable_slicing()


def _check_size(vae: Vae, image: Image, input_name: str = "image") -> None:
    f = vae.scale_factor
    if image.height % f or image.width % f:
        raise NodeInputError(input_name, f"image size {image.width}x{image.height} is not a multiple "
                                         f"of the VAE's factor {f}")


@no_grad
def encode_pixels(ctx: Context, vae: Vae, pixels_nchw: torch.Tensor, tiled=False, sliced=False) -> torch.Tensor:
    with _vae_mode(ctx, vae, tiled, sliced) as module:
        x = pixels_nchw.to(device=vae.device, dtype=module.dtype)
        latents = module.encode(x).latent_dist.mode()
    shift = vae.shift_factor or 0.0
    return ((latents - shift) * vae.scaling_factor).float().cpu()


@no_grad
def decode_latents(ctx: Context, vae: Vae, latents: torch.Tensor, tiled=False, sliced=False) -> torch.Tensor:
    """[B, 3, H, W] in -1..1 (float32, CPU) from UNet-space latents."""
    with _vae_mode(ctx, vae, tiled, sliced) as module:
        z = latents.to(device=vae.device, dtype=module.dtype) / vae.scaling_factor + (vae.shift_factor or 0.0)
        return module.decode(z).sample.float().cpu()


@node("vae_encode", category="latent", version=1)
def vae_encode(ctx: Context, vae: Vae, image: Image, tiled: bool = False, sliced: bool = False) -> Latent:
    """Encode images to latents (for img2img: then sample with denoise < 1)."""
    _check_size(vae, image)
    return Latent(encode_pixels(ctx, vae, image.to_nchw(), tiled, sliced))


@node("vae_decode", category="latent", version=1)
def vae_decode(ctx: Context, vae: Vae, latent: Latent, tiled: bool = False, sliced: bool = False) -> Image:
    """Decode latents to images ([B, H, W, 3] in 0..1)."""
    return Image.from_nchw(decode_latents(ctx, vae, latent.samples, tiled, sliced))


@node("vae_encode_inpaint", category="latent", version=1)
def vae_encode_inpaint(ctx: Context, vae: Vae, image: Image, mask: Mask,
                       grow_mask: Annotated[int, Field(ge=0, le=256)] = 0) -> Latent:
    """Encode an image for inpainting: the latent carries a noise mask (1 = regenerate) so an
    ordinary UNet repaints only the hole, and the latents of the image with the hole blanked,
    which a 9-channel inpainting UNet takes beside the mask."""
    import torch.nn.functional as F
    _check_size(vae, image)
    m = mask.mask.float()
    if m.ndim == 2:
        m = m[None]
    if m.shape[-2:] != (image.height, image.width):
        raise NodeInputError("mask", f"mask is {m.shape[-1]}x{m.shape[-2]}, image {image.width}x{image.height}")
    if grow_mask:
        m = F.max_pool2d(m[:, None], 2 * grow_mask + 1, stride=1, padding=grow_mask)[:, 0]
    pixels = image.to_nchw()
    keep = (m < 0.5).float()[:, None]
    if keep.shape[0] != pixels.shape[0]:
        keep = keep.expand(pixels.shape[0], -1, -1, -1)
    latents = encode_pixels(ctx, vae, pixels)
    masked = encode_pixels(ctx, vae, pixels * keep)  # hole set to 0 (mid grey), as diffusers does
    return Latent(latents, noise_mask=mask_to_latent(m, latents), masked_image=masked)
