"""The result cache: node key -> that node's outputs.

A memory tier bounded by bytes with LRU eviction, where entries the running graph
uses are pinned, in front of an optional disk tier (see `disk_cache.py`) so the
next `loom run` process finds what this one computed.
"""
from __future__ import annotations

import dataclasses
import sys
import threading
from collections import OrderedDict
from typing import Any

from .disk_cache import DiskCache

Outputs = dict[str, Any]
_EVICTION_MEMORY = 4096  # how many evicted keys `explain` can still name


def size_of(value: Any, _seen: set[int] | None = None) -> int:
    """Bytes a value holds, counting tensor, array and image buffers properly."""
    seen = _seen if _seen is not None else set()
    if id(value) in seen:
        return 0
    seen.add(id(value))
    module = type(value).__module__
    if module.startswith("torch"):
        if hasattr(value, "element_size") and hasattr(value, "nelement"):
            return value.element_size() * value.nelement()
        if hasattr(value, "parameters") and hasattr(value, "buffers"):
            return sum(size_of(t, seen) for t in (*value.parameters(), *value.buffers()))
    if hasattr(value, "nbytes") and isinstance(getattr(value, "nbytes"), int):
        return value.nbytes
    if module.startswith("PIL") and hasattr(value, "size") and hasattr(value, "getbands"):
        width, height = value.size
        return width * height * len(value.getbands())
    if isinstance(value, (str, bytes, bytearray)):
        return len(value) + 49
    if isinstance(value, dict):
        return 64 + sum(size_of(k, seen) + size_of(v, seen) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return 56 + sum(size_of(v, seen) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return 64 + sum(size_of(getattr(value, f.name), seen) for f in dataclasses.fields(value))
    if hasattr(value, "__dict__") and not isinstance(value, type):
        return sys.getsizeof(value) + sum(size_of(v, seen) for v in vars(value).values())
    return sys.getsizeof(value)


class MemoryCache:
    def __init__(self, budget_bytes: int = 4 << 30):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, tuple[Outputs, int]] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._lock = threading.RLock()

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: str) -> Outputs | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, outputs: Outputs) -> None:
        size = size_of(outputs)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._entries[key] = (outputs, size)
            self._bytes += size
            self._evicted.pop(key, None)
            self._evict()

    def pin(self, keys) -> None:
        with self._lock:
            for key in keys:
                self._pins[key] = self._pins.get(key, 0) + 1

    def unpin(self, keys) -> None:
        with self._lock:
            for key in keys:
                count = self._pins.get(key, 0) - 1
                if count > 0:
                    self._pins[key] = count
                else:
                    self._pins.pop(key, None)
            self._evict()

    def was_evicted(self, key: str) -> bool:
        return key in self._evicted

    def discard(self, key: str) -> None:
        with self._lock:
            entry = self._entries.pop(key, None)
            if entry is not None:
                self._bytes -= entry[1]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0

    def _evict(self) -> None:
        if self._bytes <= self.budget_bytes:
            return
        for key in list(self._entries):
            if self._bytes <= self.budget_bytes:
                break
            if key in self._pins:
                continue  # the running graph still needs it
            _, size = self._entries.pop(key)
            self._bytes -= size
            self._evicted[key] = None
            if len(self._evicted) > _EVICTION_MEMORY:
                self._evicted.popitem(last=False)


class Cache:
    """Memory tier in front of an optional disk tier."""

    def __init__(self, memory: MemoryCache | None = None, disk: DiskCache | None = None):
        self.memory = memory if memory is not None else MemoryCache()
        self.disk = disk

    def contains(self, key: str) -> bool:
        return key in self.memory or (self.disk is not None and self.disk.contains(key))

    def get(self, key: str) -> Outputs | None:
        hit = self.memory.get(key)
        if hit is None and self.disk is not None:
            hit = self.disk.get(key)
            if hit is not None:
                self.memory.put(key, hit)
        return hit

    def put(self, key: str, outputs: Outputs) -> None:
        self.memory.put(key, outputs)
        if self.disk is not None:
            self.disk.put(key, outputs)

    def was_evicted(self, key: str) -> bool:
        return self.memory.was_evicted(key)

    def discard(self, key: str) -> None:
        """Forget one result in both tiers (it no longer matches outside state)."""
        self.memory.discard(key)
        if self.disk is not None:
            self.disk.discard(key)

    def clear(self) -> None:
        self.memory.clear()
        if self.disk is not None:
            self.disk.clear()
