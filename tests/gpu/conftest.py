"""GPU-only tests: they need CUDA and skip cleanly without it (the CI machines have none)."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from tools.make_tiny_model import make_sd_pipeline

    root = tmp_path_factory.mktemp("models")
    make_sd_pipeline(seed=0).save_pretrained(root / "checkpoints" / "tiny-sd")
    return root
