"""The disk tier of the result cache, so a new `loom run` process reuses earlier work.

One file per key (`<folder>/ab/abcdef...`), holding a magic tag, a checksum and the
msgpack payload. Writes go to a temporary file renamed into place, so a crash never
leaves a half-written entry under its final name; an entry whose checksum does not
match is deleted and treated as a miss. The folder is bounded by bytes: the least
recently used entries (by modification time, refreshed on every hit) go first.
"""
from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any

from .files import atomic_write
from .serialize import Unpersistable, pack, unpack

MAGIC = b"LOOMC001"
_DIGEST = 16
log = logging.getLogger(__name__)


class DiskCache:
    def __init__(self, folder: Path | str, budget_bytes: int = 8 << 30):
        self.folder = Path(folder)
        self.budget_bytes = budget_bytes
        self._total: int | None = None   # bytes on disk, scanned on the first write
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        return self.folder / "entries" / key[:2] / key

    def contains(self, key: str) -> bool:
        return self._path(key).is_file()

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            blob = path.read_bytes()
        except OSError:
            return None
        header = len(MAGIC) + _DIGEST
        payload = blob[header:]
        if blob[:len(MAGIC)] != MAGIC or hashlib.blake2b(payload, digest_size=_DIGEST).digest() != blob[len(MAGIC):header]:
            log.warning("dropping corrupt cache entry %s", path)
            self._discard(path)
            return None
        try:
            value = unpack(payload)
        except Exception as exc:  # noqa: BLE001 - any undecodable entry is a miss, never a crash
            log.warning("dropping unreadable cache entry %s: %s", path, exc)
            self._discard(path)
            return None
        try:
            os.utime(path)  # mark as recently used
        except OSError:
            pass
        return value

    def put(self, key: str, outputs: dict[str, Any]) -> bool:
        """Write the entry; False when a value cannot be persisted (e.g. a loaded model)."""
        try:
            payload = pack(outputs)
        except Unpersistable:
            return False
        blob = MAGIC + hashlib.blake2b(payload, digest_size=_DIGEST).digest() + payload
        path = self._path(key)
        try:
            atomic_write(path, blob)
        except OSError as exc:
            log.warning("cannot write cache entry %s: %s", path, exc)
            return False
        with self._lock:
            if self._total is None:
                self._total = self._scan_total()
            else:
                self._total += len(blob)
            if self._total > self.budget_bytes:
                self._evict()
        return True

    def _entries(self) -> list[tuple[float, int, Path]]:
        found = []
        root = self.folder / "entries"
        if not root.is_dir():
            return found
        for shard in root.iterdir():
            for path in shard.iterdir() if shard.is_dir() else ():
                try:
                    st = path.stat()
                except OSError:
                    continue
                found.append((st.st_mtime, st.st_size, path))
        return found

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _evict(self) -> None:
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        for _, size, path in entries:
            if total <= self.budget_bytes:
                break
            self._discard(path)
            total -= size
        self._total = total

    def discard(self, key: str) -> None:
        self._discard(self._path(key))

    @staticmethod
    def _discard(path: Path) -> None:
        try:
            path.unlink()
        except OSError:
            pass

    def clear(self) -> None:
        for _, _, path in self._entries():
            self._discard(path)
        self._total = 0

    def info(self) -> dict[str, Any]:
        entries = self._entries()
        return {"folder": str(self.folder), "entries": len(entries),
                "bytes": sum(size for _, size, _ in entries), "budget_bytes": self.budget_bytes}
