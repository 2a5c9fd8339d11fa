"""Annotator weights are pickles that controlnet-aux reads with a bare torch.load: Loom only
lets it do so where that call is the restricted weights-only unpickler."""
from __future__ import annotations

import pathlib
import re

import pytest
import torch

from engine import CancelToken, Context, Graph, NodeInputError, Settings
from engine.models import ModelManager, ModelPaths

REPO = pathlib.Path(__file__).resolve().parents[2]


class Payload:
    """Unpickling this creates a file: what a hostile "weights" file could do instead."""

    def __init__(self, marker: pathlib.Path):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (self.marker,)


@pytest.fixture
def hostile_annotator(tmp_path):
    folder = tmp_path / "models" / "annotators"
    folder.mkdir(parents=True)
    marker = tmp_path / "code-ran"
    torch.save({"weight": Payload(marker)}, folder / "ControlNetHED.pth")
    settings = Settings(models_dirs=[tmp_path / "models"], output_dir=tmp_path / "out",
                        input_dir=tmp_path / "in", allow_pickle=True)
    ctx = Context("hint", "preprocess", "run", settings, ModelManager(ModelPaths(settings.models_dirs)),
                  Graph(), {}, CancelToken(), lambda event: None)
    return ctx, marker


def hint_of(ctx):
    from nodes.preprocess import preprocess
    from nodes.types import Image

    return preprocess(ctx, Image(torch.rand(1, 64, 64, 3)), "hed", resolution=64)


def test_a_forced_full_unpickler_is_refused_before_the_file_is_read(hostile_annotator, monkeypatch):
    ctx, marker = hostile_annotator
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(NodeInputError, match="TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"):
        hint_of(ctx)
    assert not marker.exists()


def test_a_hostile_annotator_file_never_runs_code(hostile_annotator):
    ctx, marker = hostile_annotator
    with pytest.raises(Exception, match="(?i)weights.only|unpickl|global"):
        hint_of(ctx)
    assert not marker.exists()


def test_the_torch_floor_makes_bare_torch_load_weights_only():
    floor = re.search(r'"torch>=(\d+)\.(\d+)', (REPO / "pyproject.toml").read_text())
    assert (int(floor[1]), int(floor[2])) >= (2, 6), floor[0]
