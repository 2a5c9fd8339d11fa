"""Test nodes for batches: an item that takes a while, writes an image and notes that it
finished in a journal (so a test counts completions), and fails for listed seeds."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from engine import Context, node


@node("test.batch_item", category="test", cache=False, output_node=True)
def batch_item(ctx: Context, seed: int, seconds: float = 0.0, journal: str = "",
               fail_seeds_file: str = "") -> str:
    """Draw a 4x4 PNG for `seed` after `seconds`; fail if `seed` is listed in `fail_seeds_file`."""
    from PIL import Image

    time.sleep(seconds)
    if fail_seeds_file and seed in json.loads(Path(fail_seeds_file).read_text() or "[]"):
        raise ValueError(f"seed {seed} is on the fail list")
    ctx.output_dir.mkdir(parents=True, exist_ok=True)
    path = ctx.output_dir / f"item-{seed}.png"
    Image.new("RGB", (4, 4), (seed % 256, 0, 0)).save(path)
    if journal:
        with open(journal, "a") as f:
            f.write(f"{seed}\n")
            f.flush()
            os.fsync(f.fileno())
    return str(path)
