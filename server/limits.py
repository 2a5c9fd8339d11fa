"""What a submitted graph may ask of this server, refused before it is queued when it can be.

The limits themselves hold while a run runs: the engine checks every value that reaches
a node, however it got there (a link, a param, a retry's next try), against the limits
nodes declare on their inputs (`engine.limits.Limit`), and the sizes of images they
return. This module only answers early what is visibly over a limit: the literal and param
values of inputs whose schema declares a limit (`x-loom-limit`), so a client gets a 422
listing every problem rather than a failed run. It also checks that every file-name input
(`x-loom-path` in its schema) stays inside the folder it names. Nothing is decided by an
input's name.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from engine.errors import Problem
from engine.limits import Limits, number, over_node_limits
from engine.paths import UnsafePath, contained

from .config import GraphLimits


@dataclass(frozen=True)
class InputRules:
    """What a node type's schema says about its inputs: limit kinds, file folders, model kinds."""

    limits: dict[str, tuple[str, ...]]   # input -> limit kinds
    paths: dict[str, str]                # input -> "input" | "output"
    models: dict[str, str]               # input -> model kind ("checkpoints", "loras", ...)


def input_rules_of(catalogue: list[dict]) -> dict[str, InputRules]:
    """{node type: InputRules} from node schemas (`x-loom-limit`, `x-loom-path`, `x-loom-model`)."""
    found: dict[str, InputRules] = {}
    for entry in catalogue:
        props = entry.get("inputs", {}).get("properties", {})
        limits = {name: tuple(s["x-loom-limit"]) for name, s in props.items()
                  if isinstance(s, dict) and s.get("x-loom-limit")}
        paths = {name: s["x-loom-path"] for name, s in props.items()
                 if isinstance(s, dict) and s.get("x-loom-path") in ("input", "output")}
        models = {name: s["x-loom-model"] for name, s in props.items()
                  if isinstance(s, dict) and isinstance(s.get("x-loom-model"), str)}
        if limits or paths or models:
            found[entry["type"]] = InputRules(limits, paths, models)
    return found


def is_link(value: Any, node_ids: Iterable[str]) -> bool:
    return (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
            and value[0] in node_ids)


def effective_literals(graph: dict, params: dict) -> dict[str, dict[str, Any]]:
    """{node_id: {input: literal}} with params applied; links left out."""
    nodes = graph.get("nodes") if isinstance(graph.get("nodes"), dict) else {}
    literals: dict[str, dict[str, Any]] = {}
    for node_id, body in nodes.items():
        inputs = body.get("inputs") if isinstance(body, dict) else None
        literals[node_id] = {k: v for k, v in (inputs or {}).items()
                             if isinstance(inputs, dict) and not is_link(v, nodes)}
    declared = graph.get("params") if isinstance(graph.get("params"), dict) else {}
    for name, value in (params or {}).items():
        target = declared.get(name)
        if isinstance(target, dict) and target.get("node") in literals:
            literals[target["node"]][str(target.get("input"))] = value
    return literals


def too_many_nodes(graph: dict, limits: GraphLimits) -> Problem | None:
    """Checked first and alone: a graph this large is not worth validating."""
    nodes = graph.get("nodes")
    if isinstance(nodes, dict) and len(nodes) > limits.max_nodes:
        return Problem(f"the graph has {len(nodes)} nodes; this server runs at most "
                       f"{limits.max_nodes}", hint="split the work or raise --max-nodes")
    return None


def check_graph(graph: dict, params: dict, limits: Limits, rules: dict[str, InputRules], *,
                input_dir: Path, output_dir: Path, models_dir: Path | None = None) -> list[Problem]:
    """Every literal over `limits` and every file or model name escaping its folder; [] when
    fine. Model names are checked against `models_dir` (the first models folder)."""
    problems: list[Problem] = []
    nodes = graph.get("nodes") if isinstance(graph.get("nodes"), dict) else {}
    for node_id, literals in effective_literals(graph, params).items():
        node_type = nodes[node_id].get("type") if isinstance(nodes[node_id], dict) else None
        rule = rules.get(node_type) if isinstance(node_type, str) else None
        if rule is None:
            continue
        for exceeded in over_node_limits(rule.limits, literals, limits, "this server's limit"):
            problems.append(Problem(exceeded.message, node=node_id, input=exceeded.input,
                                    hint=f"use at most {number(exceeded.limit)}"))
        for name, kind in rule.paths.items():
            value = literals.get(name)
            if not isinstance(value, str):
                continue
            try:
                contained(output_dir if kind == "output" else input_dir, value)
            except UnsafePath as exc:
                problems.append(Problem(f"file name refused: {exc}", node=node_id, input=name,
                                        hint=f"use a plain relative name inside the {kind} folder"))
        for name, kind in rule.models.items():
            value = literals.get(name)
            if not isinstance(value, str) or models_dir is None:
                continue
            try:
                contained(models_dir / kind, value)
            except UnsafePath as exc:
                problems.append(Problem(f"model name refused: {exc}", node=node_id, input=name,
                                        hint=f"name a model inside models/{kind}"))
    return problems
