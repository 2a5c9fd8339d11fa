"""What happens during a run, as events the CLI draws and the server streams."""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

RUN_STARTED = "run_started"
NODE_STARTED = "node_started"
NODE_PROGRESS = "node_progress"
NODE_CACHED = "node_cached"
NODE_FINISHED = "node_finished"
NODE_FAILED = "node_failed"
RUN_FINISHED = "run_finished"
RUN_FAILED = "run_failed"
RUN_CANCELLED = "run_cancelled"


@dataclass(frozen=True)
class Event:
    kind: str
    run_id: str
    node: str | None = None
    node_type: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


Listener = Callable[[Event], None]


class EventBus:
    """Fan-out to subscribers; a subscriber that raises is logged, never breaks the run."""

    def __init__(self):
        self._listeners: list[Listener] = []
        self._lock = threading.Lock()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        with self._lock:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
        return unsubscribe

    def publish(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:  # noqa: BLE001 - a broken display must not fail the run
                log.exception("event listener failed on %s", event.kind)
