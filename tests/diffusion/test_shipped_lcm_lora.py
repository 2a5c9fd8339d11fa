"""The shipped LCM-LoRA for shapes-tiny, through graphs/lcm_lora.json on the repository's own
models folder: 4 LCM steps at cfg 1 give the prompted colours."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from ..conftest import load_graph

REPO_MODELS = Path(__file__).resolve().parents[2] / "models"
LORA = "lcm-lora-shapes-tiny.safetensors"


@pytest.fixture
def models_dir() -> Path:
    """The shipped models instead of the session's tiny random ones (the shared fixtures build on this)."""
    return REPO_MODELS


@pytest.mark.parametrize("colour, shape, background, seed", [
    ("red", "circle", "blue", 0),
    ("yellow", "square", "black", 1),
    ("white", "triangle", "green", 2),
])
def test_four_lcm_steps_draw_the_prompted_colours(executor, colour, shape, background, seed):
    from tools.shapes.evaluate import analyse

    result = executor.run(load_graph("lcm_lora.json"), params={
        "model": "shapes-tiny", "lora": LORA, "seed": seed,
        "prompt": f"a {colour} {shape} on a {background} background"})
    [path] = result.outputs["save"]["files"]
    image = np.asarray(PILImage.open(path).convert("RGB"))
    found = analyse(image)
    assert (found["colour"], found["background"]) == (colour, background)

    # the LoRA is really applied: at strength 0 the same seed gives another image
    without = executor.run(load_graph("lcm_lora.json"), params={
        "model": "shapes-tiny", "lora": LORA, "seed": seed, "strength": 0.0,
        "prompt": f"a {colour} {shape} on a {background} background"}).outputs["save"]["files"][0]
    assert np.abs(np.asarray(PILImage.open(without).convert("RGB")).astype(int) - image).mean() > 1
