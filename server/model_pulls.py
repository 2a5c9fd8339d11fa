"""Model pulls asked through the server: one background thread per pull, progress on the
event stream, at most one pull at a time of the same source.

A pull writes into the models folders every client's runs read, so the routes that start
one require the token even on loopback (see `app.py`).
"""
from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from engine.model_pull import PullError, pull

_KEEP_FINISHED = 100      # finished pulls whose status can still be read
_PROGRESS_EVERY_S = 0.25  # progress events at most this often per pull


class NoModelsFolder(Exception):
    pass


class AlreadyPulling(Exception):
    def __init__(self, pull_id: str):
        self.pull_id = pull_id
        super().__init__(pull_id)


class ModelPulls:
    def __init__(self, models_dirs: list[Path], allow_pickle: bool,
                 publish: Callable[[dict], None]):
        self.models_dirs = [Path(d) for d in models_dirs]
        self.allow_pickle = allow_pickle
        self.publish = publish
        self._lock = threading.Lock()
        self._active: dict[str, str] = {}                     # source -> pull id
        self._pulls: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def start(self, source: str, kind: str | None = None, variant: str | None = None,
              sha256: str | None = None) -> dict[str, Any]:
        if not self.models_dirs:
            raise NoModelsFolder("this server has no models folder to install into")
        with self._lock:
            if source in self._active:
                raise AlreadyPulling(self._active[source])
            pull_id = uuid.uuid4().hex[:16]
            self._active[source] = pull_id
            status = {"id": pull_id, "source": source, "status": "running", "done": 0,
                      "total": None}
            self._pulls[pull_id] = status
            while len(self._pulls) > _KEEP_FINISHED + len(self._active):
                oldest = next(p for p, s in self._pulls.items() if s["status"] != "running")
                del self._pulls[oldest]
        thread = threading.Thread(target=self._run, args=(pull_id, source, kind, variant, sha256),
                                  name=f"model-pull-{pull_id}", daemon=True)
        thread.start()
        return dict(status)

    def get(self, pull_id: str) -> dict[str, Any] | None:
        with self._lock:
            status = self._pulls.get(pull_id)
            return dict(status) if status else None

    def _run(self, pull_id: str, source: str, kind, variant, sha256) -> None:
        last = 0.0

        def progress(done: int, total: int | None) -> None:
            nonlocal last
            self._update(pull_id, done=done, total=total)
            if time.monotonic() - last >= _PROGRESS_EVERY_S:
                last = time.monotonic()
                self._emit(pull_id)

        self._emit(pull_id)
        try:
            pulled = pull(source, self.models_dirs[0], kind=kind, variant=variant, sha256=sha256,
                          allow_pickle=self.allow_pickle, progress=progress)
            self._update(pull_id, status="installed", kind=pulled.kind, name=pulled.path.name,
                         already_installed=pulled.already_installed)
        except PullError as exc:
            self._update(pull_id, status="failed", message=str(exc))
        finally:
            with self._lock:
                self._active.pop(source, None)
            self._emit(pull_id)

    def _update(self, pull_id: str, **changes: Any) -> None:
        with self._lock:
            self._pulls[pull_id].update(changes)

    def _emit(self, pull_id: str) -> None:
        status = self.get(pull_id)
        self.publish({"kind": "model_pull", "time": time.time(), "data": status})
