"""Judging a 64x64 portrait with plain pixel statistics, independent of the shipped
attribute checker: the colour of the crown of the head and the kind of background seen in
the strips beside the head."""
from __future__ import annotations

import numpy as np

from tools.avatars.data import GRASS, HAIR_COLOURS, SKY

CROWN = (slice(10, 18), slice(26, 39))        # hair for every style, whatever the jitter
SIDES = (slice(0, 6), slice(58, 64))           # columns never covered by hair or head


def hair_colour(image: np.ndarray) -> str | None:
    """The hair colour word most crown pixels are close to (outlines and skin vote for
    nothing unless they are close to a hair colour); None when no pixel is."""
    crown = image[CROWN].reshape(-1, 1, 3).astype(float)
    palette = np.array(list(HAIR_COLOURS.values()), dtype=float)
    distances = np.linalg.norm(crown - palette, axis=-1)
    votes = distances.argmin(-1)[distances.min(-1) < 70]
    if votes.size == 0:
        return None
    return list(HAIR_COLOURS)[np.bincount(votes, minlength=len(palette)).argmax()]


def _near(pixels: np.ndarray, colour, tolerance: float = 60) -> np.ndarray:
    return np.linalg.norm(pixels.astype(float) - np.array(colour), axis=-1) < tolerance


def background_kind(image: np.ndarray) -> str:
    """simple (one flat colour), gradient (flat rows whose colour changes from top to
    bottom), nature (sky above, grass below) or abstract (anything busier)."""
    upper = np.concatenate([image[:40, SIDES[0]], image[:40, SIDES[1]]], axis=1).astype(float)
    lower = np.concatenate([image[54:, SIDES[0]], image[54:, SIDES[1]]], axis=1)
    if _near(upper, SKY).mean() > 0.5 and _near(lower, GRASS).mean() > 0.5:
        return "nature background"
    rows = upper.mean(axis=1)                                    # [40, 3]
    across = np.abs(upper - rows[:, None]).mean()                 # spread within rows
    if across > 12:
        return "abstract background"
    if np.abs(np.diff(rows, axis=0)).max() > 20:                  # a jump: shapes, not a ramp
        return "abstract background"
    return "gradient background" if np.linalg.norm(rows[0] - rows[-1]) > 30 else "simple background"
