"""The durable run queue and history: one SQLite file under the data folder.

A run accepted with a 2xx answer is a committed row before the answer leaves, so
a crash or `kill -9` cannot lose it. On start, `recover()` puts a run that was
running when the process died back in the queue (up to `max_attempts` tries in
all) or marks it failed with the reason. Every state change is one transaction
guarded by the row's current status, so a run is claimed, finished or cancelled
exactly once.

Status moves:  queued -> running -> succeeded | failed | cancelled
               queued -> cancelled
               running -> queued        (interrupted: crash, restart, shutdown)
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED = "queued", "running", "succeeded", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
FINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    id               TEXT NOT NULL UNIQUE,
    status           TEXT NOT NULL,
    graph            TEXT NOT NULL,
    params           TEXT NOT NULL,
    idempotency_key  TEXT UNIQUE,
    request_hash     TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    started_at       REAL,
    finished_at      REAL,
    result           TEXT,
    error            TEXT,
    notes            TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, seq);
"""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before for a different request body."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        super().__init__(f"idempotency key already used for run {run_id} with a different request")


@dataclass
class RunRecord:
    seq: int
    id: str
    status: str
    graph: dict
    params: dict
    idempotency_key: str | None
    attempts: int
    cancel_requested: bool
    created_at: float
    started_at: float | None
    finished_at: float | None
    result: dict = field(default_factory=dict)   # ran, cached, timings, outputs, files
    error: dict | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def files(self) -> list[str]:
        return list(self.result.get("files", []))


def request_hash(graph: Any, params: Any) -> str:
    canonical = json.dumps({"graph": graph, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def new_run_id() -> str:
    return "run_" + uuid.uuid4().hex


class RunStore:
    """Thread-safe; one connection, every write a short transaction under a lock."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._pending: list[_PendingCreate] = []      # submissions waiting for the next commit
        self._pending_lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- writes -------------------------------------------------------------------------

    def create(self, graph: dict, params: dict, idempotency_key: str | None = None) -> tuple[RunRecord, bool]:
        """Queue a run; returns (run, created). A known idempotency key returns the first run.

        Returns once the row is on disk. Concurrent callers share one commit (group
        commit): whoever holds the connection writes every pending submission in one
        transaction, so 200 simultaneous submissions cost a few fsyncs, not 200.
        """
        pending = _PendingCreate(graph, params, idempotency_key)
        with self._pending_lock:
            self._pending.append(pending)
        with self._lock:
            if not pending.done:
                with self._pending_lock:
                    batch, self._pending = self._pending, []
                self._commit_creates(batch)
        if pending.error is not None:
            raise pending.error
        return pending.result

    def _commit_creates(self, batch: list["_PendingCreate"]) -> None:
        try:
            with self._tx(durable=True):
                for item in batch:
                    item.result = self._insert(item)
        except Exception as exc:  # noqa: BLE001 - the whole batch was rolled back: tell everyone
            for item in batch:
                item.result, item.error = None, exc
        finally:
            for item in batch:
                item.done = True

    def _insert(self, item: "_PendingCreate") -> tuple[RunRecord, bool] | None:
        digest = request_hash(item.graph, item.params)
        if item.idempotency_key is not None:
            row = self._db.execute("SELECT * FROM runs WHERE idempotency_key = ?",
                                   (item.idempotency_key,)).fetchone()
            if row is not None:
                if row["request_hash"] != digest:
                    item.error = IdempotencyConflict(row["id"])
                    return None
                return _record(row), False
        run_id = new_run_id()
        row = self._db.execute(
            "INSERT INTO runs (id, status, graph, params, idempotency_key, request_hash, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING *",
            (run_id, QUEUED, json.dumps(item.graph), json.dumps(item.params), item.idempotency_key,
             digest, time.time())).fetchone()
        return _record(row), True

    def claim_next(self) -> RunRecord | None:
        """The oldest queued run, now marked running with one more attempt; None when idle."""
        with self._lock, self._tx():
            row = self._db.execute(
                "UPDATE runs SET status = ?, attempts = attempts + 1, started_at = ?"
                " WHERE seq = (SELECT seq FROM runs WHERE status = ? ORDER BY seq LIMIT 1)"
                " RETURNING *", (RUNNING, time.time(), QUEUED)).fetchone()
        return _record(row) if row is not None else None

    def claim(self, run_id: str) -> RunRecord | None:
        """Like `claim_next` for one chosen queued run; None if it is no longer queued."""
        with self._lock, self._tx():
            row = self._db.execute(
                "UPDATE runs SET status = ?, attempts = attempts + 1, started_at = ?"
                " WHERE id = ? AND status = ? RETURNING *",
                (RUNNING, time.time(), run_id, QUEUED)).fetchone()
        return _record(row) if row is not None else None

    def finish(self, run_id: str, status: str, result: dict | None = None,
               error: dict | None = None, *, attempt: int | None = None) -> RunRecord | None:
        """Record the end of a running run; None if it was not running (already finished).

        With `attempt`, only that attempt may finish it: a late reply from an earlier attempt
        (a worker thought lost, a server restarted since) is ignored.
        """
        assert status in FINAL, status
        with self._lock, self._tx():
            row = self._db.execute(
                "UPDATE runs SET status = ?, finished_at = ?, result = ?, error = ?"
                " WHERE id = ? AND status = ? AND (? IS NULL OR attempts = ?) RETURNING *",
                (status, time.time(), json.dumps(result or {}), json.dumps(error) if error else None,
                 run_id, RUNNING, attempt, attempt)).fetchone()
        return _record(row) if row is not None else None

    def requeue(self, run_id: str, note: str, *, refund_attempt: bool = False) -> RunRecord | None:
        """Put an interrupted running run back in the queue (e.g. on a clean shutdown)."""
        with self._lock, self._tx():
            row = self._db.execute("SELECT * FROM runs WHERE id = ? AND status = ?",
                                   (run_id, RUNNING)).fetchone()
            if row is None:
                return None
            notes = json.loads(row["notes"]) + [note]
            row = self._db.execute(
                "UPDATE runs SET status = ?, started_at = NULL, notes = ?,"
                " attempts = attempts - ? WHERE id = ? RETURNING *",
                (QUEUED, json.dumps(notes), 1 if refund_attempt else 0, run_id)).fetchone()
        return _record(row)

    def request_cancel(self, run_id: str) -> RunRecord | None:
        """Cancel a queued run at once, or flag a running one (the worker stops it).

        The flag is durable: a run flagged before a crash is not re-run after it.
        """
        with self._lock, self._tx(durable=True):
            row = self._db.execute(
                "UPDATE runs SET status = ?, cancel_requested = 1, finished_at = ?,"
                " error = ? WHERE id = ? AND status = ? RETURNING *",
                (CANCELLED, time.time(), json.dumps({"error": "cancelled",
                                                      "message": "cancelled before it started"}),
                 run_id, QUEUED)).fetchone()
            if row is None:
                row = self._db.execute(
                    "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND status = ? RETURNING *",
                    (run_id, RUNNING)).fetchone()
            if row is None:
                row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _record(row) if row is not None else None

    def recover(self, max_attempts: int) -> list[RunRecord]:
        """After a crash: re-queue or fail every run left 'running'. Returns the runs touched."""
        touched = []
        with self._lock, self._tx(durable=True):
            rows = self._db.execute("SELECT * FROM runs WHERE status = ? ORDER BY seq",
                                    (RUNNING,)).fetchall()
            for row in rows:
                attempts = row["attempts"]
                notes = json.loads(row["notes"])
                if row["cancel_requested"]:
                    status, error = CANCELLED, {"error": "cancelled",
                                                "message": "cancelled; the server stopped while it ran"}
                elif attempts < max_attempts:
                    status, error = QUEUED, None
                    notes.append(f"re-queued: the server stopped while attempt {attempts} of "
                                 f"{max_attempts} was running")
                else:
                    status = FAILED
                    error = {"error": "interrupted",
                             "message": f"the server stopped while this run was running, "
                                        f"{attempts} of {max_attempts} attempts used; not retried"}
                requeued = status == QUEUED
                new = self._db.execute(
                    "UPDATE runs SET status = ?, error = ?, notes = ?, started_at = ?, finished_at = ?"
                    " WHERE id = ? RETURNING *",
                    (status, json.dumps(error) if error else None, json.dumps(notes),
                     None if requeued else row["started_at"], None if requeued else time.time(),
                     row["id"])).fetchone()
                touched.append(_record(new))
        return touched

    # -- reads --------------------------------------------------------------------------

    def get(self, run_id: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        return _record(row) if row is not None else None

    def get_by_key(self, idempotency_key: str) -> RunRecord | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM runs WHERE idempotency_key = ?",
                                   (idempotency_key,)).fetchone()
        return _record(row) if row is not None else None

    def list(self, statuses: Iterable[str] = (), limit: int = 50,
             before: int | None = None) -> list[RunRecord]:
        """Newest first; `before` is the `seq` of the last run of the previous page."""
        where, args = [], []
        statuses = list(statuses)
        if statuses:
            where.append(f"status IN ({', '.join('?' * len(statuses))})")
            args.extend(statuses)
        if before is not None:
            where.append("seq < ?")
            args.append(before)
        sql = "SELECT * FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [_record(r) for r in rows]

    def queued(self, limit: int = 64) -> list[RunRecord]:
        """The oldest queued runs, oldest first (what a dispatcher chooses among)."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM runs WHERE status = ? ORDER BY seq LIMIT ?",
                                    (QUEUED, limit)).fetchall()
        return [_record(r) for r in rows]

    def prune(self, keep_runs: int | None, keep_days: float | None) -> list[RunRecord]:
        """Delete finished runs beyond the newest `keep_runs` or finished more than `keep_days`
        ago; returns them (their `files` are the caller's to delete)."""
        final = tuple(sorted(FINAL))
        marks = ", ".join("?" * len(final))
        conditions, args = [], []
        if keep_runs is not None:
            conditions.append(f"seq NOT IN (SELECT seq FROM runs WHERE status IN ({marks})"
                              f" ORDER BY seq DESC LIMIT ?)")
            args.extend([*final, max(0, keep_runs)])
        if keep_days is not None:
            conditions.append("finished_at < ?")
            args.append(time.time() - keep_days * 86400)
        if not conditions:
            return []
        with self._lock, self._tx():
            rows = self._db.execute(
                f"DELETE FROM runs WHERE status IN ({marks}) AND ({' OR '.join(conditions)})"
                f" RETURNING *", (*final, *args)).fetchall()
        return [_record(r) for r in rows]

    def file_in_use(self, name: str) -> bool:
        """True when a run in the table lists output file `name`."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM runs WHERE instr(result, ?) > 0 LIMIT 1",
                                   (json.dumps(name),)).fetchone()
        return row is not None

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) AS n FROM runs GROUP BY status").fetchall()
        counts = dict.fromkeys(STATUSES, 0)
        counts.update({r["status"]: r["n"] for r in rows})
        return counts

    def _tx(self, durable: bool = False):
        return _Transaction(self._db, durable)


@dataclass
class _PendingCreate:
    graph: dict
    params: dict
    idempotency_key: str | None
    result: tuple[RunRecord, bool] | None = None
    error: Exception | None = None
    done: bool = False


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception.

    durable: the commit is fsynced before it returns (synchronous=FULL). Used for what a
    client was told (a run accepted, a cancel acknowledged) and for recovery. The
    worker's bookkeeping (claim, finish) commits without waiting for the disk
    (synchronous=NORMAL): it survives a process crash or kill -9, and the next durable
    commit carries it to disk; only a power cut right after could undo it, and then the
    run is simply run again.
    """

    def __init__(self, db: sqlite3.Connection, durable: bool):
        self.db = db
        self.durable = durable

    def __enter__(self):
        self.db.execute(f"PRAGMA synchronous={'FULL' if self.durable else 'NORMAL'}")
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb):
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
        return False


def _record(row: sqlite3.Row) -> RunRecord:
    return RunRecord(
        seq=row["seq"], id=row["id"], status=row["status"],
        graph=json.loads(row["graph"]), params=json.loads(row["params"]),
        idempotency_key=row["idempotency_key"], attempts=row["attempts"],
        cancel_requested=bool(row["cancel_requested"]), created_at=row["created_at"],
        started_at=row["started_at"], finished_at=row["finished_at"],
        result=json.loads(row["result"]) if row["result"] else {},
        error=json.loads(row["error"]) if row["error"] else None,
        notes=json.loads(row["notes"]))
