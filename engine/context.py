"""What a running node may use: progress, cancellation, limits, models, settings, outputs, a logger.

Passed as the first argument (`ctx`) to nodes that ask for it. Nodes never print and
never reach for globals; everything they need from the run is here.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import Cancelled
from .events import NODE_PROGRESS, Event
from .limits import RunBudget
from .settings import Settings

if TYPE_CHECKING:
    from .graph import Graph
    from .models import ModelManager


class CancelToken:
    """Set from any thread; checked between nodes and at every `ctx.progress` call."""

    def __init__(self):
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


@dataclass
class Context:
    node_id: str
    node_type: str
    run_id: str
    settings: Settings
    models: "ModelManager"
    graph: "Graph"
    params: dict[str, Any]
    cancel_token: CancelToken
    publish: Callable[[Event], None] = field(repr=False)
    log: logging.LoggerAdapter = field(repr=False, default=None)
    budget: RunBudget = field(repr=False, default_factory=RunBudget)   # the run's limits

    def __post_init__(self):
        if self.log is None:
            self.log = logging.LoggerAdapter(logging.getLogger("loom.node"), {"node": self.node_id})

    @property
    def output_dir(self) -> Path:
        return Path(self.settings.output_dir)

    def check_cancelled(self) -> None:
        if self.cancel_token.cancelled:
            raise Cancelled(f"cancelled in node '{self.node_id}'")

    def progress(self, step: int, total: int, **data: Any) -> None:
        """Report step `step` of `total` (e.g. a sampler step); stop here if cancelled or
        out of time."""
        self.publish(Event(NODE_PROGRESS, self.run_id, self.node_id, self.node_type,
                           {"step": step, "total": total, **data}))
        self.check_cancelled()
        self.budget.check_time()

    def limit(self, kind: str, amount: float, input: str | None = None) -> None:
        """Check an amount only known while running (an upscaled size, a padded canvas)
        against the run's limit `kind`, before spending it; raises LimitExceeded."""
        self.budget.check(kind, amount, input)
