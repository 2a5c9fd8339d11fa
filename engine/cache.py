"""The result cache: node key -> that node's outputs.

A memory tier bounded by bytes with LRU eviction, where entries the running graph
uses are pinned, in front of an optional disk tier (see `disk_cache.py`) so the
next `loom run` process finds what this one computed.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

from .disk_cache import DiskCache
from .footprint import Footprint, footprint

Outputs = dict[str, Any]
_EVICTION_MEMORY = 4096  # how many evicted keys `explain` can still name


class MemoryCache:
    """Results by key under a byte budget, least recently used first out, pinned entries kept.

    Bytes are counted with `footprint`: a tensor storage shared by several entries is
    counted once (and freed when the last of them goes), and objects the model manager
    owns are not counted at all; an entry referencing a model the manager unloads is
    dropped, so an unloaded model leaves no reference behind here.
    """

    def __init__(self, budget_bytes: int = 4 << 30):
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[str, tuple[Outputs, Footprint]] = OrderedDict()
        self._storages: dict[int, list[int]] = {}      # storage id -> [bytes, entries using it]
        self._by_model: dict[int, set[str]] = {}       # model-manager object id -> keys
        self._pins: dict[str, int] = {}
        self._evicted: OrderedDict[str, None] = OrderedDict()
        self._bytes = 0
        self._managers: list[Any] = []
        self._lock = threading.RLock()

    def bind_models(self, models: Any) -> None:
        """Leave `models`' objects out of the count and forget results that use one it unloads."""
        with self._lock:
            if models not in self._managers:
                self._managers.append(models)
                models.on_unload(self.drop_models)

    def _owned(self, object_id: int) -> bool:
        for manager in self._managers:
            if manager.owns(object_id):
                return True
        return False

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        """Accounted bytes: what the entries hold, shared storages once, models not at all."""
        return self._bytes

    def get(self, key: str) -> Outputs | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: str, outputs: Outputs) -> None:
        fp = footprint(outputs, self._owned)
        with self._lock:
            self._remove(key)
            self._entries[key] = (outputs, fp)
            self._bytes += fp.plain
            for storage, nbytes in fp.storages.items():
                counted = self._storages.setdefault(storage, [nbytes, 0])
                if counted[1] == 0:
                    self._bytes += nbytes
                counted[1] += 1
            for model in fp.models:
                self._by_model.setdefault(model, set()).add(key)
            self._evicted.pop(key, None)
            self._evict()

    def _remove(self, key: str) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        fp = entry[1]
        self._bytes -= fp.plain
        for storage in fp.storages:
            counted = self._storages[storage]
            counted[1] -= 1
            if counted[1] == 0:
                self._bytes -= counted[0]
                del self._storages[storage]
        for model in fp.models:
            keys = self._by_model.get(model)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_model[model]
        return True

    def drop_models(self, object_ids: set[int]) -> None:
        """Forget every result that references one of these (unloaded) model objects."""
        with self._lock:
            for object_id in object_ids:
                for key in list(self._by_model.get(object_id, ())):
                    self._remove(key)

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
            self._remove(key)

    def clear(self) -> None:
        with self._lock:
            for key in list(self._entries):
                self._remove(key)

    def _evict(self) -> None:
        if self._bytes <= self.budget_bytes:
            return
        for key in list(self._entries):
            if self._bytes <= self.budget_bytes:
                break
            if key in self._pins:
                continue  # the running graph still needs it
            self._remove(key)
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

    def unstorable(self, key: str) -> bool:
        """True when the disk tier was offered this key's value and could not store it."""
        return self.disk is not None and self.disk.unstorable(key)

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
