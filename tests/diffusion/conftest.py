"""Tiny-model fixtures for the diffusion node tests, built once per session from configs.

The models are random but fixed by their seeds, saved in the real formats (a diffusers
folder, and a single .safetensors file in the original SD key layout with its config
folder) under a temporary models folder, and loaded through the real loaders.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)   # two cores shared with other work: oversubscribing is slower

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


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


@pytest.fixture(scope="session")
def settings_factory(models_dir, tmp_path_factory):
    from engine import Settings

    def make(**changes) -> Settings:
        base = tmp_path_factory.mktemp("run")
        (base / "input").mkdir()
        values = dict(models_dirs=[models_dir], output_dir=base / "output", input_dir=base / "input")
        values.update(changes)
        return Settings(**values)
    return make


@pytest.fixture
def settings(settings_factory):
    return settings_factory()


@pytest.fixture
def executor(settings, shared_models):
    from engine import Executor

    return Executor(settings=settings, models=shared_models)


@pytest.fixture(scope="session")
def shared_models(models_dir):
    """One model manager for the session, so each tiny checkpoint is loaded once."""
    from engine.models import ModelManager, ModelPaths

    return ModelManager(ModelPaths([models_dir]))


@pytest.fixture
def ctx(settings, shared_models):
    """A Context for calling node functions directly."""
    from engine import CancelToken, Context, Graph

    return Context(node_id="test", node_type="test", run_id="test", settings=settings,
                   models=shared_models, graph=Graph(), params={}, cancel_token=CancelToken(),
                   publish=lambda event: None)


def load_graph(name: str):
    from engine import Graph

    return Graph.load(GRAPHS / name)
