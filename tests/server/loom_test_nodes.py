"""Node types the server tests run: slow steps (cancel, kill -9), files, failures, never-cached work.

Loaded into the server process with `python -m server --nodes loom_test_nodes`
(PYTHONPATH=tests/server). Each node that finishes appends a line to a journal file
when `journal` is given, so a test can count how many times a run really completed.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field

from engine import node
from engine.context import Context
from engine.limits import Limit
from engine.types import OutputFile, file_input, model_name


@node("test.steps", category="test", cache=False)
def steps(ctx: Context, steps: Annotated[int, Field(ge=1, le=10_000), Limit("steps")] = 10,
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
def image_size(width: Annotated[int, Limit("width"), Limit("pixels")] = 64,
               height: Annotated[int, Limit("height"), Limit("pixels")] = 64,
               batch_size: Annotated[int, Limit("batch")] = 1) -> int:
    """Pretends to make an image: declares the limits an image maker would."""
    return width * height * batch_size


@node("test.write_file", category="test", cache=False, output_node=True)
def write_file(ctx: Context, text: str = "hello",
               prefix: file_input("output") = "note") -> OutputFile:
    """Write `text` to a new file in the output folder and return its path."""
    folder = ctx.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{prefix}-{ctx.run_id}.txt"
    path.write_text(text)
    return str(path)


@node("test.write_png", category="test", cache=False, output_node=True)
def write_png(ctx: Context, size: int = 8) -> OutputFile:
    from PIL import Image

    folder = ctx.output_dir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"image-{ctx.run_id}.png"
    Image.new("RGB", (size, size), (200, 30, 30)).save(path)
    return str(path)


@node("test.read_input", category="test", cache=False)
def read_input(ctx: Context, image: file_input("input")) -> int:
    """Size in bytes of a file in the input folder (what a load-image node would open)."""
    return Path(ctx.settings.input_dir, image).stat().st_size


@node("test.name_a_file", category="test", cache=False)
def name_a_file(ctx: Context, name: str) -> str:
    """A string that happens to name a file in the output folder (this node wrote nothing)."""
    return str(ctx.output_dir / name)


@node("test.reject", category="test")
def reject(value: Any) -> bool:
    """A check that never passes, whatever it is given (drives retries to their last try)."""
    return False


@node("test.model_bytes", category="test", cache=False)
def model_bytes(ctx: Context, name: model_name("checkpoints")) -> int:
    """Size of a checkpoint file (what a loader would open)."""
    return ctx.models.paths.resolve("checkpoints", name).stat().st_size


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
