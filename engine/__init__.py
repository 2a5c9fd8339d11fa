"""Loom's graph engine: typed nodes, JSON graphs, validation, incremental execution.

It knows nothing about diffusion; node packs (the `nodes` package and any installed
through the `loom.nodes` entry point) bring the domain.
"""
from .builder import GraphBuilder, NodeHandle
from .cache import Cache, MemoryCache
from .context import CancelToken, Context
from .disk_cache import DiskCache
from .errors import Cancelled, GraphError, LoomError, NodeError, NodeInputError, Problem
from .events import Event, EventBus
from .executor import Executor, Explanation, NodeRecord, RunResult
from .graph import Graph, Link
from .node import NodeSpec, node
from .registry import Registry
from .settings import Settings
from .types import Lazy

__all__ = [
    "Cache", "Cancelled", "CancelToken", "Context", "DiskCache", "Event", "EventBus", "Executor",
    "Explanation", "Graph", "GraphBuilder", "GraphError", "Lazy", "Link", "LoomError", "MemoryCache",
    "NodeError", "NodeHandle", "NodeInputError", "NodeRecord", "NodeSpec", "Problem", "Registry",
    "RunResult", "Settings", "node",
]
