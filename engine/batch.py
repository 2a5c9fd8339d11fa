"""Batch generation: one graph over many parameter sets, resumable from its manifest.

Items come from a JSONL file (one object of params per line) and/or sweeps
(`seed=0..999`, `prompt=@prompts.txt`, `cfg=4,5.5,7`, `steps=20`), combined as a product.
Each finished item appends one line to `DIR/manifest.jsonl` (params, status, output
files, seconds, error), flushed to disk before the next, so a batch killed at item 6 000
resumes at 6 000: an item whose params (with the same graph) the manifest records as
succeeded is skipped, and a failed one is tried again.

Backends run items and stream their outcomes back: `LocalBackend` on one warm executor in
this process (models load and prompts encode once for the whole sweep), `RayBackend` on
worker actors. Both hand back the bytes of every file an item wrote; the batch stores
them atomically in DIR as `<item>-<name>`, so the two backends leave the same folder.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .errors import GraphError, Problem
from .executor import Executor
from .files import atomic_write
from .graph import Graph
from .paths import contained
from .plan import canonical
from .ray_backend import Worker, WorkerLost, WorkerPool, WorkerSpec, connect, import_ray, stream, with_local_files

MANIFEST = "manifest.jsonl"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# -- items ---------------------------------------------------------------------------------

def sweep_values(spec: str) -> tuple[str, list[Any]]:
    """`name=0..9` (inclusive), `name=@file` (one value per non-empty line), `name=a,b,c`,
    `name=[JSON array]` or `name=value`; values read as JSON when they parse, else as text."""
    name, sep, raw = spec.partition("=")
    if not sep or not name:
        raise GraphError([Problem(f"--sweep expects name=values, got {spec!r}")])
    if raw.startswith("@"):
        path = Path(raw[1:])
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise GraphError([Problem(f"--sweep {name}: cannot read {path}: {exc.strerror}",
                                      file=str(path))]) from None
        values = [line.strip() for line in lines if line.strip()]
    elif ".." in raw and all(_is_int(part) for part in raw.split("..", 1)):
        low, high = (int(part) for part in raw.split("..", 1))
        if high < low:
            raise GraphError([Problem(f"--sweep {name}: empty range {raw}")])
        values = list(range(low, high + 1))
    elif isinstance(_value(raw), list):
        values = _value(raw)
    else:
        values = [_value(part) for part in raw.split(",")] if "," in raw else [_value(raw)]
    if not values:
        raise GraphError([Problem(f"--sweep {name}: no values")])
    return name, values


def _is_int(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def read_params_file(path: Path) -> list[dict[str, Any]]:
    """One JSON object of params per line (blank lines skipped)."""
    items = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise GraphError([Problem(f"cannot read params: {exc.strerror}", file=str(path))]) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            params = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GraphError([Problem(f"line {number}: not JSON ({exc.msg})", file=str(path))]) from None
        if not isinstance(params, dict):
            raise GraphError([Problem(f"line {number}: expected an object of params",
                                      file=str(path))])
        items.append(params)
    return items


def batch_items(params_file: Path | None = None, sweeps: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Every parameter set: each line of `params_file` combined with every sweep combination
    (the first sweep varies slowest)."""
    bases = read_params_file(params_file) if params_file is not None else [{}]
    axes = [sweep_values(spec) for spec in sweeps]
    names = [name for name, _ in axes]
    combos = list(itertools.product(*(values for _, values in axes)))
    items = [{**base, **dict(zip(names, combo))} for base in bases for combo in combos]
    if not items:
        raise GraphError([Problem("the batch has no items (an empty params file?)")])
    return items


def item_key(graph: Graph, params: dict[str, Any]) -> str:
    """Names an item across reruns: the graph and its params (same graph, same params, same item)."""
    h = hashlib.blake2b(digest_size=12)
    h.update(canonical(graph.to_dict()).encode())
    h.update(b"\x00" + canonical(params).encode())
    return h.hexdigest()


# -- the manifest --------------------------------------------------------------------------

class Manifest:
    """DIR/manifest.jsonl: one line per finished item, appended and flushed as it goes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def latest(self) -> dict[str, dict]:
        """The last record of each item key (a later retry overrides an earlier failure)."""
        records: dict[str, dict] = {}
        if not self.path.exists():
            return records
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue    # a line cut short by a kill: that item simply runs again
                if isinstance(record, dict) and "key" in record:
                    records[record["key"]] = record
        return records

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as f:
            if f.tell() and not self._ends_with_newline():
                f.write(b"\n")      # after a torn line, start a fresh one
            f.write(json.dumps(record, default=str).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


# -- backends ------------------------------------------------------------------------------

@dataclass
class ItemOutcome:
    """What a backend hands back for the `index`-th params it was given."""

    index: int
    status: str                      # succeeded | failed | cancelled
    outputs: dict = field(default_factory=dict)   # RemoteFile where a file was written
    files: dict[str, bytes] = field(default_factory=dict)
    seconds: float = 0.0
    error: dict | None = None
    model_loads: int = 0
    worker: str | None = None

    @classmethod
    def of(cls, index: int, outcome: dict) -> "ItemOutcome":
        return cls(index, outcome["status"], outcome.get("outputs", {}), outcome.get("files", {}),
                   outcome.get("seconds", 0.0), outcome.get("error"), outcome.get("model_loads", 0),
                   outcome.get("worker"))


class LocalBackend:
    """Items one after another on one executor in this process: its cache and models stay warm."""

    def __init__(self, executor: Executor):
        self.worker = Worker(executor=executor, name="local")

    def map(self, graph: Graph, params_iter: Iterable[dict]) -> Iterator[ItemOutcome]:
        doc = graph.to_dict()
        for index, params in enumerate(params_iter):
            outcome: dict = {}
            for message in self.worker.run(f"item-{index}-{os.urandom(4).hex()}", doc, params):
                outcome = message.get("outcome", outcome)
            yield ItemOutcome.of(index, outcome)

    def close(self) -> None:
        pass


class RayBackend:
    """Items spread over Ray worker actors (`workers` of them; None: one per `gpus_per_worker`
    GPUs), each item tried on a second worker life if its worker dies; outcomes come back as
    they finish."""

    def __init__(self, spec: WorkerSpec, *, workers: int | None = 1, address: str | None = None,
                 gpus_per_worker: float = 0, temp_dir: Path | None = None):
        self._started = connect(address, temp_dir=temp_dir)
        self.pool = WorkerPool(spec, workers, gpus_per_worker,
                               name_prefix=f"loom-batch-{os.getpid()}-{os.urandom(3).hex()}").start()

    def map(self, graph: Graph, params_iter: Iterable[dict]) -> Iterator[ItemOutcome]:
        doc = graph.to_dict()
        todo = iter(enumerate(params_iter))
        lock = threading.Lock()
        done: queue.SimpleQueue = queue.SimpleQueue()

        def drive(slot: int) -> None:
            while True:
                with lock:
                    index, params = next(todo, (None, None))
                if index is None:
                    done.put(None)
                    return
                done.put(self._run_one(slot, index, doc, params))

        for slot in range(len(self.pool.actors)):
            threading.Thread(target=drive, args=(slot,), daemon=True, name=f"loom-batch-{slot}").start()
        running = len(self.pool.actors)
        while running:
            item = done.get()
            if item is None:
                running -= 1
            else:
                yield item

    def _run_one(self, slot: int, index: int, doc: dict, params: dict) -> ItemOutcome:
        reason = ""
        for _attempt in range(2):
            try:
                outcome: dict = {}
                for message in stream(self.pool.run(slot, f"item-{index}-{os.urandom(4).hex()}", doc, params)):
                    outcome = message.get("outcome", outcome)
                return ItemOutcome.of(index, outcome)
            except WorkerLost as exc:
                reason = str(exc)
                if not self._await_restart(slot):
                    break
        return ItemOutcome(index, "failed", error={"error": "worker_lost", "message":
                                                   f"its worker was lost ({reason})"})

    def _await_restart(self, slot: int, seconds: float = 300.0) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.pool.ready(slot):
                return True
        return False

    def close(self) -> None:
        self.pool.kill()
        if self._started:
            import_ray().shutdown()


# -- running a batch -----------------------------------------------------------------------

@dataclass
class BatchReport:
    total: int
    skipped: int = 0                 # done in an earlier run of the same batch
    succeeded: int = 0
    failed: list[dict] = field(default_factory=list)    # manifest records of failed items
    images: int = 0
    seconds: float = 0.0
    model_loads: int = 0

    @property
    def done(self) -> int:
        return self.skipped + self.succeeded

    @property
    def remaining(self) -> int:
        return self.total - self.done - len(self.failed)


def run_batch(graph: Graph, items: list[dict[str, Any]], out_dir: Path, backend,
              on_item: Callable[[BatchReport, dict], None] = lambda report, record: None) -> BatchReport:
    """Run every item the manifest in `out_dir` does not record as succeeded; append each
    outcome to the manifest as it arrives. `on_item` sees the report after each item."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(out_dir / MANIFEST)
    previous = manifest.latest()
    keyed = [(index, params, item_key(graph, params)) for index, params in enumerate(items)]
    pending = [item for item in keyed if previous.get(item[2], {}).get("status") != "succeeded"]
    report = BatchReport(total=len(items), skipped=len(items) - len(pending))
    started = time.perf_counter()
    for outcome in backend.map(graph, [params for _, params, _ in pending]):
        index, params, key = pending[outcome.index]
        record = _store(out_dir, index, params, key, outcome)
        manifest.append(record)
        report.seconds = time.perf_counter() - started
        report.model_loads += outcome.model_loads
        if record["status"] == "succeeded":
            report.succeeded += 1
            report.images += sum(1 for f in record["files"] if f.lower().endswith(IMAGE_SUFFIXES))
        else:
            report.failed.append(record)
        on_item(report, record)
    return report


def _store(out_dir: Path, index: int, params: dict, key: str, outcome: ItemOutcome) -> dict:
    """Write the item's files into `out_dir` (atomically) and make its manifest record."""
    stored: dict[str, str] = {}
    for name, data in outcome.files.items():
        stored_name = f"{index:05d}-{name.replace('/', '-')}"
        atomic_write(contained(out_dir, stored_name), data)
        stored[name] = stored_name
    error = None
    if outcome.error is not None:
        error = {k: outcome.error[k] for k in ("error", "node", "type", "message", "problems")
                 if outcome.error.get(k) is not None}
    return {"item": index, "key": key, "params": params, "status": outcome.status,
            "outputs": with_local_files(outcome.outputs, stored.__getitem__),
            "files": sorted(stored.values()), "seconds": round(outcome.seconds, 4),
            "error": error, "model_loads": outcome.model_loads, "worker": outcome.worker}


__all__ = ["batch_items", "sweep_values", "read_params_file", "item_key", "Manifest", "LocalBackend",
           "RayBackend", "ItemOutcome", "BatchReport", "run_batch"]
