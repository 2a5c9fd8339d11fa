"""What the server does, without HTTP: queue a checked run, read runs, cancel, store uploads.

The web app (`server.app`) only translates requests into these calls and their results
(or errors) into responses, so the same operations could sit behind another shell.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import Executor, Graph, GraphError, Problem
from engine.model_inventory import Inventory
from engine.models import ModelPaths
from engine.preflight import preflight

from .config import ServerConfig
from .dispatch import RunDispatcher, make_event
from .events import EventHub
from .files import StoredImage, output_file, store_uploaded_image
from .limits import InputRules, check_graph, input_rules_of, too_many_nodes
from .store import FINAL, QUEUED, RUNNING, RunRecord, RunStore

RUN_QUEUED = "run_queued"


@dataclass
class CancelOutcome:
    run: RunRecord
    accepted: bool      # False: the run had already finished


class RunService:
    def __init__(self, config: ServerConfig, executor: Executor, store: RunStore,
                 dispatcher: RunDispatcher, hub: EventHub):
        self.config = config
        self.executor = executor
        self.settings = executor.settings
        self.store = store
        self.dispatcher = dispatcher
        self.hub = hub
        self._catalogue: list[dict] | None = None
        self._input_rules: dict[str, InputRules] | None = None
        self._catalogue_lock = threading.Lock()

    # -- runs ---------------------------------------------------------------------------

    def check(self, graph: dict, params: dict) -> None:
        """Raise GraphError with every problem: everything `loom validate` reports plus this
        server's limits."""
        too_big = too_many_nodes(graph, self.config.limits)
        if too_big is not None:
            raise GraphError([too_big])
        models_dirs = list(self.settings.models_dirs)
        problems = check_graph(graph, params, self.executor.limits, self.input_rules(),
                               input_dir=Path(self.settings.input_dir),
                               output_dir=Path(self.settings.output_dir),
                               models_dir=Path(models_dirs[0]) if models_dirs else None)
        try:   # what `loom validate` checks: the graph, missing models and input files, the device
            preflight(Graph.from_dict(graph), params or None, self.executor.registry, self.settings)
        except GraphError as exc:
            problems = list(exc.problems) + problems
        if problems:
            raise GraphError(list(dict.fromkeys(problems)))   # both check file names: once each

    def submit(self, graph: dict, params: dict,
               idempotency_key: str | None = None) -> tuple[RunRecord, bool]:
        """Check and queue a run; (run, created). A replayed idempotency key skips the check."""
        if idempotency_key is not None:
            existing = self.store.get_by_key(idempotency_key)
            if existing is not None:
                # Same key: the same run, or a conflict if the body differs (store decides).
                return self.store.create(graph, params, idempotency_key)
        self.check(graph, params)
        run, created = self.store.create(graph, params, idempotency_key)
        if created:
            self.hub.publish(make_event(RUN_QUEUED, run.id))
            self.dispatcher.wake()
        return run, created

    def get(self, run_id: str) -> RunRecord | None:
        return self.store.get(run_id)

    def list(self, statuses: list[str], limit: int, before: int | None) -> list[RunRecord]:
        return self.store.list(statuses, limit=limit, before=before)

    def cancel(self, run_id: str) -> CancelOutcome | None:
        before = self.store.get(run_id)
        if before is None:
            return None
        if before.status in FINAL:
            return CancelOutcome(before, accepted=False)
        run = self.store.request_cancel(run_id)
        if run.status == RUNNING:
            self.dispatcher.cancel(run_id)
        elif run.status == "cancelled" and before.status == QUEUED:
            self.hub.publish(make_event("run_cancelled", run_id, message="cancelled before it started"))
            self.hub.run_finished(run_id)
        return CancelOutcome(run, accepted=run.status not in FINAL or run.cancel_requested)

    def output_path(self, run_id: str, name: str) -> Path:
        """Raises KeyError (no such run), FileNotFoundError or UnsafePath."""
        run = self.store.get(run_id)
        if run is None:
            raise KeyError(run_id)
        return output_file(Path(self.settings.output_dir), name, run.files)

    # -- catalogue, models, uploads -----------------------------------------------------

    def catalogue(self) -> list[dict]:
        with self._catalogue_lock:
            if self._catalogue is None:
                self._catalogue = self.executor.registry.catalogue()
            return self._catalogue

    def input_rules(self) -> dict[str, InputRules]:
        if self._input_rules is None:
            self._input_rules = input_rules_of(self.catalogue())
        return self._input_rules

    def models(self) -> tuple[dict[str, list[str]], list[dict]]:
        """Names by kind, and every model with its kind, family, size and format."""
        paths = ModelPaths(self.settings.models_dirs, self.settings.extra_model_paths)
        inventory = Inventory(paths, detect_family=self.executor.registry.detect_model_family)
        entries = [e.to_dict() for e in inventory.entries()]
        return {kind: paths.list(kind) for kind in paths.kinds()}, entries

    def upload_image(self, data: bytes) -> StoredImage:
        return store_uploaded_image(data, Path(self.settings.input_dir),
                                    max_pixels=self.config.max_upload_pixels)


def problems_of(exc: GraphError) -> list[dict[str, Any]]:
    return [p.to_dict() if isinstance(p, Problem) else {"message": str(p)} for p in exc.problems]
