"""Loom's built-in node library, registered through the `loom.nodes` entry point.

Every module in this package is scanned for `@node` functions; a new family is a
new module, nothing to list here. Modules keep heavy imports (diffusers,
transformers, ...) inside the node functions so the catalogue loads fast.
"""
from __future__ import annotations

import importlib
import os
import pkgutil

# Models come from local folders only: no code path may reach a model hub. Progress is
# reported through the engine's events, so the libraries' own bars stay quiet.
# LOOM_HUB_GUARD says the offline mode is this guard, not the user's wish, so an explicit
# `loom models pull` may still download.
if "HF_HUB_OFFLINE" not in os.environ:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["LOOM_HUB_GUARD"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Long prompts are encoded in chunks on purpose; the tokenizer's length warning is noise.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def register(registry) -> None:
    for info in pkgutil.iter_modules(__path__):
        if not info.name.startswith("_"):
            registry.load_module(importlib.import_module(f"{__name__}.{info.name}"))
    from .model_detect import detect_model_family

    registry.register_model_detector(detect_model_family)
