"""Tiny random SD3 and FLUX models for the family tests, built once per session from configs and
saved in the real formats (diffusers folders, single files in the released key layouts, split
files in the ComfyUI layout), then loaded through the real loaders."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from tools.make_tiny_model import make_flux_pipeline, make_sd3_pipeline, write_split_files

    root = tmp_path_factory.mktemp("models")
    sd3 = make_sd3_pipeline(seed=0)
    sd3.save_pretrained(root / "checkpoints" / "tiny-sd3")
    write_split_files(sd3, root, "tiny-sd3")
    flux = make_flux_pipeline(seed=0)
    flux.save_pretrained(root / "checkpoints" / "tiny-flux")
    write_split_files(flux, root, "tiny-flux")
    return root
