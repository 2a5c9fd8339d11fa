"""Upscaling: spandrel models (tiled, memory-aware), the SD x4 upscaler, plain resampling,
and progressive upscaling to a target size.

Model upscaling runs in tiles with an overlap that is feathered away when the tiles are put
back together; when a tile does not fit in memory the tile size halves and the image is
tried again (down to 64 px). Upscale models live in models/upscale_models: .safetensors
always, pickles (.pth/.pt/.ckpt) only with settings.allow_pickle, read with spandrel's
restricted unpickler. (Latent upscaling for a hires-fix pass is `upscale_latent`.)
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.limits import Limit
from engine.models import file_digest
from engine.node import node

from engine.settings import Settings
from engine.types import model_name

from ._common import (fingerprint_model, no_grad, on_device, refuse_pickle, resolve_model, seeded_noise,
                      torch_dtype)
from .control_types import UpscaleModel
from .types import Image

if TYPE_CHECKING:
    import torch

Resample = Literal["lanczos", "bicubic", "bilinear", "nearest", "area"]
MIN_TILE = 64


def _upscale_fingerprint(name: str, settings: Settings, **_) -> str:
    return fingerprint_model(settings, "upscale_models", name)


@node("load_upscale_model", category="upscale", version=1, fingerprint=_upscale_fingerprint)
def load_upscale_model(ctx: Context, name: model_name("upscale_models")) -> UpscaleModel:
    """Load an image upscaler (ESRGAN, RealESRGAN compact, SwinIR, ... whatever spandrel
    detects) from models/upscale_models."""
    from spandrel import ImageModelDescriptor, ModelLoader

    path = resolve_model(ctx, "upscale_models", name)
    refuse_pickle(ctx.settings, path)
    if path.is_dir():
        raise NodeInputError("name", f"{path.name} is a folder; an upscale model is one file "
                                     "(the SD x4 upscaler folder goes to the sd_upscale node)")
    device, dtype = ctx.settings.device, torch_dtype(ctx.settings)
    identity = f"{file_digest(path)}|{device}|{dtype}"

    def load():
        try:
            descriptor = ModelLoader().load_from_file(path)
        except Exception as exc:  # noqa: BLE001 - unknown architecture, corrupt file
            raise NodeInputError("name", f"{path.name}: spandrel cannot load it: {exc}") from None
        if not isinstance(descriptor, ImageModelDescriptor):
            raise NodeInputError("name", f"{path.name} is a {descriptor.architecture.name} model, "
                                         "not an image-to-image model")
        return descriptor.eval().to(device)

    d = ctx.models.get(("upscale", identity), load)
    return UpscaleModel(d, scale=int(d.scale), architecture=d.architecture.name, identity=identity)


def _feather(size: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    import torch
    ramp = torch.ones(size)
    if overlap > 0:
        edge = torch.linspace(0, 1, overlap + 2)[1:-1]
        if not first:
            ramp[:overlap] = edge
        if not last:
            ramp[-overlap:] = edge.flip(0)
    return ramp


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


@no_grad
def run_tiled(fn, x: torch.Tensor, scale: int, tile: int, overlap: int, progress=None) -> torch.Tensor:
    """fn over [B, C, H, W] in overlapping tiles, blended with linear feathering."""
    import torch
    b, c, h, w = x.shape
    if h <= tile and w <= tile:
        return fn(x)
    out = torch.zeros(b, c, h * scale, w * scale)
    weight = torch.zeros(1, 1, h * scale, w * scale)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    total, done = len(ys) * len(xs), 0
    for yi, y in enumerate(ys):
        for xi, x0 in enumerate(xs):
            th, tw = min(tile, h - y), min(tile, w - x0)
            piece = fn(x[:, :, y:y + th, x0:x0 + tw]).float().cpu()
            wy = _feather(th * scale, overlap * scale, yi == 0, yi == len(ys) - 1)
            wx = _feather(tw * scale, overlap * scale, xi == 0, xi == len(xs) - 1)
            mask = (wy[:, None] * wx[None, :])[None, None]
            out[:, :, y * scale:(y + th) * scale, x0 * scale:(x0 + tw) * scale] += piece * mask
            weight[:, :, y * scale:(y + th) * scale, x0 * scale:(x0 + tw) * scale] += mask
            done += 1
            if progress:
                progress(done, total)
    return out / weight.clamp_min(1e-8)


def _is_oom(exc: BaseException) -> bool:
    import torch
    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def upscale_pixels(ctx: Context, model: UpscaleModel, pixels: torch.Tensor, tile: int, overlap: int) -> torch.Tensor:
    """[B, H, W, 3] -> [B, H*s, W*s, 3], halving the tile on out-of-memory."""
    import torch
    d = model.descriptor
    x = pixels.permute(0, 3, 1, 2).float()

    def fn(t):
        return d(t.to(device=d.device, dtype=d.dtype)).float().clamp(0, 1)

    _, h, w, _ = pixels.shape
    ctx.limit("pixels", h * model.scale * w * model.scale, "image")
    while True:
        ctx.limit("tiles", len(_starts(h, tile, overlap)) * len(_starts(w, tile, overlap)), "tile")
        try:
            with on_device(ctx, d.model):
                y = run_tiled(fn, x, model.scale, tile, min(overlap, tile // 4), ctx.progress)
            return y.permute(0, 2, 3, 1).contiguous()
        except (RuntimeError, torch.OutOfMemoryError) as exc:
            if not _is_oom(exc) or tile <= MIN_TILE:
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            ctx.log.warning("out of memory with %d px tiles; retrying with %d", tile, tile // 2)
            tile //= 2


Tile = Annotated[int, Field(ge=MIN_TILE, le=4096)]


@node("upscale_with_model", category="upscale", version=1)
def upscale_with_model(ctx: Context, model: UpscaleModel, image: Image, tile: Tile = 512,
                       overlap: Annotated[int, Field(ge=0, le=256)] = 32) -> Image:
    """Upscale with a model (x its native scale), in overlapping tiles of `tile` px; the tile
    size halves automatically when a tile runs out of memory."""
    return Image(upscale_pixels(ctx, model, image.pixels, tile, overlap))


def resample(pixels: torch.Tensor, width: int, height: int, method: str) -> torch.Tensor:
    """[B, H, W, 3] resized; lanczos through Pillow, the rest through torch."""
    import torch
    import torch.nn.functional as F
    if method == "lanczos":
        import numpy as np
        from PIL import Image as PILImage

        out = []
        for img in pixels:
            arr = (img.clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            pil = PILImage.fromarray(arr, "RGB").resize((width, height), PILImage.LANCZOS)
            out.append(torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0))
        return torch.stack(out)
    x = pixels.permute(0, 3, 1, 2)
    kw = {"align_corners": False} if method in ("bicubic", "bilinear") else {}
    if method == "bicubic" or method == "bilinear":
        kw["antialias"] = True
    y = F.interpolate(x, size=(height, width), mode=method, **kw).clamp(0, 1)
    return y.permute(0, 2, 3, 1).contiguous()


@node("resize_image", category="upscale", version=1)
def resize_image(ctx: Context, image: Image, scale: Annotated[float, Field(ge=0, le=16)] = 2.0,
                 width: Annotated[int, Field(ge=0, le=16384)] = 0,
                 height: Annotated[int, Field(ge=0, le=16384)] = 0,
                 method: Resample = "lanczos") -> Image:
    """Resize by `scale`, or to width x height when given (one of them 0 keeps the aspect)."""
    if width == 0 and height == 0:
        if scale == 0:
            raise NodeInputError("scale", "give a scale or a width/height")
        width, height = round(image.width * scale), round(image.height * scale)
    elif width == 0:
        width = round(image.width * height / image.height)
    elif height == 0:
        height = round(image.height * width / image.width)
    ctx.limit("pixels", width * height, "scale")
    return Image(resample(image.pixels, max(1, width), max(1, height), method))


@node("progressive_upscale", category="upscale", version=1)
def progressive_upscale(ctx: Context, image: Image,
                        width: Annotated[int, Field(ge=1, le=16384)],
                        height: Annotated[int, Field(ge=1, le=16384)],
                        model: UpscaleModel | None = None, tile: Tile = 512,
                        method: Resample = "lanczos",
                        max_passes: Annotated[int, Field(ge=1, le=8)] = 4) -> Image:
    """Upscale to width x height: apply the model (or 2x resampling without one) until the image
    covers the target, then resample to the exact size."""
    ctx.limit("pixels", width * height, "width")
    pixels, passes = image.pixels, 0
    while (pixels.shape[2] < width or pixels.shape[1] < height) and passes < max_passes:
        if model is not None:
            pixels = upscale_pixels(ctx, model, pixels, tile, 32)
        else:
            pixels = resample(pixels, pixels.shape[2] * 2, pixels.shape[1] * 2, method)
        passes += 1
    if (pixels.shape[2], pixels.shape[1]) != (width, height):
        pixels = resample(pixels, width, height, method)
    return Image(pixels)


# ---------------------------------------------------------------------------
# Stable Diffusion x4 upscaler
# ---------------------------------------------------------------------------

def _load_sd_upscaler(ctx: Context, name: str):
    path = resolve_model(ctx, "upscale_models", name)
    if not (path.is_dir() and (path / "model_index.json").is_file()):
        raise NodeInputError("name", f"{path.name} is not a diffusers StableDiffusionUpscalePipeline folder")
    device, dtype = ctx.settings.device, torch_dtype(ctx.settings)

    def load():
        from diffusers import StableDiffusionUpscalePipeline

        pipe = StableDiffusionUpscalePipeline.from_pretrained(path, local_files_only=True, torch_dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device)

    return ctx.models.get(("sd_upscale", f"{file_digest(path)}|{device}|{dtype}"), load)


@node("sd_upscale", category="upscale", version=1, fingerprint=_upscale_fingerprint)
def sd_upscale(ctx: Context, image: Image, name: model_name("upscale_models"), prompt: str = "", negative: str = "",
               noise_level: Annotated[int, Field(ge=0, le=350)] = 20,
               steps: Annotated[int, Field(ge=1, le=500), Limit("steps")] = 20,
               cfg: Annotated[float, Field(ge=0, le=50)] = 7.5,
               seed: Annotated[int, Field(ge=0, lt=2**63)] = 0) -> Image:
    """The Stable Diffusion x4 upscaler (a diffusers StableDiffusionUpscalePipeline folder in
    models/upscale_models), guided by a prompt; `noise_level` is how much noise is added to
    the low-resolution image first (more = more invented detail)."""
    import torch
    pipe = _load_sd_upscaler(ctx, name)
    f = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    x = image.pixels.permute(0, 3, 1, 2) * 2 - 1
    shape = (image.batch, pipe.vae.config.latent_channels, image.height, image.width)
    noise, _ = seeded_noise(shape, seed, list(range(image.batch)))
    out = pipe(prompt=[prompt] * image.batch, negative_prompt=[negative] * image.batch if cfg > 1 else None,
               image=x.to(pipe.device), num_inference_steps=steps, guidance_scale=cfg, noise_level=noise_level,
               generator=torch.Generator().manual_seed(seed), latents=noise.to(pipe.device),
               output_type="pt", callback=lambda i, t, latents: ctx.progress(i + 1, steps), callback_steps=1)
    pixels = out.images.float().cpu().clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    if pixels.shape[1] != image.height * f:
        raise NodeInputError("name", f"the upscaler returned {pixels.shape[2]}x{pixels.shape[1]}")
    return Image(pixels)
