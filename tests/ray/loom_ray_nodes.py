"""A node that loads a "model" through the model manager, for affinity tests on Ray workers.

The model file is any file under MODELS/checkpoints; its content hash is the node's
fingerprint and the model's identity, as with the real checkpoint loader.
"""
from __future__ import annotations

import time
from pathlib import Path

from engine import Context, node
from engine.models import ModelPaths, file_digest


def _model_fingerprint(name: str, *, settings, **_) -> str:
    return file_digest(ModelPaths(settings.models_dirs).resolve("checkpoints", name))


@node("test.load_model", category="test", fingerprint=_model_fingerprint)
def load_model(ctx: Context, name: str, load_seconds: float = 0.05) -> str:
    """Load (pretend: sleep) a checkpoint once per worker; returns its digest."""
    digest = file_digest(ctx.models.paths.resolve("checkpoints", name))

    def load() -> str:
        time.sleep(load_seconds)
        return digest

    return ctx.models.get(("test-model", digest), load)


@node("test.use_model", category="test", cache=False)
def use_model(model: str, seconds: float = 0.05) -> str:
    """Work with a loaded model (never cached, so every run reaches its loader)."""
    time.sleep(seconds)
    return model[:8]
