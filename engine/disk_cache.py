"""The disk tier of the result cache, so a new `loom run` process reuses earlier work.

An SQLite index (`index.sqlite`, WAL mode, shared safely by concurrent processes) lists
every entry with its size and last use. Small entries (most results: numbers, text,
conditioning of a short prompt) are stored inside the index itself, packed together;
larger ones (images, latents) are files `entries/ab/abcdef...` written to a temporary
file and renamed into place, so a crash never leaves a half-written entry under its
final name. Every entry carries a magic tag and a checksum; one that does not match is
deleted and treated as a miss. The tier is bounded by bytes: after every 2 % of the budget
written, the total is read, and past the budget the least recently used entries go in one
pass, down to a low-water mark below it, so eviction is not repeated on every write.
"""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from .files import atomic_write
from .serialize import Unpersistable, pack, unpack

MAGIC = b"LOOMC001"
_DIGEST = 16
INLINE_LIMIT = 64 << 10    # entries up to this size live in the index, not in files of their own
LOW_WATER = 0.8            # eviction frees space down to this fraction of the budget
CHECK_EVERY = 0.02         # the total is read after writing this fraction of the budget
log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    key  TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    used REAL NOT NULL,
    blob BLOB             -- the entry, or NULL when it is a file under entries/
);
CREATE INDEX IF NOT EXISTS entries_by_use ON entries (used);
CREATE TABLE IF NOT EXISTS total (id INTEGER PRIMARY KEY CHECK (id = 0), bytes INTEGER NOT NULL);
INSERT OR IGNORE INTO total VALUES (0, 0);
-- the running total, kept by the database so concurrent processes agree without a scan
CREATE TRIGGER IF NOT EXISTS entry_added AFTER INSERT ON entries
    BEGIN UPDATE total SET bytes = bytes + NEW.size; END;
CREATE TRIGGER IF NOT EXISTS entry_resized AFTER UPDATE OF size ON entries
    BEGIN UPDATE total SET bytes = bytes + NEW.size - OLD.size; END;
CREATE TRIGGER IF NOT EXISTS entry_removed AFTER DELETE ON entries
    BEGIN UPDATE total SET bytes = bytes - OLD.size; END;
-- keys whose values cannot be stored (loaded models): so `explain` can say why they rerun
CREATE TABLE IF NOT EXISTS unstorable (key TEXT PRIMARY KEY);
"""


class DiskCache:
    def __init__(self, folder: Path | str, budget_bytes: int = 8 << 30):
        self.folder = Path(folder)
        self.budget_bytes = budget_bytes
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._unchecked = 0      # bytes this process wrote since it last read the total

    # -- storage ----------------------------------------------------------------------------
    def _index(self) -> sqlite3.Connection:
        if self._db is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.folder / "index.sqlite", timeout=30, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")   # a crash may lose the last entries, never corrupt
            db.executescript(_SCHEMA)
            self._db = db
        return self._db

    def _path(self, key: str) -> Path:
        return self.folder / "entries" / key[:2] / key

    # -- reading ----------------------------------------------------------------------------
    def contains(self, key: str) -> bool:
        with self._lock:
            return self._index().execute("SELECT 1 FROM entries WHERE key = ?", (key,)).fetchone() is not None

    def get(self, key: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._index().execute("SELECT blob FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        blob = row[0]
        if blob is None:
            try:
                blob = self._path(key).read_bytes()
            except OSError:
                self.discard(key)
                return None
        header = len(MAGIC) + _DIGEST
        payload = blob[header:]
        if blob[:len(MAGIC)] != MAGIC or hashlib.blake2b(payload, digest_size=_DIGEST).digest() != blob[len(MAGIC):header]:
            log.warning("dropping corrupt cache entry %s", key)
            self.discard(key)
            return None
        try:
            value = unpack(payload)
        except Exception as exc:  # noqa: BLE001 - any undecodable entry is a miss, never a crash
            log.warning("dropping unreadable cache entry %s: %s", key, exc)
            self.discard(key)
            return None
        with self._lock:
            self._index().execute("UPDATE entries SET used = ? WHERE key = ?", (time.time(), key))
        return value

    # -- writing ----------------------------------------------------------------------------
    def put(self, key: str, outputs: dict[str, Any]) -> bool:
        """Write the entry; False when a value cannot be persisted (e.g. a loaded model)."""
        try:
            payload = pack(outputs)
        except Unpersistable:
            with self._lock:
                self._index().execute("INSERT OR IGNORE INTO unstorable VALUES (?)", (key,))
            return False
        blob = MAGIC + hashlib.blake2b(payload, digest_size=_DIGEST).digest() + payload
        inline = len(blob) <= INLINE_LIMIT
        if not inline:
            try:
                atomic_write(self._path(key), blob)
            except OSError as exc:
                log.warning("cannot write cache entry %s: %s", key, exc)
                return False
        with self._lock:
            db = self._index()
            db.execute("INSERT INTO entries (key, size, used, blob) VALUES (?, ?, ?, ?) ON CONFLICT (key) "
                       "DO UPDATE SET size = excluded.size, used = excluded.used, blob = excluded.blob",
                       (key, len(blob), time.time(), blob if inline else None))
            self._unchecked += len(blob)
            if self._unchecked >= self.budget_bytes * CHECK_EVERY:
                self._unchecked = 0
                total = db.execute("SELECT bytes FROM total").fetchone()[0]
                if total > self.budget_bytes:
                    self._evict(db, total)
        return True

    def _evict(self, db: sqlite3.Connection, total: int) -> None:
        """Remove least recently used entries until the tier is below the low-water mark."""
        target = int(self.budget_bytes * LOW_WATER)
        doomed, files = [], []
        for key, size, is_file in db.execute("SELECT key, size, blob IS NULL FROM entries ORDER BY used"):
            if total <= target:
                break
            doomed.append((key,))
            if is_file:
                files.append(key)
            total -= size
        db.execute("BEGIN")
        db.executemany("DELETE FROM entries WHERE key = ?", doomed)
        db.execute("COMMIT")
        for key in files:
            self._path(key).unlink(missing_ok=True)

    def unstorable(self, key: str) -> bool:
        """True when a value under this key was offered and could not be stored."""
        with self._lock:
            return self._index().execute("SELECT 1 FROM unstorable WHERE key = ?", (key,)).fetchone() is not None

    def discard(self, key: str) -> None:
        with self._lock:
            self._index().execute("DELETE FROM entries WHERE key = ?", (key,))
        self._path(key).unlink(missing_ok=True)

    def clear(self) -> None:
        with self._lock:
            files = [k for (k,) in self._index().execute("SELECT key FROM entries WHERE blob IS NULL")]
            self._index().execute("DELETE FROM entries")
            self._index().execute("DELETE FROM unstorable")
        for key in files:
            self._path(key).unlink(missing_ok=True)

    def info(self) -> dict[str, Any]:
        with self._lock:
            count = self._index().execute("SELECT COUNT(*) FROM entries").fetchone()[0]
            total = self._index().execute("SELECT bytes FROM total").fetchone()[0]
        return {"folder": str(self.folder), "entries": count, "bytes": total,
                "budget_bytes": self.budget_bytes}
