"""Where queued runs are executed, behind a small interface the API does not look past.

`RunDispatcher` is all the API knows: wake it when a run is queued, ask it to cancel a
run, start and stop it. The store is the queue and the source of truth: a dispatcher
claims runs from it and records how they ended. `LocalDispatcher` runs them on one
worker thread with one long-lived `Executor`, so the engine's cache and loaded models
stay warm from run to run. A distributed backend (Ray actors, one per GPU, each with
its own Executor) would implement the same four methods and claim from the same store.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Protocol
from urllib.parse import quote

from engine import CancelToken, Executor, Graph, GraphError, Registry
from engine.events import NODE_FAILED, RUN_CANCELLED, RUN_FAILED, RUN_FINISHED, Event

from .errors import new_error_id, public_error
from .files import describe_outputs
from .store import CANCELLED, FAILED, SUCCEEDED, RunRecord, RunStore

log = logging.getLogger(__name__)

TERMINAL_EVENTS = frozenset({RUN_FINISHED, RUN_FAILED, RUN_CANCELLED})


class RunDispatcher(Protocol):
    def start(self) -> None:
        """Begin taking queued runs from the store."""

    def stop(self, timeout: float = 10.0) -> None:
        """Stop taking runs; a run cut short goes back to the queue, not counted as an attempt."""

    def wake(self) -> None:
        """A run was queued: look at the store now rather than at the next poll."""

    def cancel(self, run_id: str) -> bool:
        """Stop `run_id` if it is running here (within one node step); False if it is not."""

    @property
    def healthy(self) -> bool:
        """True while it can take runs (for /healthz)."""


def output_url(run_id: str, name: str) -> str:
    return f"/v1/runs/{run_id}/outputs/{quote(name, safe='/')}"


class LocalDispatcher:
    """One worker thread, one Executor: runs execute one at a time, in submission order."""

    def __init__(self, store: RunStore, executor: Executor, *, output_dir: Path,
                 publish: Callable[[dict], None] = lambda event: None,
                 finished: Callable[[str], None] = lambda run_id: None,
                 poll_seconds: float = 1.0):
        self.store = store
        self.executor = executor
        self.output_dir = Path(output_dir)
        self.publish = publish
        self.finished = finished
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._current: tuple[str, CancelToken] | None = None
        self._held: dict[str, dict] = {}   # terminal events, sent once the store agrees
        self._error_ids: dict[str, str] = {}  # one id per failed run: its events, record and log
        self._thread: threading.Thread | None = None
        self._unsubscribe = executor.events.subscribe(self._on_engine_event)

    # -- RunDispatcher ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="loom-worker", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        self._wake.set()
        with self._lock:
            if self._current is not None:
                self._current[1].cancel()
        if self._thread is not None:
            self._thread.join(timeout)
        self._unsubscribe()

    def wake(self) -> None:
        self._wake.set()

    def cancel(self, run_id: str) -> bool:
        with self._lock:
            if self._current is not None and self._current[0] == run_id:
                self._current[1].cancel()
                return True
        return False

    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- the worker ---------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                run = self.store.claim_next()
            except Exception:  # noqa: BLE001 - a store hiccup must not kill the worker
                log.exception("could not claim a run")
                run = None
            if run is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            try:
                self._execute(run)
            except Exception:  # noqa: BLE001 - record it if we can; the worker must live on
                error_id = self._error_id(run.id)
                log.exception("%s: run %s could not be recorded", error_id, run.id)
                self._held.pop(run.id, None)
                self._error_ids.pop(run.id, None)
                try:
                    self.store.finish(run.id, FAILED, {}, {
                        "error": "internal", "id": error_id,
                        "message": f"the server could not record this run (error {error_id})"})
                    self.finished(run.id)
                except Exception:  # noqa: BLE001 - the store itself is failing; recover() will see it
                    log.exception("the run store is failing")
                    self._stopping.wait(self.poll_seconds)

    def _execute(self, run: RunRecord) -> None:
        token = CancelToken()
        with self._lock:
            self._current = (run.id, token)
        # A cancel that arrived between the claim and now is in the store (see `cancel`).
        latest = self.store.get(run.id)
        if latest is not None and latest.cancel_requested:
            token.cancel()
        try:
            status, result, error = self._run_engine(run, token)
        finally:
            with self._lock:
                self._current = None
            self._error_ids.pop(run.id, None)
        if self._stopping.is_set() and status == CANCELLED and not self._cancel_requested(run.id):
            self.store.requeue(run.id, "re-queued: the server shut down while it ran",
                               refund_attempt=True)
            self._held.pop(run.id, None)
            return
        self.store.finish(run.id, status, result, error)
        held = self._held.pop(run.id, None)
        if held is not None:
            held.setdefault("data", {})["status"] = status
            self.publish(held)
        self.finished(run.id)

    def _run_engine(self, run: RunRecord, token: CancelToken) -> tuple[str, dict, dict | None]:
        try:
            graph = Graph.from_dict(run.graph).named_by_shape()
            outcome = self.executor.run(graph, run.params or None, cancel=token, run_id=run.id,
                                         check=False)
        except GraphError as exc:   # valid when queued, but the node set changed since
            self._hold_failure(run.id, exc.to_dict())
            return FAILED, {}, exc.to_dict()
        except Exception:  # noqa: BLE001 - recorded on the run, never kills the worker
            error = self._internal_error(run.id, "crashed the executor")
            self._hold_failure(run.id, error)
            return FAILED, {}, error
        try:
            outputs, files = describe_outputs(outcome.outputs or {}, self.output_dir,
                                              lambda name: output_url(run.id, name),
                                              file_outputs=file_outputs_of(graph, self.executor.registry))
        except Exception:  # noqa: BLE001 - an output we cannot describe fails the run, not the worker
            outputs, files = {}, []
            error = self._internal_error(run.id, "cannot describe its outputs")
            if outcome.status == "succeeded":
                self._hold_failure(run.id, error)
                return FAILED, {"ran": list(outcome.ran), "cached": list(outcome.cached),
                                "timings": dict(outcome.timings)}, error
        result = {"ran": list(outcome.ran), "cached": list(outcome.cached),
                  "timings": dict(outcome.timings), "outputs": outputs, "files": files}
        if outcome.status == "succeeded":
            return SUCCEEDED, result, None
        if outcome.status == "cancelled":
            message = "cancelled"
            if outcome.error is not None:
                message = getattr(outcome.error, "message", None) or str(outcome.error)
            return CANCELLED, result, {"error": "cancelled", "message": message}
        error = (outcome.error.to_dict() if outcome.error is not None
                 else {"error": "failed", "message": "the run failed"})
        return FAILED, result, public_error(error, self._error_id(run.id))

    def _error_id(self, run_id: str) -> str:
        return self._error_ids.setdefault(run_id, new_error_id())

    def _internal_error(self, run_id: str, what: str) -> dict:
        """Log the exception being handled under a new error id; the client's view of it."""
        error_id = self._error_id(run_id)
        log.exception("%s: run %s %s", error_id, run_id, what)
        return {"error": "internal", "id": error_id,
                "message": f"the server failed while running this run (error {error_id}; "
                           f"the server log has the details)"}

    def _hold_failure(self, run_id: str, error: dict) -> None:
        self._held[run_id] = Event(RUN_FAILED, run_id, data={"error": error}).to_dict()

    def _cancel_requested(self, run_id: str) -> bool:
        latest = self.store.get(run_id)
        return bool(latest and latest.cancel_requested)

    def _on_engine_event(self, event: Event) -> None:
        data = event.to_dict()
        if event.kind == NODE_FAILED:
            error_id = self._error_id(event.run_id)
            log.error("%s: run %s, node %s (%s) failed: %s\n%s", error_id, event.run_id,
                      event.node, event.node_type, event.data.get("message", ""),
                      event.data.get("traceback", ""))
        if event.kind in (NODE_FAILED, RUN_FAILED):
            data["data"] = public_error(data.get("data", {}), self._error_id(event.run_id))
        if event.kind in TERMINAL_EVENTS:
            # Sent after the store records the end, so a client reacting to it reads the final state.
            self._held[event.run_id] = data
            return
        self.publish(data)


def file_outputs_of(graph: Graph, registry: Registry) -> dict[str, list[str]]:
    """{node id: its outputs declared as files it wrote}: what a run may offer for download."""
    found = {}
    for node_id, entry in graph.nodes.items():
        spec = registry.get(entry.type)
        if spec is not None and spec.file_outputs:
            found[node_id] = spec.file_outputs
    return found


def make_event(kind: str, run_id: str, **data: Any) -> dict:
    return Event(kind, run_id, data=data).to_dict()
