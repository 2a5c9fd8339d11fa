"""`loom watch`: one warm process that reruns a graph whenever it, or a file it reads, is saved.

Models stay loaded and results stay in memory between runs, so an edit to a seed or a
prompt reruns only what it touches. Each run prints what ran and why, and the outputs.
A file that does not parse, or a graph with problems, is reported and watching goes on.
"""
from __future__ import annotations

import threading
from pathlib import Path
from typing import Callable

from rich.console import Console

from .errors import GraphError, LoomError, NodeError
from .executor import Executor, RunResult
from .graph import Graph
from .models import ModelNotFound, ModelPaths
from .paths import UnsafePath, contained
from .preflight import Checked, named_files


def files_read(graph: Graph, executor: Executor) -> set[Path]:
    """The files a graph reads besides itself: input files and model files its nodes name."""
    settings = executor.settings
    paths = ModelPaths(settings.models_dirs, settings.extra_model_paths)
    found: set[Path] = set()
    for _, _, name, kind, folder in named_files(graph, executor.registry):
        try:
            if kind is not None:
                found.add(paths.resolve(kind, name))
            elif folder == "input":
                found.add(contained(settings.input_dir, name))
        except (ModelNotFound, UnsafePath):
            continue
    return found


def watch(graph_path: str, load: Callable[[], Graph], check: Callable[[Graph], Checked],
          executor: Executor, out: Console, err: Console, *, debounce: float = 0.2,
          stop: threading.Event | None = None, max_runs: int | None = None) -> int:
    """Run, then rerun on every change until `stop` is set, `max_runs` runs are done or
    Ctrl-C (which the CLI turns into exit 130)."""
    from watchfiles import watch as watch_files

    graph_file = Path(graph_path).resolve()
    watched = {graph_file}
    runs, why = 0, "first run"
    while True:
        runs += 1
        watched = {graph_file} | _run_once(load, check, executor, out, err, runs, why)
        if max_runs is not None and runs >= max_runs:
            return 0
        err.print(f"[dim]watching {len(watched)} file(s); Ctrl-C stops[/dim]")
        folders = sorted({str(p.parent) for p in watched})
        wanted = {str(p) for p in watched}
        changed: set[str] = set()
        for changes in watch_files(*folders, watch_filter=lambda _, path: path in wanted,
                                   debounce=int(debounce * 1000), stop_event=stop,
                                   recursive=False, raise_interrupt=True):
            changed = {path for _, path in changes}
            break
        if not changed:   # stopped
            return 0
        why = ", ".join(sorted(Path(p).name for p in changed)) + " changed"


def _run_once(load, check, executor: Executor, out: Console, err: Console, number: int,
              why: str) -> set[Path]:
    """One run, printed; the files the graph reads (for the next wait)."""
    err.rule(f"run {number}: {why}", style="dim")
    try:
        graph = load()
        checked = check(graph)
    except GraphError as exc:
        err.print(f"[red]invalid graph[/red]: {len(exc.problems)} problem(s)")
        for problem in exc.problems:
            err.print(f"  • {problem}", markup=False, highlight=False)
        return set()
    except LoomError as exc:
        err.print(f"error: {exc}", style="red", markup=False, highlight=False)
        return set()
    result = executor.run(checked.graph, check=False)
    _print_result(result, out, err)
    return files_read(checked.graph, executor)


def _print_result(result: RunResult, out: Console, err: Console) -> None:
    from .display import print_outputs

    for record in result.records:
        if record.status == "ran":
            err.print(f"[green]✓ ran[/green] {record.node} [dim]({record.type})[/dim] "
                      f"{record.seconds:.2f}s: {record.reason}", highlight=False)
    print_outputs(result, out, err)
    if isinstance(result.error, NodeError):
        err.print(f"failed: {result.error}", style="red", markup=False, highlight=False)
