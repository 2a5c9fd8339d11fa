"""The SD3.5 and FLUX example graphs run as shipped (on the random-weight wiring models in
models/), and the cache reruns only what an edit touches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.conftest import load_graph

ROOT = Path(__file__).resolve().parents[2]
FAST = {"steps": 2}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """An executor on the project's own models folder, with one model manager for the module."""
    from engine import Executor, Settings
    from engine.models import ModelManager, ModelPaths

    base = tmp_path_factory.mktemp("shipped")
    settings = Settings(models_dirs=[ROOT / "models"], output_dir=base / "output", input_dir=base / "input")
    models = ModelManager(ModelPaths(settings.models_dirs))
    return lambda: Executor(settings=settings, models=models)


def _image(result, node="save"):
    from PIL import Image

    return np.asarray(Image.open(result.outputs[node]["files"][0]))


@pytest.mark.parametrize("graph", ["sd35.json", "flux.json", "flux_img2img.json", "flux_controlnet.json"])
def test_graph_runs_as_shipped(shipped, graph):
    result = shipped().run(load_graph(graph), params=FAST)
    image = _image(result)
    assert result.status == "succeeded" and image.shape == (64, 64, 3) and image.std() > 1


def test_a_prompt_edit_reruns_only_that_encoder_and_what_follows(shipped):
    executor, graph = shipped(), load_graph("sd35.json")
    executor.run(graph, params=FAST)
    result = executor.run(graph, params={**FAST, "prompt": "a blue square on a white background"})
    assert set(result.ran) == {"pos", "sampler", "decode", "save"}
    assert {"ckpt", "neg", "latent"} <= set(result.cached)


def test_a_flux_prompt_edit_keeps_the_loaded_parts(shipped):
    executor, graph = shipped(), load_graph("flux.json")
    executor.run(graph, params=FAST)
    result = executor.run(graph, params={**FAST, "prompt": "a green triangle"})
    assert set(result.ran) == {"pos", "sampler", "decode", "save"}


def test_a_guidance_edit_reruns_only_the_sampler_and_below(shipped):
    executor, graph = shipped(), load_graph("flux.json")
    first = executor.run(graph, params=FAST)
    result = executor.run(graph, params={**FAST, "guidance": 5.0})
    assert set(result.ran) == {"sampler", "decode", "save"}
    assert not np.array_equal(_image(first), _image(result)), "guidance must reach the transformer"


def test_the_flux_controlnet_steers_and_a_strength_edit_reruns_only_its_apply_node_and_below(shipped):
    executor, graph = shipped(), load_graph("flux_controlnet.json")
    guided = executor.run(graph, params=FAST)
    result = executor.run(graph, params={**FAST, "strength": 0.0})
    assert set(result.ran) == {"apply_cn", "sampler", "decode", "save"}
    assert {"unet", "ae", "hint", "load_cn", "pos"} <= set(result.cached)
    assert not np.array_equal(_image(guided), _image(result)), "the ControlNet must reach the transformer"
