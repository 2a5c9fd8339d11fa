"""The CLI's live view of a run: one line per node (ran / cached / failed) and step bars.

On a terminal the steps of a running node are a bar; in a pipe or a log file (CI, `tee`)
there is no bar to redraw, so a long node prints a `step i/n` line every few seconds
instead, and whoever reads the log knows the run is alive.
"""
from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from .events import NODE_CACHED, NODE_FAILED, NODE_FINISHED, NODE_PROGRESS, NODE_STARTED, Event

PROGRESS_LINE_SECONDS = 5.0


class RunDisplay:
    def __init__(self, console: Console | None = None, line_every: float = PROGRESS_LINE_SECONDS):
        self.console = console or Console(stderr=True)
        self.live = self.console.is_terminal
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=True)
        self.line_every = line_every
        self._tasks: dict[str, Any] = {}
        self._last_line: dict[str, float] = {}

    def __enter__(self) -> "RunDisplay":
        if self.live:
            self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.progress.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        label = f"{event.node} [dim]({event.node_type})[/dim]"
        if event.kind == NODE_STARTED:
            self._last_line[event.node] = time.monotonic()
            if self.live:
                self._tasks[event.node] = self.progress.add_task(f"▶ {label}", total=None)
        elif event.kind == NODE_PROGRESS:
            self._progress(event, label)
        elif event.kind == NODE_CACHED:
            self.console.print(f"[cyan]• cached[/cyan] {label}")
        elif event.kind in (NODE_FINISHED, NODE_FAILED):
            self._last_line.pop(event.node, None)
            task = self._tasks.pop(event.node, None)
            if task is not None:
                self.progress.remove_task(task)
            if event.kind == NODE_FINISHED:
                self.console.print(f"[green]✓ ran[/green]    {label} {event.data['seconds']:.2f}s")
            else:
                self.console.print(f"[red]✗ failed[/red] {label}: {event.data['message']}")

    def _progress(self, event: Event, label: str) -> None:
        step, total = event.data["step"], event.data["total"]
        if self.live:
            if event.node in self._tasks:
                self.progress.update(self._tasks[event.node], completed=step, total=total)
            return
        now = time.monotonic()
        if now - self._last_line.get(event.node, now) >= self.line_every:
            self._last_line[event.node] = now
            self.console.print(f"  … {label} step {step}/{total}")


def summarise(value: Any, limit: int = 200) -> str:
    """A short readable form of any output value (tensors by shape, not contents)."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"{type(value).__name__}(shape={tuple(value.shape)}, dtype={value.dtype})"
    if hasattr(value, "size") and hasattr(value, "mode"):
        return f"Image({value.size[0]}x{value.size[1]}, {value.mode})"
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def print_outputs(result, out, err) -> None:
    """Each output value of a run (stdout), then how many nodes ran and came from the cache."""
    for node_id, outputs in result.outputs.items():
        for name, value in outputs.items():
            out.print(f"[bold]{node_id}[/bold].{name} = {summarise(value)}", highlight=False)
    err.print(f"{len(result.ran)} ran, {len(result.cached)} cached, "
              f"{sum(result.timings.values()):.2f}s in nodes")


def human_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def print_models(models, out) -> None:
    """The models a process holds in memory, one row each: name, kind, where, in what form, size."""
    from rich.table import Table

    table = Table("kind", "name", "device", "weights", "size", box=None, pad_edge=False)
    for m in models:
        main = sorted((d for d, n in m.dtypes.items() if n >= 0.01 * m.bytes), key=m.dtypes.get, reverse=True)
        weights = m.details.get("quantization") or ", ".join(main)   # not the odd int64 id buffer
        if "upcast" in m.details:
            weights += f" (upcast from {m.details['upcast'].split(' -> ')[0]})"
        table.add_row(m.kind, m.name, ", ".join(m.devices), weights, human_size(m.bytes))
    out.print(f"models in memory: {len(models)}, {human_size(sum(m.bytes for m in models))}")
    out.print(table)


def json_value(value: Any) -> Any:
    """An output for `--json`: numbers, text, booleans and lists or mappings of them stay what
    they are; anything else (tensors, images, models) becomes its short summary."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: json_value(v) for k, v in value.items()}
    if hasattr(value, "model_dump"):   # pydantic reports (quality, watermark)
        return json_value(value.model_dump(mode="json"))
    return summarise(value)
