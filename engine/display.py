"""The CLI's live view of a run: one line per node (ran / cached / failed) and step bars."""
from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .events import NODE_CACHED, NODE_FAILED, NODE_FINISHED, NODE_PROGRESS, NODE_STARTED, Event


class RunDisplay:
    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> "RunDisplay":
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        label = f"{event.node} [dim]({event.node_type})[/dim]"
        if event.kind == NODE_STARTED:
            self._tasks[event.node] = self.progress.add_task(f"▶ {label}", total=None)
        elif event.kind == NODE_PROGRESS and event.node in self._tasks:
            self.progress.update(self._tasks[event.node], completed=event.data["step"],
                                 total=event.data["total"])
        elif event.kind == NODE_CACHED:
            self.console.print(f"[cyan]• cached[/cyan] {label}")
        elif event.kind in (NODE_FINISHED, NODE_FAILED):
            task = self._tasks.pop(event.node, None)
            if task is not None:
                self.progress.remove_task(task)
            if event.kind == NODE_FINISHED:
                self.console.print(f"[green]✓ ran[/green]    {label} {event.data['seconds']:.2f}s")
            else:
                self.console.print(f"[red]✗ failed[/red] {label}: {event.data['message']}")


def summarise(value: Any, limit: int = 200) -> str:
    """A short readable form of any output value (tensors by shape, not contents)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__}(shape={tuple(value.shape)}, dtype={value.dtype})"
    if hasattr(value, "size") and hasattr(value, "mode"):
        return f"Image({value.size[0]}x{value.size[1]}, {value.mode})"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
