"""What ComfyUI's routes do, without HTTP: submit prompts, read the queue and history, cancel.

A thin shell over the same `RunService` as `/v1`: a prompt is converted to a Loom graph,
checked (engine validation, this server's limits, contained paths) and queued in the same
durable store, run by the same dispatcher. ComfyUI's prompt id is the run's idempotency
key (`comfy:<prompt_id>`), so a client that resends a prompt with the same id gets the same
run, and lookups by prompt id work after a restart.
"""
from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any, Iterable

from engine import GraphError
from engine.models import ModelPaths

from ..service import RunService
from ..store import FINAL, QUEUED, RUNNING, IdempotencyConflict, RunRecord
from . import views
from .object_info import ObjectInfo, list_input_images
from .prompts import attach_request, prompt_error, read_prompt
from .socket import PromptRoutes
from .userdata import UserData

KEY_PREFIX = "comfy:"
MAX_LISTED = 10_000


class PromptRefused(Exception):
    """A prompt that is not queued; `body` is ComfyUI's 400 answer."""

    def __init__(self, body: dict):
        self.body = body
        super().__init__(body["error"]["message"])


class ComfyShell:
    def __init__(self, service: RunService, data_dir: Path):
        self.service = service
        self.store = service.store
        self.registry = service.executor.registry
        self.userdata = UserData(data_dir)
        self.routes = PromptRoutes(self.store.get)
        self.object_info = ObjectInfo(self.registry, self.models_of,
                                      lambda: list_input_images(Path(service.settings.input_dir)))
        self._hidden_lock = threading.Lock()

    def models_of(self, kind: str) -> list[str]:
        settings = self.service.settings
        return ModelPaths(settings.models_dirs, settings.extra_model_paths).list(kind)

    # -- prompts ------------------------------------------------------------------------

    def submit(self, body: Any) -> dict:
        """Queue a prompt; {prompt_id, number, node_errors}. PromptRefused when it is invalid."""
        if not isinstance(body, dict):
            raise PromptRefused(_invalid("the request body must be a JSON object"))
        prompt = body.get("prompt")
        prompt_id = body.get("prompt_id") or str(uuid.uuid4())
        if not isinstance(prompt_id, str) or not 0 < len(prompt_id) <= 200 or not prompt_id.isprintable():
            raise PromptRefused(_invalid("'prompt_id' must be a string of 1-200 printable characters"))
        client_id = body.get("client_id")
        client_id = client_id if isinstance(client_id, str) else None
        extra_data = body.get("extra_data") if isinstance(body.get("extra_data"), dict) else {}
        outputs: list[str] = []
        graph = None
        try:
            graph = read_prompt(prompt, self.registry)
            outputs = self.output_nodes(graph)
            graph = attach_request(graph, prompt=prompt, prompt_id=prompt_id, client_id=client_id,
                                   extra_data=extra_data)
            graph["meta"]["comfy"]["outputs"] = outputs
            run, _ = self.service.submit(graph, {}, KEY_PREFIX + prompt_id)
        except GraphError as exc:
            raise PromptRefused(prompt_error(exc, prompt, self.registry, graph, outputs)) from None
        except IdempotencyConflict:
            raise PromptRefused(_invalid(f"prompt_id {prompt_id!r} was already used for "
                                         f"another prompt")) from None
        self.routes.remember(run.id, prompt_id, client_id)
        return {"prompt_id": prompt_id, "number": run.seq, "node_errors": {}}

    def output_nodes(self, graph: dict) -> list[str]:
        return [node_id for node_id, body in graph["nodes"].items()
                if (spec := self.registry.get(body["type"])) is not None and spec.output_node]

    def run_of(self, prompt_id: str) -> RunRecord | None:
        return self.store.get_by_key(KEY_PREFIX + prompt_id) or self.store.get(prompt_id)

    def queue_remaining(self) -> int:
        counts = self.store.counts()
        return counts[QUEUED] + counts[RUNNING]

    # -- queue, interrupt ---------------------------------------------------------------

    def queue(self) -> dict:
        running = self.store.list([RUNNING], limit=MAX_LISTED)
        pending = list(reversed(self.store.list([QUEUED], limit=MAX_LISTED)))
        return {"queue_running": [views.queue_item(r) for r in running],
                "queue_pending": [views.queue_item(r) for r in pending]}

    def cancel_queued(self, prompt_ids: Iterable[str] | None) -> list[str]:
        """Cancel queued prompts (all of them when `prompt_ids` is None); those cancelled."""
        if prompt_ids is None:
            runs = self.store.list([QUEUED], limit=MAX_LISTED)
        else:
            runs = [r for r in (self.run_of(p) for p in prompt_ids) if r and r.status == QUEUED]
        return [views.prompt_id_of(r) for r in runs if self.service.cancel(r.id) is not None]

    def interrupt(self, prompt_id: str | None) -> list[str]:
        """Stop the running prompt (only `prompt_id` when given); the prompt ids stopped."""
        running = self.store.list([RUNNING], limit=MAX_LISTED)
        if prompt_id is not None:
            running = [r for r in running if views.prompt_id_of(r) == prompt_id]
        for run in running:
            self.service.cancel(run.id)
        return [views.prompt_id_of(r) for r in running]

    def cancel(self, prompt_id: str) -> bool:
        run = self.run_of(prompt_id)
        if run is None:
            return False
        self.service.cancel(run.id)
        return True

    def free(self, unload_models: bool, free_memory: bool) -> None:
        if unload_models or free_memory:
            self.service.executor.models.clear()
        if free_memory:
            self.service.executor.cache.memory.clear()

    # -- history ------------------------------------------------------------------------

    def history(self, max_items: int | None, offset: int) -> dict:
        hidden = self.hidden()
        limit = min(max_items if max_items is not None else MAX_LISTED, MAX_LISTED)
        runs = [r for r in self.store.list(sorted(FINAL), limit=MAX_LISTED) if not _is_hidden(r, hidden)]
        runs = runs[offset:offset + limit]
        return {views.prompt_id_of(r): views.history_entry(r) for r in reversed(runs)}

    def history_of(self, prompt_id: str) -> dict:
        run = self.run_of(prompt_id)
        if run is None or run.status not in FINAL or _is_hidden(run, self.hidden()):
            return {}
        return {views.prompt_id_of(run): views.history_entry(run)}

    def hide_history(self, prompt_ids: Iterable[str] | None) -> None:
        """Clear (None) or delete entries from ComfyUI's history view; the runs stay in the store."""
        with self._hidden_lock:
            hidden = self.hidden()
            if prompt_ids is None:
                latest = self.store.list([], limit=1)
                hidden["before"] = latest[0].seq + 1 if latest else 0
            else:
                hidden["ids"] = sorted(set(hidden["ids"]) | set(prompt_ids))
            self.userdata.save_state("history_hidden", hidden)

    def hidden(self) -> dict:
        stored = self.userdata.load_state("history_hidden")
        return {"before": int(stored.get("before", 0)), "ids": list(stored.get("ids", []))}

    # -- jobs ---------------------------------------------------------------------------

    def jobs(self, statuses: list[str], limit: int, offset: int, newest_first: bool) -> dict:
        wanted = [views.STATUS_OF_JOB[s] for s in statuses if s in views.STATUS_OF_JOB]
        if statuses and not wanted:
            raise PromptRefused(_invalid(f"unknown job status in {statuses}; one of "
                                         f"{', '.join(views.STATUS_OF_JOB)}"))
        runs = self.store.list(wanted, limit=MAX_LISTED)
        if not newest_first:
            runs.reverse()
        page = runs[offset:offset + limit]
        return {"jobs": [views.job(r) for r in page],
                "pagination": {"offset": offset, "limit": limit, "total": len(runs),
                               "has_more": offset + limit < len(runs)}}

    def job(self, prompt_id: str) -> dict | None:
        run = self.run_of(prompt_id)
        return views.job(run, detailed=True) if run is not None else None


def _is_hidden(run: RunRecord, hidden: dict) -> bool:
    return run.seq < hidden["before"] or views.prompt_id_of(run) in hidden["ids"]


def _invalid(message: str) -> dict:
    return {"error": {"type": "invalid_prompt", "message": message, "details": message,
                      "extra_info": {}}, "node_errors": {}}
