"""Preprocessors keep no hidden state: the content shuffle draws from its own generator, and a
weighted detector is held in memory under its files' content, not their names."""
from __future__ import annotations

import numpy as np
import torch

from engine import CancelToken, Context, Graph
from nodes.preprocess import content_shuffle, preprocess
from nodes.types import Image


def test_content_shuffle_never_touches_numpys_global_generator(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the process-wide RNG is shared by every run")

    for name in ("seed", "get_state", "set_state", "uniform", "rand"):
        monkeypatch.setattr(np.random, name, forbidden)
    x = torch.rand(2, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    first, again, other = (content_shuffle(Image(x), seed).pixels for seed in (1, 1, 2))
    assert first.shape == (2, 48, 64, 3) and torch.equal(first, again) and not torch.equal(first, other)
    assert not torch.equal(first, x)


def test_an_edited_annotator_file_is_a_different_model(settings_factory, models_dir, monkeypatch):
    from engine.models import ModelManager, ModelPaths

    folder = models_dir / "annotators"
    folder.mkdir(exist_ok=True)
    weights = folder / "mlsd_large_512_fp32.pth"
    identities = []

    class Recording(ModelManager):
        def get(self, identity, load):
            identities.append(identity)
            return lambda array, **kwargs: array

    settings = settings_factory(allow_pickle=True)
    ctx = Context("p", "preprocess", "run", settings, Recording(ModelPaths([models_dir])), Graph(), {},
                  CancelToken(), lambda event: None)
    image = Image(torch.rand(1, 64, 64, 3))
    try:
        weights.write_bytes(b"first weights")
        preprocess(ctx, image, "mlsd")
        weights.write_bytes(b"other weights")
        preprocess(ctx, image, "mlsd")
    finally:
        weights.unlink()
    assert len(identities) == 2 and identities[0] != identities[1]
