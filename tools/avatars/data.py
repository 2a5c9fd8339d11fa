"""Procedurally drawn cartoon portraits and their captions.

Every portrait is a pure function of its spec (attributes plus the unlabelled
variation: skin tone, shirt, head position, scenery), and the spec is a pure
function of (split, index, seed), so any image can be redrawn from its index.
Captions are made by the avatar prompt node itself, so the prompts a graph builds
are exactly the training captions.
"""

import hashlib
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from nodes.compose import avatar_prompt
from nodes.draw import SUPERSAMPLE

IMAGE_SIZE = 64

# The attribute values this drawer can make readable at 64x64: a subset of the avatar
# tables in nodes/data/prompt_tables.json (same words, so prompts stay in-domain).
HAIR_COLOURS: dict[str, tuple[int, int, int]] = {
    "blonde": (240, 205, 95),
    "brunette": (120, 70, 35),
    "black": (28, 24, 24),
    "red": (205, 45, 25),
    "white": (238, 238, 238),
    "blue": (45, 85, 225),
    "pink": (245, 120, 185),
}
HAIR_STYLES = ["short", "long flowing", "curly", "braided"]
EYE_COLOURS: dict[str, tuple[int, int, int]] = {
    "blue": (40, 110, 235),
    "green": (30, 165, 55),
    "brown": (110, 55, 15),
}
EXPRESSIONS = ["smiling", "serious"]
BACKGROUNDS = ["simple background", "gradient background", "nature background", "abstract background"]
STYLE = "cartoon"
GLASSES_DETAIL = "glasses"
GLASSES_SHARE = 0.25

ATTRIBUTES: dict[str, list[str]] = {
    "hair_color": list(HAIR_COLOURS),
    "hair_style": HAIR_STYLES,
    "eye_color": list(EYE_COLOURS),
    "expression": EXPRESSIONS,
    "background": BACKGROUNDS,
    "glasses": ["no", "yes"],
}

SKIN_TONES = [(255, 226, 200), (240, 196, 160), (218, 168, 122), (180, 125, 88)]
SHIRTS = [(90, 90, 160), (170, 60, 60), (60, 130, 90), (200, 170, 60), (120, 120, 120), (150, 90, 170)]
PLAIN_COLOURS = [(200, 220, 240), (236, 232, 200), (206, 238, 210), (240, 212, 212), (205, 205, 210), (230, 215, 240)]
GRADIENT_COLOURS = [(250, 200, 120), (120, 160, 240), (240, 130, 150), (150, 230, 200), (90, 70, 160), (250, 240, 160)]
ABSTRACT_COLOURS = [(255, 60, 60), (60, 200, 255), (255, 200, 0), (0, 200, 120), (160, 60, 255), (255, 120, 0)]
SKY, GRASS, SUN = (130, 195, 240), (70, 165, 65), (255, 230, 90)
OUTLINE = (35, 25, 25)

HELD_OUT_ONE_IN = 10


@dataclass(frozen=True)
class AvatarSpec:
    hair_color: str
    hair_style: str
    eye_color: str
    expression: str
    background: str
    glasses: bool
    skin: int
    shirt: int
    dx: int
    dy: int
    scenery: int  # seeds the background's colours and layout

    @property
    def attributes(self) -> dict[str, str]:
        return {
            "hair_color": self.hair_color,
            "hair_style": self.hair_style,
            "eye_color": self.eye_color,
            "expression": self.expression,
            "background": self.background,
            "glasses": "yes" if self.glasses else "no",
        }

    @property
    def caption(self) -> str:
        return avatar_prompt(
            hair_style=self.hair_style,
            hair_color=self.hair_color,
            eye_color=self.eye_color,
            style=STYLE,
            expression=self.expression,
            background=self.background,
            details=GLASSES_DETAIL if self.glasses else "",
        ).prompt

    def is_held_out(self) -> bool:
        digest = hashlib.sha256(repr(self).encode()).hexdigest()
        return int(digest, 16) % HELD_OUT_ONE_IN == 0


def random_spec(rng: random.Random) -> AvatarSpec:
    return AvatarSpec(
        hair_color=rng.choice(list(HAIR_COLOURS)),
        hair_style=rng.choice(HAIR_STYLES),
        eye_color=rng.choice(list(EYE_COLOURS)),
        expression=rng.choice(EXPRESSIONS),
        background=rng.choice(BACKGROUNDS),
        glasses=rng.random() < GLASSES_SHARE,
        skin=rng.randrange(len(SKIN_TONES)),
        shirt=rng.randrange(len(SHIRTS)),
        dx=rng.randint(-2, 2),
        dy=rng.randint(-2, 2),
        scenery=rng.randrange(10**6),
    )


def spec_for(split: str, index: int, seed: int = 0) -> AvatarSpec:
    """The index-th portrait of a split ("train" or "eval"); redrawn until it falls on
    the right side of the held-out line."""
    rng = random.Random(f"avatar:{split}:{seed}:{index}")
    want_held_out = split == "eval"
    while True:
        spec = random_spec(rng)
        if spec.is_held_out() == want_held_out:
            return spec


# --- drawing (coordinates in 64-pixel units, scaled by the supersampling factor) ---


class _Canvas:
    """Draws in the 64-unit coordinates of the portrait onto a supersampled image of any size."""

    def __init__(self, image: Image.Image, dx: int, dy: int):
        self.draw = ImageDraw.Draw(image)
        self.dx, self.dy = dx, dy
        self.unit = image.size[0] // IMAGE_SIZE   # pixels per unit: SUPERSAMPLE x the output's scale

    def _box(self, x0, y0, x1, y1):
        s = self.unit
        return [(x0 + self.dx) * s, (y0 + self.dy) * s, (x1 + self.dx) * s - 1, (y1 + self.dy) * s - 1]

    def _points(self, points):
        return [((x + self.dx) * self.unit, (y + self.dy) * self.unit) for x, y in points]

    def ellipse(self, box, fill=None, outline=OUTLINE, width=1.0):
        self.draw.ellipse(self._box(*box), fill=fill, outline=outline, width=round(width * self.unit))

    def rectangle(self, box, fill=None, outline=None, width=1.0, radius=0.0):
        self.draw.rounded_rectangle(self._box(*box), radius=radius * self.unit, fill=fill,
                                    outline=outline, width=round(width * self.unit))

    def polygon(self, points, fill=None, outline=None):
        self.draw.polygon(self._points(points), fill=fill, outline=outline)

    def line(self, points, fill=OUTLINE, width=1.0):
        self.draw.line(self._points(points), fill=fill, width=round(width * self.unit), joint="curve")

    def arc(self, box, start, end, fill=OUTLINE, width=1.0):
        self.draw.arc(self._box(*box), start, end, fill=fill, width=round(width * self.unit))


def _background(image: Image.Image, spec: AvatarSpec) -> None:
    rng = random.Random(spec.scenery)
    size = image.size[0]
    canvas = _Canvas(image, 0, 0)
    if spec.background == "simple background":
        image.paste(rng.choice(PLAIN_COLOURS), (0, 0, size, size))
    elif spec.background == "gradient background":
        top, bottom = rng.sample(GRADIENT_COLOURS, 2)
        ramp = np.linspace(0, 1, size)[:, None, None]
        pixels = (1 - ramp) * np.array(top) + ramp * np.array(bottom)
        image.paste(Image.fromarray(np.broadcast_to(pixels, (size, size, 3)).astype(np.uint8)))
    elif spec.background == "nature background":
        image.paste(SKY, (0, 0, size, size))
        horizon = rng.randint(40, 46)
        canvas.ellipse((-20, horizon, 84, horizon + 60), fill=GRASS, outline=None)
        sun_x = rng.choice([2, 50])
        canvas.ellipse((sun_x, 3, sun_x + 11, 14), fill=SUN, outline=None)
        for _ in range(2):  # clouds
            cx, cy = rng.randint(0, 60), rng.randint(4, 20)
            canvas.ellipse((cx - 6, cy - 2, cx + 6, cy + 3), fill=(250, 250, 250), outline=None)
    else:  # abstract: bold overlapping shapes on a saturated base
        base, *others = rng.sample(ABSTRACT_COLOURS, 4)
        image.paste(base, (0, 0, size, size))
        for i in range(7):
            x, y, r = rng.randint(-4, 60), rng.randint(-4, 60), rng.randint(6, 14)
            colour = others[i % len(others)]
            if i % 2:
                canvas.ellipse((x - r, y - r, x + r, y + r), fill=colour, outline=None)
            else:
                canvas.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=colour)


def _hair_back(canvas: _Canvas, spec: AvatarSpec, hair) -> None:
    """Hair that shows behind the face and shoulders."""
    if spec.hair_style == "long flowing":
        canvas.rectangle((14, 12, 50, 62), fill=hair, outline=OUTLINE, radius=12)
    elif spec.hair_style == "curly":
        for x, y in [(16, 20), (14, 28), (15, 36), (17, 43), (48, 20), (50, 28), (49, 36), (47, 43),
                     (20, 13), (27, 9), (35, 9), (42, 13), (32, 7)]:
            canvas.ellipse((x - 6, y - 6, x + 6, y + 6), fill=hair)
    elif spec.hair_style == "braided":
        for x in (16, 48):
            for y in range(30, 60, 5):
                canvas.ellipse((x - 4, y - 3, x + 4, y + 3), fill=hair)
            canvas.ellipse((x - 2, 57, x + 2, 61), fill=(230, 60, 80))  # hair tie


def _hair_front(canvas: _Canvas, spec: AvatarSpec, hair) -> None:
    """The crown and fringe drawn over the top of the face."""
    if spec.hair_style == "curly":
        for x in range(21, 45, 5):
            canvas.ellipse((x - 4, 15, x + 4, 24), fill=hair)
        return
    canvas.ellipse((18, 11, 46, 33), fill=hair)
    canvas.polygon([(18.5, 24), (20, 16), (32, 13), (44, 16), (45.5, 24), (38, 21), (30, 23), (24, 21)], fill=hair)
    if spec.hair_style == "short":
        # Cropped sides: the crown stops above the ears.
        canvas.polygon([(18, 22), (21, 29), (22, 22)], fill=hair)
        canvas.polygon([(46, 22), (43, 29), (42, 22)], fill=hair)


def _face(canvas: _Canvas, spec: AvatarSpec) -> None:
    skin = SKIN_TONES[spec.skin]
    canvas.ellipse((18, 18, 46, 49), fill=skin)
    iris = EYE_COLOURS[spec.eye_color]
    for cx in (26, 38):
        canvas.ellipse((cx - 4.5, 29, cx + 4.5, 37), fill=(255, 255, 255), width=0.75)
        canvas.ellipse((cx - 3, 30, cx + 3, 36), fill=iris, outline=None)
        canvas.ellipse((cx - 1.2, 31.8, cx + 1.2, 34.2), fill=(10, 10, 10), outline=None)
    if spec.glasses:
        for cx in (26, 38):
            canvas.ellipse((cx - 6, 27, cx + 6, 39), fill=None, width=1.25)
        canvas.line([(31.5, 32), (32.5, 32)], width=1.25)
    if spec.expression == "smiling":
        canvas.draw.chord(canvas._box(26, 37, 38, 46), 0, 180, fill=(150, 30, 40), outline=OUTLINE,
                          width=canvas.unit)
    else:
        canvas.line([(28, 43), (36, 43)], width=1.25)


def render(spec: AvatarSpec, scale: int = 1) -> Image.Image:
    """The portrait at IMAGE_SIZE x scale pixels (scale 2 is the ground truth of a 2x upscale)."""
    size = IMAGE_SIZE * scale
    big = size * SUPERSAMPLE
    image = Image.new("RGB", (big, big))
    _background(image, spec)
    canvas = _Canvas(image, spec.dx, spec.dy)
    hair = HAIR_COLOURS[spec.hair_color]
    _hair_back(canvas, spec, hair)
    canvas.ellipse((8, 52, 56, 80), fill=SHIRTS[spec.shirt])  # shoulders
    canvas.rectangle((28, 44, 36, 54), fill=SKIN_TONES[spec.skin])  # neck
    if spec.hair_style == "long flowing":  # locks falling over the shoulders
        for x0 in (14, 42):
            canvas.rectangle((x0, 24, x0 + 8, 62), fill=hair, outline=OUTLINE, radius=4)
    _face(canvas, spec)
    _hair_front(canvas, spec, hair)
    return image.resize((size, size), Image.Resampling.BOX)


def to_tensor_array(image: Image.Image) -> np.ndarray:
    """HWC uint8 -> CHW float32 in [-1, 1], the range the VAE works in."""
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
