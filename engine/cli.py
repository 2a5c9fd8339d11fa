"""`loom`: run, validate, explain, watch and inspect graphs from the shell.

Exit codes: 0 success, 1 a node failed, 2 the graph or the command is invalid,
130 cancelled (Ctrl-C).

Start-up is kept short: this module imports the standard library and rich only, and each
command imports what it uses. The node catalogue loads without torch, so `loom nodes`,
`validate`, `explain` and `params` never wait for it; a run imports it when a node needs it.
Defaults for the folder and cache flags come from `loom.toml` (see `engine.config`).
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_CANCELLED = 0, 1, 2, 130
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

SET_HELP = ("set a param the graph declares (repeatable; `loom params GRAPH` lists them). "
            "Values are read as JSON when they parse, as text otherwise: --set seed=7, "
            "--set prompt=\"a red circle on a blue background\", --set size=[64,64]; "
            "a text input takes what you typed even when it reads as JSON (--set prompt=123)")


def default_cache_dir() -> Path:
    if os.environ.get("LOOM_CACHE_DIR"):
        return Path(os.environ["LOOM_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "loom"


def _parse_assignments(items: list[str], flag: str) -> dict[str, Any]:
    """`name=value` pairs; a value that parses as JSON is taken as JSON, else as text."""
    from .errors import GraphError, Problem

    values: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        if not sep or not name:
            raise GraphError([Problem(f"{flag} expects name=value, got {item!r}",
                                      hint="e.g. --set seed=7 or --set prompt=\"a red square\"")])
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
        except RecursionError:
            raise GraphError([Problem(f"{flag} {name}: the value is nested too deeply")]) from None
    return values


def _typed_text(items: list[str]) -> dict[str, str]:
    """What was typed after `name=` in each assignment (for inputs that take text)."""
    return {name: raw for name, _, raw in (item.partition("=") for item in items)}


@functools.lru_cache(maxsize=1)
def _registry():
    """The installed node types, found once per process: scanning the entry points of every
    installed distribution costs a tenth of a second each time."""
    from .registry import Registry

    return Registry.default()


def load_graph(path: str):
    """The graph in a file: Loom JSON, or any format an installed reader recognises (a PNG that
    carries its graph, a ComfyUI workflow, ...)."""
    from .documents import load_document

    return load_document(path, _registry())


def _config(args):
    """loom.toml, read once per command."""
    if getattr(args, "_config", None) is None:
        from .config import load_config

        args._config = load_config()
    return args._config


def _models_dirs(args) -> list[Path]:
    """`--models-dir` folders first, then loom.toml's, then the default (the project's
    models/); a folder given on the command line or in loom.toml must exist."""
    from .errors import LoomError
    from .settings import default_models_dirs

    config = _config(args)
    given = [(Path(d).expanduser(), "--models-dir") for d in (getattr(args, "models_dir", None) or [])]
    given += [(d, f"models.dirs in {', '.join(map(str, config.files))}") for d in config.models.dirs]
    for folder, origin in given:
        if not folder.is_dir():
            raise LoomError(f"models folder {folder} does not exist (from {origin})")
    dirs = [folder for folder, _ in given]
    return dirs + [d for d in default_models_dirs() if d not in dirs]


def _settings(args):
    from .settings import Settings

    config = _config(args)
    extra = getattr(args, "extra_model_paths", None) or config.models.extra_paths
    if extra is not None and not Path(extra).is_file():
        from .errors import LoomError

        raise LoomError(f"extra model paths file {extra} does not exist")
    return Settings(
        device=args.device or config.run.device or "cpu",
        dtype=args.dtype or config.run.dtype or "float32",
        allow_pickle=args.allow_pickle,
        output_dir=Path(args.out or config.run.out or args.default_out),
        input_dir=Path(args.input_dir or config.run.input_dir or args.default_inputs),
        models_dirs=_models_dirs(args),
        extra_model_paths=Path(extra) if extra else None,
        digest_memo_dir=_cache_dir(args) / "digests",
        models_memory_gb=getattr(args, "models_memory_gb", None),
        options=_parse_assignments(args.option, "--option"))


def _cache_dir(args) -> Path:
    if getattr(args, "cache_dir", None):
        return Path(args.cache_dir)
    return _config(args).cache.dir or default_cache_dir()


def _cache_budget(args, name: str, default: float) -> float:
    given = getattr(args, f"cache_{name}_gb", None)
    configured = getattr(_config(args).cache, f"{name}_gb")
    return given if given is not None else configured if configured is not None else default


def _executor(args, use_disk: bool = True):
    from .cache import Cache, MemoryCache
    from .disk_cache import DiskCache
    from .executor import Executor
    from .explain import RunHistory

    cache_dir = _cache_dir(args)
    disk = DiskCache(cache_dir / "results", budget_bytes=int(_cache_budget(args, "disk", 8.0) * 2**30)) \
        if use_disk else None
    return Executor(registry=_registry(), settings=_settings(args),
                    cache=Cache(MemoryCache(int(_cache_budget(args, "memory", 4.0) * 2**30)), disk),
                    history=RunHistory(cache_dir / "history") if use_disk else None)


def _preflight(args, graph, registry, settings):
    """The graph with its `--set` params applied, once every check before running passed."""
    from .preflight import preflight

    return preflight(graph, _parse_assignments(args.set, "--set"), registry, settings,
                     typed=_typed_text(args.set))


def _print_problems(error) -> None:
    err.print(f"[red]invalid graph[/red]: {len(error.problems)} problem(s)")
    for problem in error.problems:
        err.print(f"  • {problem}", markup=False, highlight=False)


# -- commands -------------------------------------------------------------------------------

def cmd_run(args) -> int:
    from .display import RunDisplay, json_value, print_models, print_outputs
    from .errors import Cancelled, NodeError

    executor = _executor(args, use_disk=not args.no_cache)
    checked = _preflight(args, load_graph(args.graph), executor.registry, executor.settings)
    listener = None if args.json or args.quiet else RunDisplay(err)
    try:
        if listener is not None:
            with listener:
                result = executor.run(checked.graph, listener=listener, use_cache=not args.no_cache,
                                      check=False)
        else:
            result = executor.run(checked.graph, use_cache=not args.no_cache, check=False)
    except KeyboardInterrupt:
        err.print("[yellow]cancelled[/yellow]: finished nodes stay cached")
        return EXIT_CANCELLED
    if args.json:
        report = result.to_dict()
        report["outputs"] = {n: {k: json_value(v) for k, v in o.items()} for n, o in result.outputs.items()}
        report["models"] = [m.to_dict() for m in executor.models.loaded()]
        out.print_json(json.dumps(report))
    else:
        print_outputs(result, out, err)
        if args.models:
            print_models(executor.models.loaded(), err)
    if isinstance(result.error, NodeError):
        err.print(f"failed: {result.error}", style="red", markup=False, highlight=False)
        if args.traceback:
            err.print(result.error.traceback, markup=False, highlight=False)
        return EXIT_FAILED
    if isinstance(result.error, Cancelled):
        return EXIT_CANCELLED
    return EXIT_OK


def cmd_validate(args) -> int:
    checked = _preflight(args, load_graph(args.graph), _registry(), _settings(args))
    out.print(f"ok: {len(checked.checked.order)} nodes, outputs: {', '.join(checked.checked.outputs)}")
    return EXIT_OK


def cmd_explain(args) -> int:
    from rich.table import Table

    executor = _executor(args)
    checked = _preflight(args, load_graph(args.graph), executor.registry, executor.settings)
    explanations = executor.explain(checked.graph)
    if args.json:
        out.print_json(json.dumps({n: vars(e) for n, e in explanations.items()}))
        return EXIT_OK
    table = Table("node", "type", "next run", "why")
    colours = {"cached": "cyan", "will run": "green", "not needed": "dim"}
    for e in explanations.values():
        table.add_row(e.node, e.type, f"[{colours[e.status]}]{e.status}[/]", e.reason)
    out.print(table)
    return EXIT_OK


def cmd_params(args) -> int:
    from .describe import graph_params, param_lines

    rows = graph_params(load_graph(args.graph), _registry())
    if args.json:
        out.print_json(json.dumps(rows))
        return EXIT_OK
    if not rows:
        out.print("this graph declares no params")
        return EXIT_OK
    sys.stdout.write("".join(line + "\n" for line in param_lines(rows)))
    return EXIT_OK


def cmd_nodes(args) -> int:
    from .describe import node_details, node_lines
    from .errors import LoomError

    registry = _registry()
    if args.type:
        spec = registry.get(args.type)
        if spec is None:
            close = registry.suggest(args.type)
            raise LoomError(f"unknown node type '{args.type}'"
                            + (f" (did you mean {', '.join(close)}?)" if close else ""))
        if args.json:
            out.print_json(json.dumps(spec.json_schema()))
        else:
            sys.stdout.write(node_details(spec) + "\n")
        return EXIT_OK
    if args.json:
        out.print_json(json.dumps(registry.catalogue()))
        return EXIT_OK
    width = os.get_terminal_size(sys.stdout.fileno()).columns if sys.stdout.isatty() else None
    width = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else width
    sys.stdout.write("".join(line + "\n" for line in node_lines(registry, width)))
    return EXIT_OK


def cmd_watch(args) -> int:
    from .watch import watch

    executor = _executor(args)
    return watch(args.graph, lambda: load_graph(args.graph),
                 lambda graph: _preflight(args, graph, executor.registry, executor.settings),
                 executor, out, err,
                 debounce=args.debounce)


def cmd_convert(args) -> int:
    from .documents import LOOM_FORMAT, load_document, write_document

    registry = _registry()
    document = write_document(load_document(args.graph, registry), args.to or LOOM_FORMAT, registry)
    text = json.dumps(document, indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_cache(args) -> int:
    from .disk_cache import DiskCache
    from .explain import RunHistory

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
    from server.__main__ import server_options
    from server.main import serve

    from .config import user_data_dir
    from .ray_backend import backend_arguments

    config = _config(args).server
    data_dir = Path(args.data_dir) if args.data_dir else config.data_dir or user_data_dir()
    args.out = args.out or str(data_dir / "outputs")
    args.input_dir = args.input_dir or str(data_dir / "inputs")
    settings = _settings(args)
    serve(host=args.host or config.host or "127.0.0.1", port=args.port or config.port or 8188,
          data_dir=data_dir, models_dirs=settings.models_dirs, token=args.token,
          settings=settings, keep_runs=args.keep_runs, keep_days=args.keep_days,
          **backend_arguments(args), **server_options(args))
    return EXIT_OK


# -- arguments ------------------------------------------------------------------------------

def _add_graph_argument(p: argparse.ArgumentParser, sets: bool = True) -> None:
    p.add_argument("graph", help="a graph file: Loom .json, a PNG Loom saved, or a format a "
                                 "node pack reads (e.g. a ComfyUI workflow)")
    if sets:
        p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", help=SET_HELP)


def _add_run_options(p: argparse.ArgumentParser, out: str | None = "output",
                     inputs: str | None = "input") -> None:
    p.add_argument("--out", help=f"folder saved images go to (default: loom.toml's run.out, "
                                 f"else {out or 'DATA_DIR/outputs'})")
    p.add_argument("--input-dir", help="folder that load_image and other input files are read from "
                                       f"(default: loom.toml's run.input_dir, else {inputs or 'DATA_DIR/inputs'})")
    p.add_argument("--models-dir", action="append", metavar="DIR",
                   help="a models folder in ComfyUI's layout, searched before the configured ones "
                        "and the project's models/ (repeatable; it must exist)")
    p.add_argument("--extra-model-paths", metavar="FILE",
                   help="a YAML or JSON file mapping model kinds to more folders "
                        "(ComfyUI's extra_model_paths.yaml works)")
    p.add_argument("--device", help="where models run: cpu (default), cuda, cuda:1, mps; checked "
                                    "before anything runs")
    p.add_argument("--dtype", choices=["float32", "float16", "bfloat16"],
                   help="precision of the models' weights and activations (default float32)")
    p.add_argument("--option", action="append", default=[], metavar="NAME=VALUE",
                   help="a memory or speed setting of the model nodes: vae_tiling=true, "
                        "vae_slicing=true, attention_slicing=true, cpu_offload=true (repeatable)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also load pickle model files (.ckpt, .pt, .bin), read with weights_only")
    p.add_argument("--models-memory-gb", type=float, metavar="GB",
                   help="memory for loaded models on each device, in GiB; past it the least recently "
                        "used are unloaded (default: half the RAM, 80%% of a GPU's memory)")
    p.set_defaults(default_out=out, default_inputs=inputs)


def _add_cache_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cache-dir", help="result cache folder (default: loom.toml's cache.dir, "
                                       "$LOOM_CACHE_DIR or ~/.cache/loom)")
    p.add_argument("--cache-memory-gb", type=float,
                   help="memory for cached results, in GiB (default 4)")
    p.add_argument("--cache-disk-gb", type=float,
                   help="disk space for cached results, in GiB (default 8); least recently used go first")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"loom {version('loom')}"
    except PackageNotFoundError:
        return "loom (not installed)"


class _VersionAction(argparse.Action):
    """`--version`, reading the installed version only when asked."""

    def __call__(self, parser, namespace, values, option_string=None):
        sys.stdout.write(_version() + "\n")
        parser.exit()


def _command_in(argv: list[str] | None) -> str | None:
    """The subcommand an argument list names ("" for none, as in `loom --help`); None when
    there is no argument list (build every command in full)."""
    if argv is None:
        return None
    return next((a for a in argv if not a.startswith("-")), "")


def _needed(command: str | None, name: str) -> bool:
    return command is None or command == name


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser; given `argv`, the commands other modules define are imported
    only when `argv` uses them (they pull in the executor), the rest get a stub with their
    one-line help, so `loom --version` and `loom nodes` start quickly."""
    command = _command_in(argv)

    parser = argparse.ArgumentParser(
        prog="loom", description="Typed, incremental diffusion graphs: run, check and inspect "
        "JSON workflows. `loom COMMAND --help` describes each command.",
        epilog="Defaults for the folder, cache and server flags can be set in loom.toml "
               "(./loom.toml or ~/.config/loom/loom.toml).")
    parser.add_argument("--version", action=_VersionAction, nargs=0,
                        help="print Loom's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a graph (.json, or a PNG that carries one)",
                         description="Run a graph; nodes whose inputs did not change since an "
                         "earlier run come from the cache.")
    _add_graph_argument(run)
    run.add_argument("--no-cache", action="store_true", help="run every node, read and write no cache")
    run.add_argument("--json", action="store_true", help="print the result as one JSON object on stdout")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.add_argument("--traceback", action="store_true", help="print a failing node's Python traceback")
    run.add_argument("--models", action="store_true",
                     help="after the run, list the models in memory: kind, name, device, dtype or "
                          "quantization, size (--json always includes them)")
    _add_run_options(run)
    _add_cache_options(run)
    run.set_defaults(func=cmd_run)

    if _needed(command, "batch"):
        from . import cli_batch

        cli_batch.add_parser(sub, lambda p: (_add_run_options(p, out="output/batch"), _add_cache_options(p)),
                             _executor, load_graph, _parse_assignments, err)
    else:
        sub.add_parser("batch", help="run a graph for every parameter set, resumably")

    watch = sub.add_parser("watch", help="rerun a graph each time it, or a file it reads, is saved",
                           description="Keep one process warm (models loaded, results in memory) "
                           "and rerun GRAPH whenever it or a file it reads changes; prints what ran "
                           "and why, and the new outputs. Ctrl-C stops.")
    _add_graph_argument(watch)
    watch.add_argument("--debounce", type=float, default=0.2, metavar="SECONDS",
                       help="wait this long after a change for further changes (default 0.2)")
    _add_run_options(watch)
    _add_cache_options(watch)
    watch.set_defaults(func=cmd_watch)

    validate = sub.add_parser("validate", help="check a graph without running it",
                              description="Report every problem at once (graph, params, missing "
                              "models and input files, device), each with node and input; exit 2 "
                              "when there is one.")
    _add_graph_argument(validate)
    _add_run_options(validate)
    _add_cache_options(validate)
    validate.set_defaults(func=cmd_validate)

    explain = sub.add_parser("explain", help="say which nodes the next run would run, and why")
    _add_graph_argument(explain)
    explain.add_argument("--json", action="store_true", help="one JSON object per node on stdout")
    _add_run_options(explain)
    _add_cache_options(explain)
    explain.set_defaults(func=cmd_explain)

    params = sub.add_parser("params", help="list the params a graph declares (what --set can change)")
    _add_graph_argument(params, sets=False)
    params.add_argument("--json", action="store_true", help="the list as JSON")
    params.set_defaults(func=cmd_params)

    convert = sub.add_parser("convert", help="write a graph document in another format (ComfyUI workflow -> Loom, ...)")
    convert.add_argument("graph", help="the graph file to read")
    convert.add_argument("--to", help="target format: loom (default), comfy-api, ...")
    convert.add_argument("-o", "--output", help="file to write (default: stdout)")
    convert.set_defaults(func=cmd_convert)

    if _needed(command, "models"):
        from . import cli_models

        cli_models.add_parser(sub, lambda p: (_add_run_options(p), _add_cache_options(p)),
                              _settings, out, err)
    else:
        sub.add_parser("models", help="list, verify, pull or remove models")

    nodes = sub.add_parser("nodes", help="list node types, or show one in full",
                           description="One line per node type (type, category, summary); "
                           "`loom nodes TYPE` shows its inputs, outputs and description.")
    nodes.add_argument("type", nargs="?", help="a node type to show in full")
    nodes.add_argument("--json", action="store_true", help="JSON Schemas instead of text")
    nodes.set_defaults(func=cmd_nodes)

    cache = sub.add_parser("cache", help="inspect or clear the result cache")
    cache.add_argument("action", choices=["info", "clear"], help="info: size and folder; clear: delete it")
    cache.add_argument("--cache-dir", help="the cache folder (default: as for run)")
    cache.set_defaults(func=cmd_cache)

    serve = sub.add_parser("serve", help="start the HTTP graph server")
    serve.add_argument("--host", help="address to bind (default 127.0.0.1; any other needs --token)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8188)")
    serve.add_argument("--data-dir", help="run queue, inputs and outputs (default: loom.toml's "
                                          "server.data_dir, else the user's data folder, "
                                          "e.g. ~/.local/share/loom)")
    serve.add_argument("--token", default=os.environ.get("LOOM_TOKEN"),
                       help="access token clients must send (default $LOOM_TOKEN; required to bind "
                            "anything but loopback)")
    serve.add_argument("--keep-runs", type=int, metavar="N",
                       help="keep only the newest N finished runs and their output files (default: all)")
    serve.add_argument("--keep-days", type=float, metavar="D",
                       help="delete finished runs and their output files after D days (default: never)")
    _add_run_options(serve, out=None, inputs=None)
    if _needed(command, "serve"):
        from server.__main__ import add_arguments as add_server_arguments

        from .ray_backend import add_backend_arguments

        add_backend_arguments(serve)
        add_server_arguments(serve)    # `python -m server` is this same command
    serve.set_defaults(func=cmd_serve)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser(sys.argv[1:] if argv is None else argv).parse_args(argv)
        return _dispatch(args)
    except KeyboardInterrupt:
        err.print("[yellow]cancelled[/yellow]")
        return EXIT_CANCELLED
    except BrokenPipeError:   # `loom nodes | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _dispatch(args) -> int:
    from .errors import GraphError, LoomError

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
