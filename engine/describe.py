"""Plain-text views of the node catalogue and of a graph's params (`loom nodes`, `loom params`).

Everything is read from the nodes' JSON Schemas, so the text says what validation enforces.
"""
from __future__ import annotations

import json
import textwrap
from typing import Any

from .graph import Graph, Link
from .node import NodeSpec
from .registry import Registry
from .types import type_name

MIN_SUMMARY = 12   # columns a summary keeps, however narrow the terminal


def summary(spec: NodeSpec) -> str:
    """The first sentence (or line) of a node's description."""
    first = spec.description.strip().split("\n\n")[0].replace("\n", " ")
    end = first.find(". ")
    return first[:end + 1] if end >= 0 else first


def node_lines(registry: Registry, width: int | None = None) -> list[str]:
    """One line per node type: type, category, summary. With `width` only the summary is
    shortened to fit; a type name is never cut."""
    specs = list(registry)
    if not specs:
        return []
    type_w = max(len(s.type) for s in specs)
    cat_w = max(len(s.category) for s in specs)
    lines = []
    for spec in specs:
        head = f"{spec.type:<{type_w}}  {spec.category:<{cat_w}}  "
        text = summary(spec)
        if width is not None:
            room = max(width - len(head), MIN_SUMMARY)
            if len(text) > room:
                text = text[:room - 1].rstrip() + "…"
        lines.append((head + text).rstrip())
    return lines


def allowed(schema: dict) -> str:
    """What values an input accepts beyond its type: choices, bounds, lengths."""
    if "anyOf" in schema:
        parts = [allowed(s) for s in schema["anyOf"] if s.get("type") != "null"]
        return "; ".join(p for p in parts if p)
    if "enum" in schema:
        return "one of " + ", ".join(json.dumps(v) for v in schema["enum"])
    if "const" in schema:
        return f"only {json.dumps(schema['const'])}"
    bounds = []
    for key, sign in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="),
                      ("exclusiveMaximum", "<")):
        if key in schema:
            bounds.append(f"{sign} {_number(schema[key])}")
    if schema.get("minLength") == 1:
        bounds.append("not empty")
    for key, what in (("minLength", "at least {} characters"), ("maxLength", "at most {} characters"),
                      ("minItems", "at least {} items"), ("maxItems", "at most {} items")):
        if key in schema and not (key == "minLength" and schema[key] == 1):
            bounds.append(what.format(schema[key]))
    if "x-loom-model" in schema:
        bounds.append(f"a model in models/{schema['x-loom-model']}")
    if "x-loom-path" in schema:
        bounds.append(f"a file in the {schema['x-loom-path']} folder")
    return ", ".join(bounds)


def _number(value: Any) -> str:
    if isinstance(value, int) and value >= 2**32 and (value & (value - 1)) == 0:
        return f"2**{value.bit_length() - 1}"
    return json.dumps(value)


def node_details(spec: NodeSpec, width: int = 80) -> str:
    """One node in full: description, each input (type, default, allowed values, description)
    and each output with its type."""
    schema = spec.json_schema()
    flags = [spec.category, f"version {spec.version}"]
    if spec.output_node:
        flags.append("output node")
    if not spec.cacheable:
        flags.append("never cached")
    lines = [f"{spec.type} ({', '.join(flags)})", ""]
    for paragraph in (spec.description or "(no description)").strip().split("\n\n"):
        lines += textwrap.wrap(" ".join(paragraph.split()), width) + [""]
    lines.append("inputs:" if spec.inputs else "inputs: none")
    props = schema["inputs"]["properties"]
    for name, item in spec.inputs.items():
        prop = props[name]
        facts = [type_name(item.annotation)]
        if item.required:
            facts.append("required")
        elif item.literal:
            facts.append(f"default {json.dumps(prop.get('default', item.default), default=str)}")
        else:
            facts.append("optional")
        if not item.literal:
            facts.append("link only")
        if item.lazy:
            facts.append("evaluated on demand")
        limits = allowed(prop) if item.literal and "enum" not in prop else ""
        if limits:
            facts.append(limits)
        lines += textwrap.wrap(f"{name}: " + "; ".join(facts), width, initial_indent="  ",
                               subsequent_indent="      ")
        if item.description:
            lines += textwrap.wrap(item.description, width, initial_indent="      ",
                                   subsequent_indent="      ")
    lines.append("outputs:")
    lines += [f"  {name}: {type_name(tp)}" for name, tp in spec.outputs.items()]
    return "\n".join(lines)


def graph_params(graph: Graph, registry: Registry) -> list[dict]:
    """Each param a graph declares: the input it sets, that input's type, the value the graph
    gives it now and what values it allows."""
    rows = []
    for name, param in graph.params.items():
        entry = graph.nodes.get(param.node)
        spec = registry.get(entry.type) if entry else None
        item = spec.inputs.get(param.input) if spec else None
        value = entry.inputs.get(param.input) if entry else None
        if isinstance(value, Link):
            value = None
        elif value is None and item is not None and not item.required:
            value = item.default
        prop = spec.json_schema()["inputs"]["properties"].get(param.input, {}) if item else {}
        rows.append({"name": name, "target": f"{param.node}.{param.input}",
                     "type": type_name(item.annotation) if item else "unknown",
                     "value": _jsonable(value), "allowed": "" if "enum" in prop else allowed(prop)})
    return rows


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except TypeError:
        return str(value)


def param_lines(rows: list[dict], width: int = 80) -> list[str]:
    """`loom params` as text: per param, what it sets and its value, then its type and range."""
    name_w = max(len(row["name"]) for row in rows)
    lines = []
    for row in rows:
        lines.append(f"{row['name']:<{name_w}}  {row['target']} = {json.dumps(row['value'])}")
        facts = row["type"] + (f"; {row['allowed']}" if row["allowed"] else "")
        indent = " " * (name_w + 4)
        lines += textwrap.wrap(facts, width, initial_indent=indent, subsequent_indent=indent)
    return lines
