"""Image files in and out, and image-space helpers for inpainting and outpainting.

Loading reads a file inside settings.input_dir (its content digest is the fingerprint).
Saving writes PNGs under the output folder with collision-free names (written to a temp
file, then linked into place, which fails rather than overwrite) and embeds the graph:
`loom` holds exactly json.dumps(graph.to_dict()), `loom_params` the effective params, and
`parameters` an A1111-style summary other tools read.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import Field

from engine.context import Context
from engine.errors import NodeInputError
from engine.files import as_created_by_open
from engine.models import file_digest
from engine.node import node
from engine.paths import UnsafePath, contained
from engine.settings import Settings
from engine.types import OutputFiles, file_input

from ._common import input_file
from .types import Image, Mask

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


class ImageAndMask(NamedTuple):
    image: Image
    mask: Mask


def _input_path(settings: Settings, name: str) -> Path:
    return input_file(settings, name, "name", "image")


def _image_fingerprint(name: str, *, settings: Settings, **_) -> str:
    """The file's content digest, in the run's configured input folder."""
    try:
        return file_digest(_input_path(settings, name))
    except NodeInputError:
        return f"missing:{name}"


def pil_to_image(pil) -> ImageAndMask:
    import numpy as np
    import torch
    rgba = np.asarray(pil.convert("RGBA"), dtype=np.float32) / 255.0
    pixels = torch.from_numpy(rgba[..., :3].copy())[None]
    mask = 1.0 - torch.from_numpy(rgba[..., 3].copy())[None]   # transparent = to paint
    return ImageAndMask(Image(pixels), Mask(mask))


def image_to_pil(image: Image, index: int = 0):
    import numpy as np
    from PIL import Image as PILImage

    arr = (image.pixels[index].clamp(0, 1).numpy() * 255.0).round().astype(np.uint8)
    return PILImage.fromarray(arr, "RGB")


@node("load_image", category="image", version=1, fingerprint=_image_fingerprint)
def load_image(ctx: Context, name: file_input("input")) -> ImageAndMask:
    """Load an image from the input folder: RGB pixels, and a mask from its alpha channel
    (transparent pixels = 1, the area to paint)."""
    from PIL import Image as PILImage, UnidentifiedImageError

    path = _input_path(ctx.settings, name)
    try:
        with PILImage.open(path) as pil:
            return pil_to_image(pil)
    except (UnidentifiedImageError, OSError) as exc:
        raise NodeInputError("name", f"{name} is not a readable image: {exc}") from None


@node("image_to_mask", category="image", version=1)
def image_to_mask(image: Image, channel: Annotated[int, Field(ge=0, le=2)] = 0) -> Mask:
    """A mask from one channel of an image (white = 1 = paint)."""
    return Mask(image.pixels[..., channel].clone())


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------

def _a1111_parameters(ctx: Context, image: Image) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: ..., Sampler: ..., ...` from the graph's nodes."""
    graph = ctx.graph
    texts, settings = {}, {}
    for entry in graph.nodes.values():
        lits = entry.literals()
        if entry.type == "sample":
            settings.setdefault("Steps", lits.get("steps", 20))
            settings.setdefault("Sampler", lits.get("scheduler", "dpmpp_2m")
                                + (" Karras" if lits.get("karras") else ""))
            settings.setdefault("CFG scale", lits.get("cfg", 7.0))
            settings.setdefault("Seed", lits.get("seed", 0))
            if lits.get("denoise", 1.0) != 1.0:
                settings.setdefault("Denoising strength", lits["denoise"])
            for role in ("positive", "negative"):
                link = entry.links().get(role)
                if link is not None and link.node in graph.nodes:
                    text = graph.nodes[link.node].literals().get("text")
                    if isinstance(text, str):
                        texts.setdefault(role, text)
        elif entry.type == "load_checkpoint":
            settings.setdefault("Model", lits.get("name"))
    settings["Size"] = f"{image.width}x{image.height}"
    lines = [texts.get("positive", "")]
    if texts.get("negative"):
        lines.append(f"Negative prompt: {texts['negative']}")
    lines.append(", ".join(f"{k}: {v}" for k, v in settings.items() if v is not None))
    return "\n".join(lines)


def write_png_unique(folder: Path, stem: str, pil, pnginfo) -> Path:
    """Write `stem_NNNNN.png` in `folder` with the first free number, atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".loom-", suffix=".png", dir=folder)
    try:
        as_created_by_open(tmp)
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format="PNG", pnginfo=pnginfo)
        existing = [p.name for p in folder.glob(f"{stem}_*.png")]
        counter = 1 + max((int(n[len(stem) + 1:-4]) for n in existing
                           if n[len(stem) + 1:-4].isdigit()), default=0)
        while True:
            target = folder / f"{stem}_{counter:05d}.png"
            try:
                os.link(tmp, target)       # fails if the name exists: no overwrite, no race
                return target
            except FileExistsError:
                counter += 1
    finally:
        os.unlink(tmp)


@node("save_image", category="image", version=1, output_node=True, output="files",
      cache=False)
def save_image(ctx: Context, images: Image,
               prefix: file_input("output", max_length=200) = "loom",
               embed_graph: bool = True) -> OutputFiles:
    """Save images as PNG in the output folder (prefix may name a subfolder), with the graph and
    its params embedded so `loom run IMAGE.png` reproduces it. Returns the file paths."""
    from PIL.PngImagePlugin import PngInfo

    out = Path(ctx.output_dir)
    try:
        probe = contained(out, prefix + "_00000.png")
    except UnsafePath as exc:
        raise NodeInputError("prefix", str(exc)) from None
    info = PngInfo()
    if embed_graph and ctx.graph is not None:
        info.add_text("loom", json.dumps(ctx.graph.to_dict()))
        info.add_text("loom_params", json.dumps(ctx.params, default=str))
        info.add_text("parameters", _a1111_parameters(ctx, images))
        comfy = (ctx.graph.meta or {}).get("comfy") or {}
        for key in ("prompt", "workflow"):   # what ComfyUI reads back to reopen the image's graph
            if key in comfy:
                info.add_text(key, json.dumps(comfy[key]))
    files = []
    for i in range(images.batch):
        ctx.check_cancelled()
        path = write_png_unique(probe.parent, Path(prefix).name, image_to_pil(images, i), info)
        files.append(str(path))
    return files


# ---------------------------------------------------------------------------
# outpainting
# ---------------------------------------------------------------------------

Pad = Annotated[int, Field(ge=0, le=4096, multiple_of=8)]


@node("pad_for_outpaint", category="image", version=1)
def pad_for_outpaint(ctx: Context, image: Image, left: Pad = 0, top: Pad = 0, right: Pad = 0, bottom: Pad = 0,
                     feathering: Annotated[int, Field(ge=0, le=512)] = 8) -> ImageAndMask:
    """Extend the canvas (grey fill) and return the mask of the new area (1 = paint), softened
    `feathering` pixels into the original image so the seam blends."""
    import torch
    b, h, w, c = image.pixels.shape
    H, W = h + top + bottom, w + left + right
    ctx.limit("pixels", H * W, "left")
    pixels = torch.full((b, H, W, c), 0.5)
    pixels[:, top:top + h, left:left + w] = image.pixels
    mask = torch.ones((b, H, W))
    inner = torch.zeros((h, w))
    if feathering:
        ys = torch.arange(h, dtype=torch.float32)[:, None]
        xs = torch.arange(w, dtype=torch.float32)[None, :]
        dist = torch.full((h, w), float(feathering))
        for pad, d in ((top, ys), (bottom, h - 1 - ys), (left, xs), (right, w - 1 - xs)):
            if pad:
                dist = torch.minimum(dist, d.expand(h, w))
        inner = ((feathering - dist) / feathering).clamp(0, 1) ** 2
    mask[:, top:top + h, left:left + w] = inner
    return ImageAndMask(Image(pixels), Mask(mask))


@node("composite_masked", category="image", version=1)
def composite_masked(destination: Image, source: Image, mask: Mask) -> Image:
    """destination * (1 - mask) + source * mask (paste an inpainted result over the original)."""
    import torch.nn.functional as F
    if destination.pixels.shape[1:3] != source.pixels.shape[1:3]:
        raise NodeInputError("source", "source and destination sizes differ")
    m = mask.mask.float()
    if m.shape[-2:] != destination.pixels.shape[1:3]:
        m = F.interpolate(m[:, None], size=destination.pixels.shape[1:3], mode="bilinear")[:, 0]
    m = m[..., None]
    return Image(destination.pixels * (1 - m) + source.pixels * m)
