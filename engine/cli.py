"""`loom`: run, validate, explain and inspect graphs from the shell.

Exit codes: 0 success, 1 a node failed, 2 the graph or the command is invalid,
130 cancelled.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from . import cli_batch
from .cache import Cache, MemoryCache
from .disk_cache import DiskCache
from .documents import LOOM_FORMAT, load_document, write_document
from .errors import Cancelled, GraphError, LoomError, NodeError, Problem
from .executor import Executor
from .explain import RunHistory
from .graph import Graph
from .registry import Registry
from .settings import Settings

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def default_cache_dir() -> Path:
    if os.environ.get("LOOM_CACHE_DIR"):
        return Path(os.environ["LOOM_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "loom"


def _parse_assignments(items: list[str], flag: str) -> dict[str, Any]:
    """`name=value` pairs; a value that parses as JSON is taken as JSON, else as text."""
    values: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise GraphError([Problem(f"{flag} expects name=value, got {item!r}")])
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


def load_graph(path: str) -> Graph:
    """The graph in a file: Loom JSON, or any format an installed reader recognises (a PNG that
    carries its graph, a ComfyUI workflow, ...)."""
    return load_document(path, Registry.default())


def _settings(args) -> Settings:
    settings = Settings(
        device=args.device, dtype=args.dtype, allow_pickle=args.allow_pickle,
        output_dir=Path(args.out), input_dir=Path(args.input_dir),
        models_dirs=[Path(d) for d in (args.models_dir or ["models"])],
        extra_model_paths=Path(args.extra_model_paths) if args.extra_model_paths else None,
        digest_memo_dir=_cache_dir(args) / "digests",
        options=_parse_assignments(args.option, "--option"))
    return settings


def _cache_dir(args) -> Path:
    return Path(args.cache_dir) if getattr(args, "cache_dir", None) else default_cache_dir()


def _executor(args, use_disk: bool = True) -> Executor:
    cache_dir = _cache_dir(args)
    disk = DiskCache(cache_dir / "results", budget_bytes=int(args.cache_disk_gb * 2**30)) if use_disk else None
    return Executor(registry=Registry.default(), settings=_settings(args),
                    cache=Cache(MemoryCache(int(args.cache_memory_gb * 2**30)), disk),
                    history=RunHistory(cache_dir / "history") if use_disk else None)


def _print_problems(error: GraphError) -> None:
    err.print(f"[red]invalid graph[/red]: {len(error.problems)} problem(s)")
    for problem in error.problems:
        err.print(f"  • {problem}", markup=False, highlight=False)


def cmd_run(args) -> int:
    from .display import RunDisplay, summarise

    graph = load_graph(args.graph)
    executor = _executor(args, use_disk=not args.no_cache)
    params = _parse_assignments(args.set, "--set")
    listener = None if args.json or args.quiet else RunDisplay(err)
    try:
        if listener is not None:
            with listener:
                result = executor.run(graph, params, listener=listener, use_cache=not args.no_cache,
                                      check=False)
        else:
            result = executor.run(graph, params, use_cache=not args.no_cache, check=False)
    except KeyboardInterrupt:
        err.print("[yellow]cancelled[/yellow]: finished nodes stay cached")
        return EXIT_CANCELLED
    if args.json:
        report = result.to_dict()
        report["outputs"] = {n: {k: summarise(v) for k, v in o.items()} for n, o in result.outputs.items()}
        out.print_json(json.dumps(report))
    else:
        for node_id, outputs in result.outputs.items():
            for name, value in outputs.items():
                out.print(f"[bold]{node_id}[/bold].{name} = {summarise(value)}", highlight=False)
        err.print(f"{len(result.ran)} ran, {len(result.cached)} cached, "
                  f"{sum(result.timings.values()):.2f}s in nodes")
    if isinstance(result.error, NodeError):
        err.print(f"failed: {result.error}", style="red", markup=False, highlight=False)
        if args.traceback:
            err.print(result.error.traceback, markup=False, highlight=False)
        return EXIT_FAILED
    if isinstance(result.error, Cancelled):
        return EXIT_CANCELLED
    return EXIT_OK


def cmd_validate(args) -> int:
    graph = load_graph(args.graph)
    checked = Executor(registry=Registry.default()).check(graph, _parse_assignments(args.set, "--set"))
    out.print(f"ok: {len(checked.order)} nodes, outputs: {', '.join(checked.outputs)}")
    return EXIT_OK


def cmd_explain(args) -> int:
    graph = load_graph(args.graph)
    explanations = _executor(args).explain(graph, _parse_assignments(args.set, "--set"))
    if args.json:
        out.print_json(json.dumps({n: vars(e) for n, e in explanations.items()}))
        return EXIT_OK
    table = Table("node", "type", "next run", "why")
    colours = {"cached": "cyan", "will run": "green", "not needed": "dim"}
    for e in explanations.values():
        table.add_row(e.node, e.type, f"[{colours[e.status]}]{e.status}[/]", e.reason)
    out.print(table)
    return EXIT_OK


def cmd_convert(args) -> int:
    registry = Registry.default()
    document = write_document(load_document(args.graph, registry), args.to, registry)
    text = json.dumps(document, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_nodes(args) -> int:
    registry = Registry.default()
    if args.json:
        out.print_json(json.dumps(registry.catalogue()))
        return EXIT_OK
    table = Table("type", "category", "inputs", "outputs", "description")
    for spec in registry:
        inputs = ", ".join(n + ("" if i.required else "?") for n, i in spec.inputs.items())
        summary = spec.description.splitlines()[0] if spec.description else ""
        table.add_row(spec.type, spec.category, inputs, ", ".join(spec.outputs), summary)
    out.print(table)
    return EXIT_OK


def cmd_cache(args) -> int:
    cache_dir = _cache_dir(args)
    disk = DiskCache(cache_dir / "results")
    if args.action == "clear":
        disk.clear()
        RunHistory(cache_dir / "history").clear()
        out.print(f"cleared {cache_dir}")
    else:
        info = disk.info()
        out.print(f"{info['folder']}: {info['entries']} entries, {info['bytes'] / 2**20:.1f} MiB")
    return EXIT_OK


def cmd_serve(args) -> int:
    from server.main import serve

    data_dir = Path(args.data_dir)
    args.out = args.out or str(data_dir / "outputs")
    args.input_dir = args.input_dir or str(data_dir / "inputs")
    serve(host=args.host, port=args.port, data_dir=data_dir,
          models_dirs=[Path(d) for d in (args.models_dir or ["models"])], token=args.token,
          settings=_settings(args), keep_runs=args.keep_runs, keep_days=args.keep_days)
    return EXIT_OK


def _add_run_options(p: argparse.ArgumentParser, out: str | None = "output",
                     inputs: str | None = "input") -> None:
    p.add_argument("--out", default=out, help=f"folder for saved images (default: {out or 'DATA_DIR/outputs'})")
    p.add_argument("--input-dir", default=inputs,
                   help=f"folder load-image nodes read from (default: {inputs or 'DATA_DIR/inputs'})")
    p.add_argument("--models-dir", action="append", help="models folder (repeatable; default ./models)")
    p.add_argument("--extra-model-paths", help="YAML/JSON file: model kind -> extra folders")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, mps")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--option", action="append", default=[],
                   help="node-family setting, e.g. vae_tiling=true, cpu_offload=true")
    p.add_argument("--allow-pickle", action="store_true",
                   help="allow pickle model files (loaded with weights_only=True)")


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="result cache folder (default $LOOM_CACHE_DIR or ~/.cache/loom)")
    p.add_argument("--cache-memory-gb", type=float, default=4.0)
    p.add_argument("--cache-disk-gb", type=float, default=8.0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="loom", description="Typed, incremental diffusion graphs.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a graph (.json, or a PNG that carries one)")
    run.add_argument("graph")
    run.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE")
    run.add_argument("--no-cache", action="store_true", help="run every node, read and write no cache")
    run.add_argument("--json", action="store_true", help="print the result as JSON")
    run.add_argument("--quiet", action="store_true", help="no progress display")
    run.add_argument("--traceback", action="store_true", help="print a failing node's traceback")
    _add_run_options(run)
    _add_cache_options(run)
    run.set_defaults(func=cmd_run)

    cli_batch.add_parser(sub, lambda p: (_add_run_options(p, out="output/batch"), _add_cache_options(p)),
                         _executor, load_graph, _parse_assignments, err)

    validate = sub.add_parser("validate", help="check a graph without running it")
    validate.add_argument("graph")
    validate.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE")
    validate.set_defaults(func=cmd_validate)

    explain = sub.add_parser("explain", help="say which nodes the next run would run, and why")
    explain.add_argument("graph")
    explain.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE")
    explain.add_argument("--json", action="store_true")
    _add_run_options(explain)
    _add_cache_options(explain)
    explain.set_defaults(func=cmd_explain)

    convert = sub.add_parser("convert", help="write a graph document in another format (ComfyUI workflow -> Loom, ...)")
    convert.add_argument("graph")
    convert.add_argument("--to", default=LOOM_FORMAT, help="target format: loom (default), comfy-api, ...")
    convert.add_argument("-o", "--output", help="file to write (default: stdout)")
    convert.set_defaults(func=cmd_convert)

    nodes = sub.add_parser("nodes", help="list node types with their inputs and outputs")
    nodes.add_argument("--json", action="store_true", help="the catalogue with JSON Schemas")
    nodes.set_defaults(func=cmd_nodes)

    cache = sub.add_parser("cache", help="inspect or clear the result cache")
    cache.add_argument("action", choices=["info", "clear"])
    cache.add_argument("--cache-dir")
    cache.set_defaults(func=cmd_cache)

    serve = sub.add_parser("serve", help="start the HTTP graph server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8188)
    serve.add_argument("--data-dir", default="loom-data")
    serve.add_argument("--token", default=os.environ.get("LOOM_TOKEN"),
                       help="access token (required to bind anything but loopback)")
    serve.add_argument("--keep-runs", type=int, metavar="N",
                       help="keep only the newest N finished runs and their output files (default: all)")
    serve.add_argument("--keep-days", type=float, metavar="D",
                       help="delete finished runs and their output files after D days (default: never)")
    _add_run_options(serve, out=None, inputs=None)
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GraphError as exc:
        _print_problems(exc)
        return EXIT_INVALID
    except LoomError as exc:
        err.print(f"error: {exc}", style="red", markup=False, highlight=False)
        return EXIT_INVALID


if __name__ == "__main__":
    sys.exit(main())
