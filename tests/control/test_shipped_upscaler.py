"""The shipped 2x upscaler (models/upscale_models/shapes-2x-compact.safetensors) loads through the
load_upscale_model node from the repository's models folder and beats lanczos on drawings it never saw."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

MODELS = Path(__file__).resolve().parents[2] / "models"
NAME = "shapes-2x-compact.safetensors"


@pytest.fixture
def models_dir() -> Path:
    """The repository's own models folder, not the session's tiny one."""
    return MODELS


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a.clamp(0, 1) - b) ** 2)))


def test_shipped_upscaler_beats_lanczos_on_held_out_drawings(ctx):
    from nodes.types import Image
    from nodes.upscale import load_upscale_model, resample, upscale_with_model
    from tools.shapes import data
    from tools.train_upscaler import draw

    assert (MODELS / "upscale_models" / NAME).stat().st_size < 1_000_000
    model = load_upscale_model(ctx, NAME)
    assert model.scale == 2 and "Compact" in model.architecture

    gains = []
    for index in range(4):                                     # "eval" specs: never drawn in training
        spec = data.spec_for("eval", index)
        small = torch.from_numpy(np.asarray(data.render(spec), dtype=np.float32) / 255)[None]
        target = torch.from_numpy(np.asarray(draw(spec, 2), dtype=np.float32) / 255)[None]
        up = upscale_with_model(ctx, model, Image(small)).pixels
        assert up.shape == (1, 128, 128, 3)
        gains.append(_psnr(up, target) - _psnr(resample(small, 128, 128, "lanczos"), target))
    assert min(gains) > 1.0 and sum(gains) / len(gains) > 1.5, gains
