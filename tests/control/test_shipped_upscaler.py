"""The shipped 2x upscalers (models/upscale_models/shapes-2x-compact and avatars-2x-compact) load
through the load_upscale_model node from the repository's models folder and beat lanczos on
drawings of their domain they never saw."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

MODELS = Path(__file__).resolve().parents[2] / "models"


@pytest.fixture
def models_dir() -> Path:
    """The repository's own models folder, not the session's tiny one."""
    return MODELS


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(10 * torch.log10(1 / torch.mean((a.clamp(0, 1) - b) ** 2)))


def _shapes_pair(index: int):
    from tools.shapes import data
    from tools.train_upscaler import draw

    spec = data.spec_for("eval", index)
    return data.render(spec), draw(spec, 2)


def _avatars_pair(index: int):
    from tools.avatars import data

    spec = data.spec_for("eval", index)
    return data.render(spec), data.render(spec, scale=2)


def _pixels(image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)[None]


@pytest.mark.parametrize("name, held_out_pair", [("shapes-2x-compact.safetensors", _shapes_pair),
                                                 ("avatars-2x-compact.safetensors", _avatars_pair)])
def test_shipped_upscaler_beats_lanczos_on_held_out_drawings(ctx, name, held_out_pair):
    from nodes.types import Image
    from nodes.upscale import load_upscale_model, resample, upscale_with_model

    assert (MODELS / "upscale_models" / name).stat().st_size < 1_000_000
    model = load_upscale_model(ctx, name)
    assert model.scale == 2 and "Compact" in model.architecture

    gains = []
    for index in range(4):                                     # "eval" specs: never drawn in training
        small, large = (_pixels(image) for image in held_out_pair(index))
        up = upscale_with_model(ctx, model, Image(small)).pixels
        assert up.shape == (1, 128, 128, 3)
        gains.append(_psnr(up, large) - _psnr(resample(small, 128, 128, "lanczos"), large))
    assert min(gains) > 1.0 and sum(gains) / len(gains) > 1.5, gains
