"""The Ray backend of the server: queued runs go to long-lived worker actors (one per GPU).

Same seam as `LocalDispatcher` (`RunDispatcher`), same source of truth: the SQLite store.
One driver thread per worker actor claims a run from the store, streams it to its actor,
publishes the actor's engine events as they arrive, writes the output files the actor
sends back (atomically, under this server's output folder, so a cluster needs no shared
filesystem) and records how the run ended, guarded by the attempt it claimed.

Model affinity: each actor reports the model fingerprints it holds; an idle actor first
takes the oldest queued run whose plan needs models it holds, else one no other actor holds
warm, and takes a run warm elsewhere only when more than two runs per worker are queued or
the run has waited `affinity_wait` seconds. Alternating two checkpoints over two workers therefore
loads each checkpoint once. Every run record says how many models its run loaded.

Faults: an actor that dies mid-run is restarted by Ray; its run goes back to the queue with
the attempt counted (failed once `max_attempts` are used), never finished twice. Ray never
retries a task itself.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from engine import Executor, Graph
from engine.events import NODE_FAILED, RUN_CANCELLED, RUN_FAILED, RUN_FINISHED, Event
from engine.files import atomic_write
from engine.paths import contained
from engine.ray_backend import WorkerLost, WorkerPool, WorkerSpec, connect, import_ray, stream, with_local_files

from .dispatch import TERMINAL_EVENTS, file_outputs_of, output_url
from .errors import new_error_id, public_error
from .files import describe_outputs
from .store import CANCELLED, FAILED, SUCCEEDED, RunRecord, RunStore

log = logging.getLogger(__name__)

RUN_REQUEUED = "run_requeued"
END_EVENTS = {SUCCEEDED: RUN_FINISHED, FAILED: RUN_FAILED, CANCELLED: RUN_CANCELLED}


@dataclass(frozen=True)
class RayOptions:
    """`loom serve --backend ray ...`: where the cluster is and how many workers to start."""

    spec: WorkerSpec
    address: str | None = None          # None: start a local Ray on loopback
    workers: int | None = 1             # None: one per GPU (gpus_per_worker each)
    gpus_per_worker: float = 0
    affinity: bool = True
    affinity_wait: float = 10.0         # seconds a run waits for a worker that holds its models
    temp_dir: Path | None = None        # a local Ray's files (default DATA_DIR/ray)


@dataclass
class _Slot:
    index: int
    name: str
    holding: frozenset[str] = frozenset()      # model fingerprints the actor reported
    expecting: frozenset[str] = frozenset()    # those of the run it is doing now
    run_id: str | None = None
    thread: threading.Thread | None = field(default=None, repr=False)

    @property
    def warm(self) -> frozenset[str]:
        return self.holding | self.expecting


class RayDispatcher:
    def __init__(self, store: RunStore, executor: Executor, options: RayOptions, *, output_dir: Path,
                 publish: Callable[[dict], None] = lambda event: None,
                 finished: Callable[[str], None] = lambda run_id: None,
                 max_attempts: int = 2, poll_seconds: float = 1.0):
        self.store = store
        self.executor = executor          # the server's: plans queued runs for affinity
        self.options = options
        self.output_dir = Path(output_dir)
        self.publish = publish
        self.finished = finished
        self.max_attempts = max_attempts
        self.poll_seconds = poll_seconds
        # Workers enforce the server's limits, as its own executor would.
        self.pool = WorkerPool(dataclasses.replace(options.spec, limits=executor.limits),
                               options.workers, options.gpus_per_worker)
        self.slots = [_Slot(i, "") for i in range(options.workers or 0)]   # more once Ray says
        self._changed = threading.Condition()
        self._claim_lock = threading.Lock()
        self._stopping = threading.Event()
        self._started_ray = False
        self._models_of: dict[str, frozenset[str]] = {}

    # -- RunDispatcher ------------------------------------------------------------------

    def start(self) -> None:
        started = time.perf_counter()
        self._started_ray = connect(self.options.address, temp_dir=self.options.temp_dir)
        # Actor names are per dispatcher, so a restarted server never meets its predecessor's
        # actors (they die with the process that owned them) and servers can share a cluster.
        self.pool.name_prefix = f"loom-worker-{uuid.uuid4().hex[:8]}"
        self.pool.start()
        self.slots = [_Slot(i, f"{self.pool.name_prefix}-{i}") for i in range(len(self.pool.actors))]
        log.info("Ray backend: %d worker(s) ready in %.1fs", len(self.slots), time.perf_counter() - started)
        for slot in self.slots:
            slot.thread = threading.Thread(target=self._work, args=(slot,), daemon=True,
                                           name=f"loom-ray-{slot.index}")
            slot.thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self.wake()
        for slot in self.slots:
            if slot.run_id is not None:
                self.pool.cancel(slot.index, slot.run_id)
        deadline = time.monotonic() + timeout
        for slot in self.slots:
            if slot.thread is not None:
                slot.thread.join(max(0.0, deadline - time.monotonic()))
        self.pool.kill()
        if self._started_ray:
            import_ray().shutdown()

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def cancel(self, run_id: str) -> bool:
        for slot in self.slots:
            if slot.run_id == run_id:
                self.pool.cancel(slot.index, run_id)
                return True
        return False

    @property
    def healthy(self) -> bool:
        return bool(self.slots) and all(s.thread is not None and s.thread.is_alive() for s in self.slots)

    # -- choosing runs ------------------------------------------------------------------

    def _work(self, slot: _Slot) -> None:
        while not self._stopping.is_set():
            try:
                run = self._claim(slot)
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the worker thread
                log.exception("could not claim a run")
                run = None
            if run is None:
                with self._changed:
                    self._changed.wait(self.poll_seconds)
                continue
            try:
                self._execute(slot, run)
            except Exception:  # noqa: BLE001 - record it if we can; the thread must live on
                self._record_internal_failure(run)
            finally:
                slot.run_id, slot.expecting = None, frozenset()
                self.wake()

    def _claim(self, slot: _Slot) -> RunRecord | None:
        with self._claim_lock:
            if self._stopping.is_set():
                return None
            queued = self.store.queued(limit=64)
            keep = {run.id for run in queued} | {s.run_id for s in self.slots}
            self._models_of = {k: v for k, v in self._models_of.items() if k in keep}
            chosen = self._choose(slot, queued)
            if chosen is None:
                return None
            run = self.store.claim(chosen.id)
            if run is not None:
                slot.run_id, slot.expecting = run.id, self._models(run)
            return run

    def _choose(self, slot: _Slot, queued: list[RunRecord]) -> RunRecord | None:
        if not queued or not self.options.affinity:
            return queued[0] if queued else None
        warm_elsewhere = frozenset().union(*(s.warm for s in self.slots if s is not slot))
        for run in queued:
            if self._models(run) & slot.warm:
                return run
        for run in queued:
            if not self._models(run) & warm_elsewhere:
                return run
        oldest = queued[0]
        # A backlog worth a second copy of the models, or a run that has waited long enough.
        if len(queued) > 2 * len(self.slots) or time.time() - oldest.created_at > self.options.affinity_wait:
            return oldest
        return None   # each queued run waits for the worker that holds its models

    def _models(self, run: RunRecord) -> frozenset[str]:
        """The fingerprints of what the run's plan reads (model files among them)."""
        if run.id not in self._models_of:
            try:
                plan = self.executor.plan(Graph.from_dict(run.graph), run.params or None)
                found = frozenset(f for f in plan.fingerprints.values() if f)
            except Exception:  # noqa: BLE001 - an unplannable run fails on the worker, with its reason
                found = frozenset()
            self._models_of[run.id] = found
        return self._models_of[run.id]

    # -- running one ----------------------------------------------------------------------

    def _execute(self, slot: _Slot, run: RunRecord) -> None:
        if self._cancel_requested(run.id):
            self.pool.cancel(slot.index, run.id)
        reply = self.pool.run(slot.index, run.id, run.graph, run.params)
        held: dict | None = None
        outcome: dict | None = None
        error_id = new_error_id()
        try:
            for message in stream(reply):
                for event in message.get("events", ()):
                    event = self._public(event, error_id)
                    if event["kind"] in TERMINAL_EVENTS:
                        held = event     # sent once the store agrees
                    else:
                        self.publish(event)
                outcome = message.get("outcome", outcome)
        except WorkerLost as exc:
            slot.holding = frozenset()
            self._lost(slot, run, str(exc))
            while not self._stopping.is_set() and not self.pool.ready(slot.index):
                log.info("waiting for worker %s to restart", slot.name)
            return
        slot.holding = frozenset(outcome.get("holding", ()))
        status = outcome["status"]
        if self._stopping.is_set() and status == CANCELLED and not self._cancel_requested(run.id):
            self.store.requeue(run.id, "re-queued: the server shut down while it ran", refund_attempt=True)
            return
        result, error = self._record_of(run, outcome, error_id)
        if self.store.finish(run.id, status, result, error, attempt=run.attempts) is None:
            log.warning("run %s: ignored a late result of attempt %d", run.id, run.attempts)
            return
        if held is None:
            held = Event(END_EVENTS[status], run.id, data={"error": error} if error else {}).to_dict()
        held.setdefault("data", {})["status"] = status
        self.publish(held)
        self.finished(run.id)

    def _record_of(self, run: RunRecord, outcome: dict, error_id: str) -> tuple[dict, dict | None]:
        stored: dict[str, str] = {}
        for name, data in outcome.get("files", {}).items():
            target = contained(self.output_dir, f"{run.id}/{name}")
            atomic_write(target, data, durable=True)
            stored[name] = str(target)
        outputs = with_local_files(outcome.get("outputs", {}), stored.__getitem__)
        try:
            file_outputs = file_outputs_of(Graph.from_dict(run.graph), self.executor.registry)
        except Exception:  # noqa: BLE001 - a graph that no longer loads has no outputs anyway
            file_outputs = {}
        described, files = describe_outputs(outputs, self.output_dir, lambda n: output_url(run.id, n),
                                            file_outputs=file_outputs)
        result = {"ran": outcome.get("ran", []), "cached": outcome.get("cached", []),
                  "timings": outcome.get("timings", {}), "outputs": described, "files": files,
                  "model_loads": outcome.get("model_loads", 0), "worker": outcome.get("worker")}
        error = outcome.get("error")
        if outcome["status"] == CANCELLED:
            error = {"error": "cancelled", "message": (error or {}).get("message") or "cancelled"}
        elif error is not None:
            if error.get("traceback"):
                log.error("%s: run %s failed on %s: %s\n%s", error_id, run.id, outcome.get("worker"),
                          error.get("message", ""), error["traceback"])
            error = public_error(error, error_id)
        return result, error

    def _lost(self, slot: _Slot, run: RunRecord, reason: str) -> None:
        """The actor died before answering: re-queue the run (attempt counted) or fail it."""
        log.warning("run %s: worker %s lost (%s)", run.id, slot.name, reason)
        if self._stopping.is_set() and not self._cancel_requested(run.id):
            self.store.requeue(run.id, "re-queued: the server shut down while it ran", refund_attempt=True)
            return
        if self._cancel_requested(run.id):
            status, error = CANCELLED, {"error": "cancelled", "message": "cancelled; its worker was lost"}
        elif run.attempts < self.max_attempts:
            note = (f"re-queued: worker {slot.name} was lost during attempt {run.attempts} of "
                    f"{self.max_attempts} ({reason})")
            if self.store.requeue(run.id, note) is not None:
                self.publish(Event(RUN_REQUEUED, run.id, data={"attempt": run.attempts,
                                                              "reason": note}).to_dict())
            return
        else:
            status, error = FAILED, {"error": "worker_lost", "message": (
                f"its worker was lost during each of {run.attempts} attempts; not retried ({reason})")}
        if self.store.finish(run.id, status, {"worker": slot.name}, error, attempt=run.attempts):
            self.publish(Event(END_EVENTS[status], run.id, data={"error": error, "status": status}).to_dict())
            self.finished(run.id)

    def _record_internal_failure(self, run: RunRecord) -> None:
        error_id = new_error_id()
        log.exception("%s: run %s could not be recorded", error_id, run.id)
        try:
            if self.store.finish(run.id, FAILED, {}, {
                    "error": "internal", "id": error_id,
                    "message": f"the server could not record this run (error {error_id})"},
                    attempt=run.attempts):
                self.finished(run.id)
        except Exception:  # noqa: BLE001 - the store itself is failing; recover() will see it
            log.exception("the run store is failing")
            self._stopping.wait(self.poll_seconds)

    def _public(self, event: dict, error_id: str) -> dict:
        if event.get("kind") in (NODE_FAILED, RUN_FAILED):
            event = {**event, "data": public_error(event.get("data", {}), error_id)}
        return event

    def _cancel_requested(self, run_id: str) -> bool:
        latest = self.store.get(run_id)
        return bool(latest and latest.cancel_requested)

