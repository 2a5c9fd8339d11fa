"""Tiny-model fixtures for the diffusion node tests, built once per session from configs.

The models are random but fixed by their seeds, saved in the real formats (a diffusers
folder, and a single .safetensors file in the original SD key layout with its config
folder) under a temporary models folder, and loaded through the real loaders.
"""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory) -> Path:
    from safetensors.torch import save_file

    from tools.make_tiny_model import (make_sd_pipeline, make_sdxl_pipeline, make_sdxl_refiner_pipeline,
                                      save_configs, to_original_sd, write_lora)

    root = tmp_path_factory.mktemp("models")
    sd = make_sd_pipeline(seed=0)
    sd.save_pretrained(root / "checkpoints" / "tiny-sd")
    sd.save_pretrained(root / "checkpoints" / "shapes-tiny")   # the name the shipped graphs use
    save_file(to_original_sd(sd), str(root / "checkpoints" / "tiny-sd-single.safetensors"))
    save_configs(sd, root / "configs" / "tiny-sd-single")
    sdxl = make_sdxl_pipeline(seed=0)
    sdxl.save_pretrained(root / "checkpoints" / "tiny-sdxl")
    make_sdxl_refiner_pipeline(seed=1, vae=sdxl.vae).save_pretrained(root / "checkpoints" / "tiny-sdxl-refiner")
    make_sd_pipeline(seed=1, in_channels=9).save_pretrained(root / "checkpoints" / "tiny-sd-inpainting")
    write_lora(make_sd_pipeline(seed=0).unet, root / "loras", "lcm-lora-wiring-fixture.safetensors", seed=5)
    return root


