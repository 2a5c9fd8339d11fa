"""Drawn sources: a shape image and a rectangle or ellipse mask, made from numbers alone.

They let the image graphs (img2img, inpaint, outpaint) run out of the box with no picture
on disk, and they speak the default model's language: the palette and shape words are the
ones shapes-tiny was trained on (tools/shapes/data.py), drawn the same way (4x supersampled,
box-downsampled, so edges are anti-aliased like the training images). To start from your own
picture instead, use `load_image` (a file in the input folder): its `image` output plugs in
where `draw_shape`'s does, and its `mask` output (transparent pixels) where `draw_mask`'s does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

from pydantic import Field

from engine.errors import NodeInputError
from engine.limits import Limit
from engine.node import node

from .types import Image, Mask

if TYPE_CHECKING:
    import torch

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
}
Colour = Literal["red", "green", "blue", "yellow", "white", "black"]
ShapeName = Literal["circle", "square", "triangle"]
Side = Annotated[int, Field(ge=8, le=4096, multiple_of=8, description="pixels, a multiple of 8")]
Width = Annotated[Side, Limit("width"), Limit("pixels")]
Height = Annotated[Side, Limit("height"), Limit("pixels")]
Fraction = Annotated[float, Field(ge=0, le=1)]
SUPERSAMPLE = 4


def _pil_to_tensor(pil) -> torch.Tensor:
    import numpy as np
    import torch
    return torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)


@node("draw_shape", category="image", version=1)
def draw_shape(shape: ShapeName = "circle", colour: Colour = "red", background: Colour = "blue",
               size: Annotated[int, Field(ge=1, le=4096, description="side of the shape's box, pixels")] = 32,
               center_x: Annotated[Fraction, Field(description="0 = left edge, 1 = right edge")] = 0.5,
               center_y: Annotated[Fraction, Field(description="0 = top edge, 1 = bottom edge")] = 0.5,
               width: Width = 64, height: Height = 64) -> Image:
    """An image of one circle, square or (upright) triangle on a plain background, in the
    default model's colours: the prompt "a {colour} {shape} on a {background} background"
    describes it. The shape's box is `size` pixels, centred at (center_x, center_y) given as
    fractions of the image. Swap it for load_image to start from your own picture."""
    from PIL import Image as PILImage, ImageDraw

    s = SUPERSAMPLE
    big = PILImage.new("RGB", (width * s, height * s), PALETTE[background])
    left, top = center_x * width - size / 2, center_y * height - size / 2
    x0, y0 = round(left * s), round(top * s)
    x1, y1 = round((left + size) * s) - 1, round((top + size) * s) - 1
    draw = ImageDraw.Draw(big)
    fill = PALETTE[colour]
    if shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    small = big.resize((width, height), PILImage.Resampling.BOX)
    return Image(_pil_to_tensor(small)[None].contiguous())


@node("draw_mask", category="image", version=1)
def draw_mask(shape: Literal["rectangle", "ellipse"] = "rectangle",
              left: Annotated[float, Field(ge=0)] = 0.25, top: Annotated[float, Field(ge=0)] = 0.25,
              right: Annotated[float, Field(ge=0)] = 0.75, bottom: Annotated[float, Field(ge=0)] = 0.75,
              units: Literal["fraction", "pixels"] = "fraction",
              width: Width = 64, height: Height = 64,
              image: Image | None = None,
              feather: Annotated[int, Field(ge=0, le=512, description="soft edge, pixels")] = 0,
              invert: bool = False) -> Mask:
    """A mask (1 = regenerate) that is 1 inside a rectangle or ellipse. Its box is
    left/top/right/bottom, as fractions of the mask (units "fraction") or in pixels; the mask
    is width x height, or the size of `image` when one is linked. `feather` softens the edge
    over that many pixels; `invert` keeps the inside and paints the rest."""
    import torch
    if image is not None:
        width, height = image.width, image.height
    scale_x, scale_y = (width, height) if units == "fraction" else (1.0, 1.0)
    x0, x1, y0, y1 = left * scale_x, right * scale_x, top * scale_y, bottom * scale_y
    if x1 <= x0:
        raise NodeInputError("right", f"right ({right}) must be greater than left ({left})")
    if y1 <= y0:
        raise NodeInputError("bottom", f"bottom ({bottom}) must be greater than top ({top})")
    # pixel centres, then a signed distance to the box edge (negative inside)
    ys = torch.arange(height, dtype=torch.float32)[:, None] + 0.5
    xs = torch.arange(width, dtype=torch.float32)[None, :] + 0.5
    if shape == "rectangle":
        dx = torch.maximum(x0 - xs, xs - x1)
        dy = torch.maximum(y0 - ys, ys - y1)
        dist = torch.maximum(dx, dy)
    else:
        cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        r = torch.sqrt(((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2)
        dist = (r - 1) * min(rx, ry)          # approximately pixels from the ellipse's edge
    if feather:
        mask = (0.5 - dist / feather).clamp(0, 1)
    else:
        mask = (dist <= 0).float()
    if invert:
        mask = 1 - mask
    return Mask(mask[None].contiguous())
