"""Everything that can be known wrong before a run starts, reported together.

`loom run`, `validate`, `explain` and the server's submit all go through `preflight`:
the graph's own problems (validation), params the graph does not declare, model names
that no models folder holds (with what the folders do hold), input files that do not
exist, and a device this machine does not have. Every problem names its node and
input; nothing is loaded and nothing runs.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, get_args

from .errors import GraphError, Problem
from .graph import Graph, Link
from .model_pull import pull_command
from .models import ModelNotFound, ModelPaths
from .paths import UnsafePath, contained
from .registry import Registry
from .settings import Settings
from .validate import CheckedGraph, validate

KNOWN_DEVICES = ("cpu", "cuda", "mps", "xpu")
QUOTING_HINT = ("--set values are read as JSON when they parse (7, true, [1,2], \"text\") and "
                "as text otherwise; quote a value in the shell to keep it whole")


@dataclass
class Checked:
    """A graph that passed every check, with its params applied."""

    graph: Graph
    params: dict[str, Any]
    checked: CheckedGraph


def preflight(graph: Graph, params: dict[str, Any] | None, registry: Registry,
              settings: Settings, *, typed: dict[str, str] | None = None,
              previous: CheckedGraph | None = None) -> Checked:
    """The checked graph, or GraphError listing every problem found (graph, params, models,
    input files, device). `typed` holds the text of params that were read from text as JSON
    (`--set prompt=123`): where the JSON value does not fit but the input takes text, the
    text as typed is used."""
    problems: list[Problem] = []
    params = dict(params or {})
    unknown = [name for name in params if name not in graph.params]
    known_names = ", ".join(sorted(graph.params)) or "none"
    problems += [Problem(f"unknown param '{name}'", hint=f"this graph's params: {known_names}",
                         file=graph.source) for name in unknown]
    typed = typed or {}
    params = {name: _as_declared(graph, registry, name, value, typed.get(name))
              for name, value in params.items() if name not in unknown}
    try:
        applied = graph.with_params(params)
    except GraphError as exc:
        raise GraphError(problems + exc.problems) from None
    checked = None
    try:
        checked = validate(applied, registry, previous)
    except GraphError as exc:
        problems += _with_quoting_hint(exc.problems, graph, params)
    problems += resource_problems(applied, registry, settings)
    device = device_problem(settings.device)
    if device is not None:
        problems.append(device)
    if problems:
        raise GraphError(problems)
    return Checked(applied, params, checked)


def _as_declared(graph: Graph, registry: Registry, name: str, value: Any, text: str | None) -> Any:
    """`value` as given, or the text it was typed as when only the text fits the input."""
    target = _param_input(graph, registry, name)
    if target is None or text is None or isinstance(value, str):
        return value
    try:
        target.check_value(value)
        return value
    except ValueError:
        pass
    try:
        target.check_value(text)
        return text
    except ValueError:
        return value


def _param_input(graph: Graph, registry: Registry, name: str):
    param = graph.params.get(name)
    entry = graph.nodes.get(param.node) if param else None
    spec = registry.get(entry.type) if entry else None
    return spec.inputs.get(param.input) if spec else None


def _with_quoting_hint(problems: list[Problem], graph: Graph, params: dict[str, Any]) -> list[Problem]:
    """A problem on an input a `--set` wrote says how values are read, unless it has a hint."""
    targets = {(graph.params[n].node, graph.params[n].input) for n in params}
    return [Problem(p.message, p.node, p.input, QUOTING_HINT, p.file)
            if (p.node, p.input) in targets and not p.hint else p for p in problems]


def resource_problems(graph: Graph, registry: Registry, settings: Settings) -> list[Problem]:
    """Model names no models folder holds and input files that do not exist, per node input.
    Inputs say what they name through their schema (`x-loom-model`, `x-loom-path`)."""
    paths = ModelPaths(settings.models_dirs, settings.extra_model_paths)
    problems = []
    for node_id, input_name, value, kind, folder in named_files(graph, registry):
        message = hint = None
        if kind is not None:
            try:
                paths.resolve(kind, value)
            except ModelNotFound as exc:
                message = str(exc)
                hint = pull_command(graph.nodes[node_id].meta, value, kind)
        elif folder == "input":
            message = _missing_input(settings, value)
        if message:
            problems.append(Problem(message, node=node_id, input=input_name, hint=hint,
                                    file=graph.source))
    return problems


def named_files(graph: Graph, registry: Registry) -> Iterator[tuple[str, str, str, str | None, str | None]]:
    """(node, input, name, model kind, folder) for each literal input that names a model
    (`x-loom-model` kind) or a file (`x-loom-path` folder) in its schema."""
    for node_id, entry in graph.nodes.items():
        spec = registry.get(entry.type)
        if spec is None:
            continue   # validation reports the unknown type
        for input_name, value in entry.inputs.items():
            target = spec.inputs.get(input_name)
            if target is None or isinstance(value, Link) or not isinstance(value, str) or not value:
                continue
            kind = schema_marker(target.annotation, "x-loom-model")
            folder = schema_marker(target.annotation, "x-loom-path")
            if kind is not None or folder is not None:
                yield node_id, input_name, value, kind, folder


def _missing_input(settings: Settings, name: str) -> str | None:
    try:
        path = contained(settings.input_dir, name)
    except UnsafePath as exc:
        return f"file name refused: {exc}"
    if not path.is_file():
        return f"no file {name!r} in the input folder ({Path(settings.input_dir).resolve()})"
    return None


def schema_marker(annotation: Any, key: str) -> Any:
    """The value of `key` in the JSON-schema extras of an input's declaration (through
    `Annotated` metadata and the members of a union), or None."""
    for meta in getattr(annotation, "__metadata__", ()):
        extra = getattr(meta, "json_schema_extra", None)
        if isinstance(extra, dict) and key in extra:
            return extra[key]
    for member in get_args(annotation):
        found = schema_marker(member, key)
        if found is not None:
            return found
    return None


def device_problem(device: str) -> Problem | None:
    """A device name this machine cannot run on, in one line (not the error a library raises
    after the models were loaded). Only a non-CPU device imports torch to ask."""
    kind, _, index = str(device).partition(":")
    if kind not in KNOWN_DEVICES or (index and not index.isdigit()):
        return Problem(f"unknown device {device!r}", hint="cpu, cuda, cuda:N, mps or xpu")
    if kind == "cpu":
        return None
    try:
        import torch
    except ImportError:
        return Problem(f"device {device!r} needs torch, which is not installed")
    available = {"cuda": lambda: torch.cuda.is_available() and torch.cuda.device_count(),
                 "mps": lambda: torch.backends.mps.is_available() and 1,
                 "xpu": lambda: hasattr(torch, "xpu") and torch.xpu.is_available()
                 and torch.xpu.device_count()}[kind]
    count = int(available() or 0)
    if count == 0:
        return Problem(f"device {device!r} is not available on this machine",
                       hint=f"this torch build sees no {kind.upper()} device; use --device cpu")
    if index and int(index) >= count:
        return Problem(f"device {device!r} does not exist", hint=f"{count} {kind} device(s): "
                       + ", ".join(f"{kind}:{i}" for i in range(count)))
    return None
