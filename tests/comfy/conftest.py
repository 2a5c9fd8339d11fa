"""ComfyUI workflow tests run on the models the project ships in models/ (shapes-tiny, its
Canny ControlNet and LCM-LoRA, the shapes 2x upscaler, the tiny SDXL base and refiner)."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = Path(__file__).parent / "workflows"
GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return REPO / "models"


@pytest.fixture
def settings(settings_factory):
    """Settings whose input folder holds the pictures the workflows load."""
    from PIL import Image, ImageDraw

    settings = settings_factory()
    square = Image.new("RGBA", (64, 64), (0, 0, 255, 255))
    ImageDraw.Draw(square).rectangle([16, 16, 47, 47], fill=(255, 0, 0, 255))
    ImageDraw.Draw(square).rectangle([0, 0, 15, 15], fill=(0, 0, 0, 0))     # transparent corner
    square.save(settings.input_dir / "square.png")
    mask = Image.new("RGB", (64, 64), (0, 0, 0))
    ImageDraw.Draw(mask).ellipse([20, 20, 44, 44], fill=(255, 255, 255))
    mask.save(settings.input_dir / "mask.png")
    return settings


@pytest.fixture(scope="session")
def registry():
    from engine import Registry

    return Registry.default()
