"""Composition: prompts built from data tables, batches over prompts or seeds, contact sheets.

The prompt tables (styles, quality words, negatives, compositions, palettes, avatar
attributes) live in nodes/data/prompt_tables.json, so they are edited as data; the choice
inputs are built from them, so a graph naming an unknown style fails validation.

`batch_over` evaluates its (lazy) sub-graph once per item with one input overridden, the
same mechanism as the retry node: each item has its own cache key, so adding a prompt to
the list runs only the new item, and nodes that do not depend on the varied input (model
loading, a shared negative prompt) run once.
"""
from __future__ import annotations

import json
import random
import textwrap
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from pydantic import Field

from engine import Lazy, NodeInputError, node
from engine.limits import Limit

from .flow import Target
from .types import Image

TABLES = json.loads((Path(__file__).parent / "data" / "prompt_tables.json").read_text())

StyleName = Literal[tuple(TABLES["styles"])]                 # type: ignore[valid-type]
CompositionName = Literal[tuple(TABLES["compositions"])]     # type: ignore[valid-type]
PaletteName = Literal[tuple(TABLES["palettes"])]             # type: ignore[valid-type]
QualityLevel = Literal[tuple(TABLES["quality"])]             # type: ignore[valid-type]


class PromptOutputs(NamedTuple):
    prompt: str
    negative: str


def _join(parts: list[str]) -> str:
    return ", ".join(p.strip() for p in parts if p and p.strip())


@node("build_prompt", category="compose", version=1)
def build_prompt(subject: str, style: StyleName = "none", quality: QualityLevel = "high",
                 details: str = "", composition: CompositionName = "none", palette: PaletteName = "none",
                 negative: str = "", default_negatives: bool = True) -> PromptOutputs:
    """Subject + style + quality words + details (+ composition, palette) as one prompt, and
    the table's negative words plus your own as the negative prompt."""
    if not subject.strip():
        raise NodeInputError("subject", "the subject is empty")
    prompt = _join([subject, TABLES["styles"][style], *TABLES["quality"][quality], details,
                    TABLES["compositions"][composition], TABLES["palettes"][palette]])
    neg = _join([*(TABLES["negative"] if default_negatives else []), negative])
    return PromptOutputs(prompt, neg)


def _pick(rng: random.Random, table: str, value: str) -> str:
    return value if value != "random" else rng.choice(TABLES["avatar"][table])


@node("avatar_prompt", category="compose", version=1)
def avatar_prompt(gender: str = "person", hair_style: str = "random", hair_color: str = "random",
                  eye_color: str = "random", style: str = "random", expression: str = "random",
                  background: str = "random", details: str = "",
                  seed: Annotated[int, Field(ge=0, lt=2**32, description="picks the 'random' attributes")] = 0
                  ) -> PromptOutputs:
    """An avatar portrait prompt from attributes; "random" picks one from the avatar tables,
    deterministically from `seed` (so the node stays cacheable and reproducible)."""
    rng = random.Random(seed)
    hs, hc, ec = _pick(rng, "hair_styles", hair_style), _pick(rng, "hair_colors", hair_color), _pick(rng, "eye_colors", eye_color)
    st, ex, bg = _pick(rng, "styles", style), _pick(rng, "expressions", expression), _pick(rng, "backgrounds", background)
    prompt = _join([f"portrait of a {gender}", f"{hc} {hs} hair", f"{ec} eyes", ex, f"{st} style", bg,
                    details, *TABLES["quality"]["high"]])
    return PromptOutputs(prompt, _join(TABLES["negative"]))


class BatchOutputs(NamedTuple):
    images: Image
    labels: list[str]


@node("batch_over", category="compose", version=1)
def batch_over(image: Lazy[Image], vary: Target,
               values: Annotated[list[int | float | str], Field(min_length=1, max_length=256),
                                 Limit("repeats")]) -> BatchOutputs:
    """Evaluate the image sub-graph once per value, with `vary` (e.g. the sampler's seed or a
    text input) set to that value, and stack the results into one batch. Each item is cached
    on its own key; `labels` are the values as text (captions for a grid)."""
    import torch
    images = []
    for i, value in enumerate(values):
        out = image.get({(vary.node, vary.input): value})
        if images and out.pixels.shape[1:] != images[0].shape[1:]:
            raise NodeInputError("values", f"item {i} ({value!r}) gave a {tuple(out.pixels.shape[1:3])} image, "
                                           f"the first gave {tuple(images[0].shape[1:3])}")
        images.append(out.pixels)
    return BatchOutputs(Image(torch.cat(images)), [str(v) for v in values])


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:        # Pillow < 10.1 has one bitmap size
        return ImageFont.load_default()


@node("image_grid", category="compose", version=1)
def image_grid(images: Image, columns: Annotated[int, Field(ge=0, le=64, description="0 = square-ish")] = 0,
               captions: list[str] | None = None,
               caption_lines: Annotated[int, Field(ge=0, le=10)] = 2,
               padding: Annotated[int, Field(ge=0, le=256)] = 4,
               background: Annotated[float, Field(ge=0, le=1)] = 1.0) -> Image:
    """A contact sheet: the batch laid out in a grid, each cell with its caption (wrapped,
    shortened with an ellipsis) under it. Returns one image."""
    import torch
    import math

    import numpy as np
    from PIL import Image as PILImage, ImageDraw

    n, h, w = images.batch, images.height, images.width
    cols = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    font_size = max(8, min(16, w // 12))
    text_h = (font_size + 2) * caption_lines + 4 if captions else 0
    cell_w, cell_h = w + padding, h + text_h + padding
    shade = int(round(background * 255))
    sheet = PILImage.new("RGB", (cols * cell_w + padding, rows * cell_h + padding), (shade,) * 3)
    draw, font = ImageDraw.Draw(sheet), _font(font_size)
    ink = (0, 0, 0) if background > 0.5 else (255, 255, 255)
    chars = max(4, int(w / (font_size * 0.6)))
    for i in range(n):
        r, c = divmod(i, cols)
        x, y = padding + c * cell_w, padding + r * cell_h
        arr = (images.pixels[i].clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        sheet.paste(PILImage.fromarray(arr, "RGB"), (x, y))
        if captions and i < len(captions) and caption_lines:
            lines = textwrap.wrap(captions[i], chars, max_lines=caption_lines, placeholder="...")
            for j, line in enumerate(lines):
                draw.text((x + 2, y + h + 2 + j * (font_size + 2)), line, fill=ink, font=font)
    pixels = torch.from_numpy(np.asarray(sheet, dtype=np.float32) / 255.0)[None]
    return Image(pixels.contiguous())


@node("pick_image", category="compose", version=1)
def pick_image(images: Image, index: Annotated[int, Field(ge=0, le=4095)] = 0) -> Image:
    """One image of a batch."""
    if index >= images.batch:
        raise NodeInputError("index", f"the batch has {images.batch} images")
    return Image(images.pixels[index:index + 1])


@node("text_list", category="compose", version=1, output="texts")
def text_list(text: Annotated[str, Field(description="one item per line")]) -> list[str]:
    """Split text into a list, one item per non-empty line (prompts for a batch or captions)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


@node("image_batch", category="compose", version=1)
def image_batch(a: Image, b: Image) -> Image:
    """Concatenate two image batches (b is resized to a's size when they differ)."""
    import torch
    pixels = b.pixels
    if pixels.shape[1:3] != a.pixels.shape[1:3]:
        from .upscale import resample

        pixels = resample(pixels, a.width, a.height, "bicubic")
    return Image(torch.cat([a.pixels, pixels]))
