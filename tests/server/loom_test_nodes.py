"""Node types the server tests run: slow steps (cancel, kill -9), files, failures, never-cached work.

Loaded into the server process with `python -m server --nodes loom_test_nodes`
(PYTHONPATH=tests/server). Each node that finishes appends a line to a journal file
when `journal` is given, so a test can count how many times a run really completed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated

from pydantic import Field

from engine import node
from engine.context import Context


@node("test.steps", category="test", cache=False)
def steps(ctx: Context, steps: Annotated[int, Field(ge=1, le=10_000)] = 10,
          seconds_per_step: Annotated[float, Field(ge=0, le=10)] = 0.05,
          tag: str = "", journal: str = "") -> str:
    """Sleep `steps` times, reporting progress (and so checking cancellation) every step."""
    for i in range(steps):
        time.sleep(seconds_per_step)
        ctx.progress(i + 1, steps)
    if journal:
        with open(journal, "a") as f:
            f.write(f"{ctx.run_id} {tag}\n")
            f.flush()
            os.fsync(f.fileno())
    return tag or "done"


@node("test.image_size", category="test")
def image_size(width: int = 64, height: int = 64, batch_size: int = 1) -> int:
    """Pretends to make an image; only the limits checker cares about its inputs."""
    return width * height * batch_size


@node("test.write_file", category="test", cache=False)
def write_file(ctx: Context, text: str = "hello", prefix: str = "note") -> str:
    """Write `text` to a new file in the output folder and return its path."""
    folder = ctx.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{ctx.run_id}.txt"
    path.write_text(text)
    return str(path)


@node("test.write_png", category="test", cache=False)
def write_png(ctx: Context, size: int = 8) -> str:
    from PIL import Image

    folder = ctx.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"image-{ctx.run_id}.png"
    Image.new("RGB", (size, size), (200, 30, 30)).save(path)
    return str(path)


@node("test.read_input", category="test", cache=False)
def read_input(ctx: Context, image: str) -> int:
    """Size in bytes of a file in the input folder (what a load-image node would open)."""
    return Path(ctx.settings.input_dir, image).stat().st_size


@node("test.fail", category="test", cache=False)
def fail(message: str = "boom") -> str:
    raise RuntimeError(message)


@node("test.tensor", category="test")
def tensor(n: int = 3) -> object:
    import numpy as np

    return np.zeros((n, 2), dtype="float32")


@node("test.chatter", category="test", cache=False)
def chatter(ctx: Context, events: Annotated[int, Field(ge=1, le=1_000_000)] = 1000,
            pad: str = "", pause: float = 0.0) -> int:
    """Report progress `events` times, `pause` seconds apart (a flood for slow event clients)."""
    for i in range(events):
        ctx.progress(i + 1, events, pad=pad)
        if pause:
            time.sleep(pause)
    return events
