"""`loom batch`: the command line over `engine.batch`, with a live progress bar.

    loom batch GRAPH (--params FILE.jsonl | --sweep NAME=VALUES ...) [--out DIR]
               [--backend local|ray] [--workers N] [--ray-address ADDR]

Exit codes as `loom run`: 0 every item done, 1 some item failed (they are listed, and a
rerun of the same command retries only them), 2 a bad graph or command, 130 interrupted.
"""
from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from .batch import MANIFEST, BatchReport, LocalBackend, RayBackend, batch_items, run_batch
from .errors import GraphError, Problem
from .ray_backend import WorkerSpec, add_backend_arguments

EXIT_OK, EXIT_FAILED, EXIT_CANCELLED = 0, 1, 130


def add_parser(sub, add_run_options, executor_of, load_graph, parse_sets, err: Console) -> None:
    """`executor_of(args)` builds the executor `loom run` would (folders, caches, settings)."""
    batch = sub.add_parser("batch", help="run a graph for every parameter set, resumably",
                           description="Runs GRAPH once per item; DIR/manifest.jsonl records each "
                           "finished item, and rerunning the command skips what it says is done.")
    batch.add_argument("graph")
    batch.add_argument("--params", metavar="FILE.jsonl", help="one JSON object of params per line")
    batch.add_argument("--sweep", action="append", default=[], metavar="NAME=VALUES",
                       help="seed=0..999 (inclusive), prompt=@prompts.txt (one per line), "
                            "cfg=4,5.5,7; several sweeps combine as a product")
    batch.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE",
                       help="a param fixed for every item")
    batch.add_argument("--nodes", action="append", default=[], metavar="MODULE",
                       help="also load node types from this importable module (repeatable)")
    add_backend_arguments(batch)
    add_run_options(batch)
    batch.set_defaults(func=lambda args: cmd_batch(args, executor_of, load_graph, parse_sets, err))


def cmd_batch(args, executor_of, load_graph, parse_sets, err: Console) -> int:
    if not args.params and not args.sweep:
        raise GraphError([Problem("give the items: --params FILE.jsonl and/or --sweep NAME=VALUES")])
    graph = load_graph(args.graph)
    fixed = parse_sets(args.set, "--set")
    items = [{**fixed, **item} for item in
             batch_items(Path(args.params) if args.params else None, args.sweep)]
    executor = executor_of(args)
    if args.nodes:
        executor.registry = executor.registry.copy()   # the process-wide registry stays as installed
        for module in args.nodes:
            executor.registry.load_module(module)
    executor.check(graph, items[0])      # a bad graph fails once, here, not once per item
    out_dir = Path(args.out)
    if args.backend == "ray":
        spec = WorkerSpec.here(executor.settings, args.nodes)
        err.print("starting the Ray workers…")
        backend = RayBackend(spec, workers=args.workers, address=args.ray_address,
                             gpus_per_worker=args.gpus_per_worker, temp_dir=out_dir / ".ray")
    else:
        backend = LocalBackend(executor)
    try:
        report = _run_with_progress(graph, items, out_dir, backend, err)
    except KeyboardInterrupt:
        err.print(f"[yellow]interrupted[/yellow]: finished items are in {out_dir / MANIFEST}; "
                  "rerun the same command to resume")
        return EXIT_CANCELLED
    finally:
        backend.close()
    _print_report(report, out_dir, err)
    return EXIT_FAILED if report.failed else EXIT_OK


def _run_with_progress(graph, items, out_dir: Path, backend, err: Console) -> BatchReport:
    progress = Progress(TextColumn("[bold]batch"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[failed]} failed · {task.fields[left]} left · "
                                   "{task.fields[rate]:.2f} img/s"),
                        TimeRemainingColumn(), console=err)
    with progress:
        task = progress.add_task("batch", total=len(items), failed=0, left=len(items), rate=0.0)

        def on_item(report: BatchReport, record: dict) -> None:
            progress.update(task, completed=report.done + len(report.failed), failed=len(report.failed),
                            left=report.remaining,
                            rate=report.images / report.seconds if report.seconds else 0.0)

        report = run_batch(graph, items, out_dir, backend, on_item=on_item)
        progress.update(task, completed=report.done + len(report.failed), left=report.remaining)
    return report


def _print_report(report: BatchReport, out_dir: Path, err: Console) -> None:
    err.print(f"{report.done} of {report.total} done ({report.skipped} already done earlier), "
              f"{len(report.failed)} failed, {report.images} images in {report.seconds:.1f}s, "
              f"{report.model_loads} model loads; manifest: {out_dir / MANIFEST}")
    if not report.failed:
        return
    table = Table("item", "params", "error", title="failed items (rerun the command to retry them)")
    for record in report.failed:
        error = record.get("error") or {}
        where = f"{error['node']}: " if error.get("node") else ""
        table.add_row(str(record["item"]), str(record["params"]), where + str(error.get("message", "")))
    err.print(table)
