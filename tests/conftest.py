"""Fixtures shared by the node test folders. Each folder provides its own `models_dir`
(tiny models built once per session); what is built on it is the same everywhere."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
torch.set_num_threads(1)   # two cores shared with other work: oversubscribing is slower

GRAPHS = Path(__file__).resolve().parents[1] / "graphs"


def load_graph(name: str):
    """A graph file from graphs/."""
    from engine import Graph

    return Graph.load(GRAPHS / name)


_MODEL_MANAGERS: dict = {}


@pytest.fixture
def shared_models(models_dir):
    """One model manager per models folder for the whole session, so each tiny model is loaded
    once (a session-scoped fixture here would bind the first folder's `models_dir` for all)."""
    from engine.models import ModelManager, ModelPaths

    if models_dir not in _MODEL_MANAGERS:
        _MODEL_MANAGERS[models_dir] = ModelManager(ModelPaths([models_dir]))
    return _MODEL_MANAGERS[models_dir]


@pytest.fixture
def settings_factory(models_dir, tmp_path_factory):
    """Settings with fresh output and input folders; keyword arguments override fields."""
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


@pytest.fixture
def ctx(settings, shared_models):
    """A Context for calling node functions directly."""
    from engine import CancelToken, Context, Graph

    return Context(node_id="test", node_type="test", run_id="test", settings=settings,
                   models=shared_models, graph=Graph(), params={}, cancel_token=CancelToken(),
                   publish=lambda event: None)
