"""ComfyUI's latent, sampler, VAE and image class types, over Loom's nodes.

KSampler's `denoise` is ComfyUI's: `steps` steps are run over the last part of a schedule of
steps / denoise steps (so denoise 0.5 with 20 steps runs 20 steps from the middle of a
40-step schedule), which is Loom's sampler started at step 20 of 40.
"""
from __future__ import annotations

from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.limits import Limit
from engine.node import node
from engine.types import OutputFiles, file_input

from ..control_types import UpscaleModel
from ..types import Conditioning, DiffusionModel, Image, Latent, Mask, Vae
from .ports import ComfyLatent, call_node, comfy_latent, latent_scale, model_with_controls, shaped_for
from .vocabulary import SAMPLERS, SCHEDULES, SamplerName, SchedulerName

MAX_RESOLUTION = 16384
Seed = Annotated[int, Field(ge=0, le=2**64 - 1)]
Steps = Annotated[int, Field(ge=1, le=10000), Limit("steps")]
Cfg = Annotated[float, Field(ge=0, le=100)]
# ComfyUI's bislerp is left out: a workflow using it is refused at validation with these
LatentMethod = Literal["nearest-exact", "bilinear", "area", "bicubic"]
ImageMethod = Literal["nearest-exact", "bilinear", "area", "bicubic", "lanczos"]


# -- latents --------------------------------------------------------------------------------

@node("EmptyLatentImage", category="comfy/latent", output="LATENT")
def empty_latent_image(width: Annotated[int, Field(ge=16, le=MAX_RESOLUTION, multiple_of=8),
                                         Limit("width"), Limit("pixels")] = 512,
                       height: Annotated[int, Field(ge=16, le=MAX_RESOLUTION, multiple_of=8),
                                         Limit("height"), Limit("pixels")] = 512,
                       batch_size: Annotated[int, Field(ge=1, le=4096), Limit("batch")] = 1) -> Latent:
    """An empty latent for a width x height image; the sampler gives it the shape its model needs."""
    import torch

    return ComfyLatent(torch.zeros(batch_size, 4, height // 8, width // 8), scale=8, pending=True)


@node("RepeatLatentBatch", category="comfy/latent", output="LATENT")
def repeat_latent_batch(samples: Latent, amount: Annotated[int, Field(ge=1, le=64)] = 1) -> Latent:
    """The batch repeated `amount` times; copy i's seed offsets are the originals shifted by i
    times their span, as ComfyUI numbers them."""
    offsets = samples.offsets()
    span = max(offsets) - min(offsets) + 1
    repeat = lambda t: None if t is None else t.repeat(amount, *[1] * (t.ndim - 1))  # noqa: E731
    return samples.replace(samples=repeat(samples.samples), noise_mask=repeat(samples.noise_mask),
                           masked_image=repeat(samples.masked_image),
                           batch_index=offsets + [o + i * span for i in range(1, amount) for o in offsets])


@node("LatentFromBatch", category="comfy/latent", output="LATENT")
def latent_from_batch(samples: Latent, batch_index: Annotated[int, Field(ge=0, le=63)] = 0,
                      length: Annotated[int, Field(ge=1, le=64)] = 1) -> Latent:
    """Items batch_index..batch_index+length-1, keeping their seeds."""
    from ..latent import latent_from_batch as pick

    out = pick(samples, batch_index, length)
    if isinstance(samples, ComfyLatent):
        return comfy_latent(out, samples.scale).replace(pending=samples.pending)
    return out


def _resize_latent(samples: Latent, height: int, width: int, method: str, crop: str) -> Latent:
    import torch.nn.functional as F

    def resize(t):
        if t is None:
            return None
        if crop == "center":
            t = _center_crop(t, height / width, dims=(-2, -1))
        return F.interpolate(t, size=(height, width), mode=method)
    return samples.replace(samples=resize(samples.samples), noise_mask=resize(samples.noise_mask),
                           masked_image=resize(samples.masked_image))


def _center_crop(t, aspect: float, dims: tuple[int, int]):
    """The centre of `t` cut to height/width == aspect (ComfyUI's crop="center")."""
    h, w = t.shape[dims[0]], t.shape[dims[1]]
    if w * aspect < h:
        new_h = round(w * aspect)
        top = (h - new_h) // 2
        return t.narrow(dims[0] % t.ndim, top, new_h)
    new_w = round(h / aspect)
    left = (w - new_w) // 2
    return t.narrow(dims[1] % t.ndim, left, new_w)


@node("LatentUpscale", category="comfy/latent", output="LATENT")
def latent_upscale(samples: Latent, upscale_method: LatentMethod = "nearest-exact",
                   width: Annotated[int, Field(ge=0, le=MAX_RESOLUTION, multiple_of=8),
                                    Limit("width"), Limit("pixels")] = 512,
                   height: Annotated[int, Field(ge=0, le=MAX_RESOLUTION, multiple_of=8),
                                     Limit("height"), Limit("pixels")] = 512,
                   crop: Literal["disabled", "center"] = "disabled") -> Latent:
    """Resize latents to width x height pixels (0 keeps the aspect ratio)."""
    scale = latent_scale(samples)
    h, w = samples.samples.shape[-2:]
    if width == 0 and height == 0:
        return samples
    if width == 0:
        width = round(w * scale * height / (h * scale))
    if height == 0:
        height = round(h * scale * width / (w * scale))
    return _resize_latent(samples, max(1, height // scale), max(1, width // scale), upscale_method, crop)


@node("LatentUpscaleBy", category="comfy/latent", output="LATENT")
def latent_upscale_by(samples: Latent, upscale_method: LatentMethod = "nearest-exact",
                      scale_by: Annotated[float, Field(ge=0.01, le=8.0)] = 1.5) -> Latent:
    """Resize latents by a factor (Loom's upscale_latent)."""
    from ..latent import upscale_latent

    out = upscale_latent(samples, scale_by, upscale_method)
    return comfy_latent(out, latent_scale(samples)).replace(
        pending=getattr(samples, "pending", False))


@node("SetLatentNoiseMask", category="comfy/latent", output="LATENT")
def set_latent_noise_mask(samples: Latent, mask: Mask) -> Latent:
    """Regenerate only where the mask is 1 (Loom's set_latent_noise_mask)."""
    from ..latent import set_latent_noise_mask as set_mask

    if getattr(samples, "pending", False):
        raise NodeInputError("samples", "an empty latent has nothing to keep outside the mask; "
                                        "encode an image with VAEEncode first")
    return set_mask(samples, mask)


# -- sampling -------------------------------------------------------------------------------

def _sample(ctx: Context, model: DiffusionModel, positive: Conditioning, negative: Conditioning,
            latent: Latent, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
            start: int, end: int, add_noise: bool) -> Latent:
    from ..sampling import run_sampler

    channels = 4 if model.is_inpainting else model.in_channels
    latent = shaped_for(latent, model.latent_scale, channels)
    model = model_with_controls(model, positive, negative)
    out = run_sampler(ctx, model, positive, latent, negative, seed, steps, cfg, SAMPLERS[sampler_name],
                      False, 1.0, start, end, add_noise, SCHEDULES[scheduler])
    if not out.samples.isfinite().all():
        raise NodeInputError("sampler_name", f"{sampler_name} with the {scheduler} scheduler diverged "
                                             "(NaN) on this model's noise schedule; choose another sampler")
    return comfy_latent(out, model.latent_scale)


@node("KSampler", category="comfy/sampling", output="LATENT")
def ksampler(ctx: Context, model: DiffusionModel, seed: Seed = 0, steps: Steps = 20, cfg: Cfg = 8.0,
             sampler_name: SamplerName = "euler", scheduler: SchedulerName = "simple", *,
             positive: Conditioning, negative: Conditioning, latent_image: Latent,
             denoise: Annotated[float, Field(ge=0, le=1)] = 1.0) -> Latent:
    """Denoise the latent (Loom's sampler). denoise < 1 runs `steps` steps over the last part
    of a steps / denoise schedule, as ComfyUI does (image to image)."""
    if denoise <= 0:
        return latent_image
    total = steps if denoise >= 1 else int(steps / denoise)
    return _sample(ctx, model, positive, negative, latent_image, seed, total, cfg, sampler_name,
                   scheduler, total - steps, total, True)


@node("KSamplerAdvanced", category="comfy/sampling", output="LATENT")
def ksampler_advanced(ctx: Context, model: DiffusionModel,
                      add_noise: Literal["enable", "disable"] = "enable", noise_seed: Seed = 0,
                      steps: Steps = 20, cfg: Cfg = 8.0, sampler_name: SamplerName = "euler",
                      scheduler: SchedulerName = "simple", *,
                      positive: Conditioning, negative: Conditioning, latent_image: Latent,
                      start_at_step: Annotated[int, Field(ge=0, le=10000)] = 0,
                      end_at_step: Annotated[int, Field(ge=0, le=10000)] = 10000,
                      return_with_leftover_noise: Literal["disable", "enable"] = "disable") -> Latent:
    """Run steps [start_at_step, end_at_step) of the schedule: the SDXL base -> refiner
    hand-off (base: end early and return with leftover noise; refiner: start there with
    add_noise disabled)."""
    end = min(end_at_step, steps)
    if start_at_step >= end:
        return latent_image
    if end < steps and return_with_leftover_noise == "disable":
        raise NodeInputError("return_with_leftover_noise",
                             f"ending at step {end} of {steps} with the leftover noise removed is not "
                             "supported; enable return_with_leftover_noise and finish with a second sampler")
    return _sample(ctx, model, positive, negative, latent_image, noise_seed, steps, cfg, sampler_name,
                   scheduler, start_at_step, end, add_noise == "enable")


# -- VAE ------------------------------------------------------------------------------------

def _for_vae(samples: Latent, vae: Vae) -> Latent:
    return shaped_for(samples, vae.scale_factor, vae.latent_channels)


@node("VAEDecode", category="comfy/latent", output="IMAGE")
def vae_decode(ctx: Context, samples: Latent, vae: Vae) -> Image:
    """Latents to pixels (Loom's vae_decode)."""
    from ..vae import vae_decode as decode

    return decode(ctx, vae, _for_vae(samples, vae))


@node("VAEDecodeTiled", category="comfy/latent", output="IMAGE")
def vae_decode_tiled(ctx: Context, samples: Latent, vae: Vae,
                     tile_size: Annotated[int, Field(ge=64, le=4096, multiple_of=32)] = 512,
                     overlap: Annotated[int, Field(ge=0, le=4096, multiple_of=32)] = 64,
                     temporal_size: Annotated[int, Field(ge=8, le=4096)] = 64,
                     temporal_overlap: Annotated[int, Field(ge=4, le=4096)] = 8) -> Image:
    """Decode in tiles to save memory (Loom's vae_decode with tiling; the VAE picks its own tile
    size, and the temporal inputs are for video VAEs)."""
    from ..vae import vae_decode as decode

    return decode(ctx, vae, _for_vae(samples, vae), tiled=True)


def _cropped_to(vae: Vae, pixels: Image) -> Image:
    """ComfyUI crops images to a multiple of the VAE's factor (centred) before encoding."""
    f = vae.scale_factor
    h, w = (pixels.height // f) * f, (pixels.width // f) * f
    if (h, w) == (pixels.height, pixels.width):
        return pixels
    top, left = (pixels.height - h) // 2, (pixels.width - w) // 2
    return Image(pixels.pixels[:, top:top + h, left:left + w])


@node("VAEEncode", category="comfy/latent", output="LATENT")
def vae_encode(ctx: Context, pixels: Image, vae: Vae) -> Latent:
    """Pixels to latents (Loom's vae_encode)."""
    from ..vae import vae_encode as encode

    return comfy_latent(encode(ctx, vae, _cropped_to(vae, pixels)), vae.scale_factor)


@node("VAEEncodeForInpaint", category="comfy/latent", output="LATENT")
def vae_encode_for_inpaint(ctx: Context, pixels: Image, vae: Vae, mask: Mask,
                           grow_mask_by: Annotated[int, Field(ge=0, le=64)] = 6) -> Latent:
    """Encode for inpainting: the latent carries the (grown) mask, and the masked image's
    latents for inpainting UNets (Loom's vae_encode_inpaint)."""
    from ..vae import vae_encode_inpaint

    return comfy_latent(vae_encode_inpaint(ctx, vae, pixels, mask, grow_mask_by), vae.scale_factor)


# -- images ---------------------------------------------------------------------------------

def _load_image_fingerprint(image: str, *, settings, **_) -> str:
    from ..image import _image_fingerprint

    return _image_fingerprint(image, settings=settings)


class LoadImageOutputs(NamedTuple):
    IMAGE: Image
    MASK: Mask


@node("LoadImage", category="comfy/image", fingerprint=_load_image_fingerprint)
def load_image(ctx: Context, image: file_input("input")) -> LoadImageOutputs:
    """An image from the input folder and the mask of its transparent pixels (Loom's load_image)."""
    from ..image import load_image as load

    return LoadImageOutputs(*load(ctx, image))


@node("LoadImageMask", category="comfy/image", output="MASK", fingerprint=_load_image_fingerprint)
def load_image_mask(ctx: Context, image: file_input("input"),
                    channel: Literal["alpha", "red", "green", "blue"] = "alpha") -> Mask:
    """A mask from one channel of an image: alpha gives its transparent pixels, a colour
    channel its values."""
    from ..image import image_to_mask, load_image as load

    pixels, alpha_mask = load(ctx, image)
    if channel == "alpha":
        return alpha_mask
    return image_to_mask(pixels, ["red", "green", "blue"].index(channel))


@node("SaveImage", category="comfy/image", output_node=True, output="files",
      cache=False)
def save_image(ctx: Context, images: Image,
               filename_prefix: file_input("output", max_length=200) = "ComfyUI") -> OutputFiles:
    """Save PNGs in the output folder, with the graph embedded (Loom's save_image)."""
    from ..image import save_image as save

    return save(ctx, images, filename_prefix)


@node("PreviewImage", category="comfy/image", output_node=True, output="files",
      cache=False)
def preview_image(ctx: Context, images: Image) -> OutputFiles:
    """Save PNGs for a look, under previews/ in the output folder, without the graph."""
    from ..image import save_image as save

    return save(ctx, images, "previews/ComfyUI_temp", embed_graph=False)


def _resized(image: Image, width: int, height: int, method: str, crop: str) -> Image:
    from ..upscale import resample

    if width == 0 and height == 0:
        return image
    if width == 0:
        width = max(1, round(image.width * height / image.height))
    if height == 0:
        height = max(1, round(image.height * width / image.width))
    pixels = image.pixels
    if crop == "center":
        pixels = _center_crop(pixels, height / width, dims=(1, 2))
    return Image(resample(pixels, width, height, method))


@node("ImageScale", category="comfy/image", output="IMAGE")
def image_scale(image: Image, upscale_method: ImageMethod = "nearest-exact",
                width: Annotated[int, Field(ge=0, le=MAX_RESOLUTION), Limit("width"), Limit("pixels")] = 512,
                height: Annotated[int, Field(ge=0, le=MAX_RESOLUTION), Limit("height"),
                                  Limit("pixels")] = 512,
                crop: Literal["disabled", "center"] = "disabled") -> Image:
    """Resize to width x height (0 keeps the aspect ratio)."""
    return _resized(image, width, height, upscale_method, crop)


@node("ImageScaleBy", category="comfy/image", output="IMAGE")
def image_scale_by(image: Image, upscale_method: ImageMethod = "nearest-exact",
                   scale_by: Annotated[float, Field(ge=0.01, le=8.0)] = 1.0) -> Image:
    """Resize by a factor."""
    return _resized(image, round(image.width * scale_by), round(image.height * scale_by),
                    upscale_method, "disabled")


@node("ImageInvert", category="comfy/image", output="IMAGE")
def image_invert(image: Image) -> Image:
    """1 - every pixel."""
    return Image(1.0 - image.pixels)


class PadOutputs(NamedTuple):
    IMAGE: Image
    MASK: Mask


Pad = Annotated[int, Field(ge=0, le=MAX_RESOLUTION, multiple_of=8)]


@node("ImagePadForOutpaint", category="comfy/image")
def image_pad_for_outpaint(ctx: Context, image: Image, left: Pad = 0, top: Pad = 0, right: Pad = 0, bottom: Pad = 0,
                           feathering: Annotated[int, Field(ge=0, le=MAX_RESOLUTION)] = 40) -> PadOutputs:
    """Extend the canvas and give the mask of the new area (Loom's pad_for_outpaint)."""
    from ..image import pad_for_outpaint

    return PadOutputs(*call_node(pad_for_outpaint, ctx, image=image, left=left, top=top, right=right,
                                 bottom=bottom, feathering=min(feathering, 512)))


@node("ImageUpscaleWithModel", category="comfy/image", output="IMAGE")
def image_upscale_with_model(ctx: Context, upscale_model: UpscaleModel, image: Image) -> Image:
    """Upscale with a model (Loom's upscale_with_model)."""
    from ..upscale import upscale_with_model

    return upscale_with_model(ctx, upscale_model, image)


@node("Canny", category="comfy/image", output="IMAGE")
def canny(image: Image, low_threshold: Annotated[float, Field(ge=0.01, le=0.99)] = 0.4,
          high_threshold: Annotated[float, Field(ge=0.01, le=0.99)] = 0.8) -> Image:
    """Canny edge map (Loom's canny; thresholds as fractions of full intensity)."""
    from ..preprocess import canny as detect

    return detect(image, round(low_threshold * 255), round(high_threshold * 255))

