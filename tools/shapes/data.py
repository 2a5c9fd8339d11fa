"""Procedurally drawn training and evaluation images.

Every image is a pure function of its parameters (shape, colours, size, position),
and the parameters are a pure function of (split, index), so any image can be
redrawn exactly from its index: latents, edge maps and evaluation sets never need
the pixels to be stored.
"""

import hashlib
import random
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, ImageDraw

from nodes.draw import PALETTE  # the default model's colour words, shared with the draw nodes

IMAGE_SIZE = 64
SUPERSAMPLE = 4  # draw at 4x and downsample: fixed, anti-aliased edges
MIN_SHAPE_SIZE = 20
MAX_SHAPE_SIZE = 44

COLOURS = list(PALETTE)
SHAPES = ["circle", "square", "triangle"]

# One image in this many parameter tuples is reserved for evaluation; training
# skips them, so held-out images are never seen even though every caption is.
HELD_OUT_ONE_IN = 10


@dataclass(frozen=True)
class ShapeSpec:
    shape: str
    colour: str
    background: str
    size: int
    left: int
    top: int

    @property
    def caption(self) -> str:
        return f"a {self.colour} {self.shape} on a {self.background} background"

    def is_held_out(self) -> bool:
        key = f"{self.shape}|{self.colour}|{self.background}|{self.size}|{self.left}|{self.top}"
        return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELD_OUT_ONE_IN == 0


def random_spec(rng: random.Random) -> ShapeSpec:
    colour, background = rng.sample(COLOURS, 2)
    size = rng.randint(MIN_SHAPE_SIZE, MAX_SHAPE_SIZE)
    return ShapeSpec(
        shape=rng.choice(SHAPES),
        colour=colour,
        background=background,
        size=size,
        left=rng.randint(0, IMAGE_SIZE - size),
        top=rng.randint(0, IMAGE_SIZE - size),
    )


def spec_for(split: str, index: int, seed: int = 0) -> ShapeSpec:
    """The index-th image of a split ("train" or "eval"); redrawn until it falls
    on the right side of the held-out line."""
    rng = random.Random(f"{split}:{seed}:{index}")
    want_held_out = split == "eval"
    while True:
        spec = random_spec(rng)
        if spec.is_held_out() == want_held_out:
            return spec


def _draw_shape(draw: ImageDraw.ImageDraw, spec: ShapeSpec, fill) -> None:
    s = SUPERSAMPLE
    x0, y0 = spec.left * s, spec.top * s
    x1, y1 = (spec.left + spec.size) * s - 1, (spec.top + spec.size) * s - 1
    if spec.shape == "circle":
        draw.ellipse([x0, y0, x1, y1], fill=fill)
    elif spec.shape == "square":
        draw.rectangle([x0, y0, x1, y1], fill=fill)
    else:  # upright triangle filling half of its bounding box
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)


def render(spec: ShapeSpec) -> Image.Image:
    big = IMAGE_SIZE * SUPERSAMPLE
    image = Image.new("RGB", (big, big), PALETTE[spec.background])
    _draw_shape(ImageDraw.Draw(image), spec, PALETTE[spec.colour])
    return image.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)


def shape_mask(spec: ShapeSpec) -> np.ndarray:
    """Boolean mask of the pixels at least half covered by the shape."""
    big = IMAGE_SIZE * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    _draw_shape(ImageDraw.Draw(mask), spec, 255)
    small = mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(small) >= 128


def canny_edges(image: Image.Image) -> Image.Image:
    """White-on-black Canny edges (3 channels, as ControlNet pipelines expect).

    OpenCV takes the strongest gradient over the colour channels, so shapes whose
    colours have similar brightness (red on blue) still get an outline.
    """
    edges = cv2.Canny(np.asarray(image), 100, 200)
    return Image.fromarray(np.stack([edges] * 3, axis=-1))


def to_tensor_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 -> CHW float32 in [-1, 1], the range the VAE works in."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
