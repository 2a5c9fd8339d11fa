"""The avatar tests run on the shipped models (models/checkpoints/avatars-tiny, the attribute
checker in models/classifiers, the shapes 2x upscaler), loaded through the real loaders."""
from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return REPO / "models"
