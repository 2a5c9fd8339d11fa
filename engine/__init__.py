"""Loom's graph engine: typed nodes, JSON graphs, validation, incremental execution.

It knows nothing about diffusion; node packs (the `nodes` package and any installed
through the `loom.nodes` entry point) bring the domain.

The names below are imported on first use, so `import engine.<module>` (the CLI's
start-up, `loom --version`) does not load the executor, validation and cache. `node` is
the exception: it shares its name with the `engine.node` module, which would shadow a
lazily imported function.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .node import NodeSpec, node

_EXPORTS = {
    "GraphBuilder": "builder", "NodeHandle": "builder",
    "Cache": "cache", "MemoryCache": "cache",
    "CancelToken": "context", "Context": "context",
    "DiskCache": "disk_cache",
    "Cancelled": "errors", "GraphError": "errors", "LoomError": "errors", "NodeError": "errors",
    "NodeInputError": "errors", "Problem": "errors",
    "Event": "events", "EventBus": "events",
    "Executor": "executor", "Explanation": "executor", "NodeRecord": "executor", "RunResult": "executor",
    "Graph": "graph", "Link": "graph",
    "Registry": "registry",
    "Settings": "settings",
    "Lazy": "types",
}
__all__ = sorted([*_EXPORTS, "NodeSpec", "node"], key=str.lower)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:
    from .builder import GraphBuilder, NodeHandle
    from .cache import Cache, MemoryCache
    from .context import CancelToken, Context
    from .disk_cache import DiskCache
    from .errors import Cancelled, GraphError, LoomError, NodeError, NodeInputError, Problem
    from .events import Event, EventBus
    from .executor import Executor, Explanation, NodeRecord, RunResult
    from .graph import Graph, Link
    from .registry import Registry
    from .settings import Settings
    from .types import Lazy
