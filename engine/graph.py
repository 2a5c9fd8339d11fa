"""The graph document: one JSON format for files, the Python builder and the server API.

    {"loom": 1,
     "params": {"prompt": {"node": "pos", "input": "text"}},
     "nodes": {"pos": {"type": "encode_text", "inputs": {"text": "...", "clip": ["ckpt", "clip"]}}}}

An input is a link `[node_id, output_name]` or a literal. A literal that would read as
a link (a list of two strings) is written `{"$literal": [...]}`. Loading and saving
round-trip: `Graph.from_dict(d).to_dict() == d`.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import GraphError, Problem

FORMAT_VERSION = 1
LITERAL_ESCAPE = "$literal"
MAX_NESTING = 100   # lists/objects inside one value; deeper input is refused, never recursed into
MAX_INT_BITS = 4096  # integers past this (about 1200 digits) cannot be printed or keyed cheaply


def literal_problem(value: Any) -> str | None:
    """Why a literal cannot be taken (nested more than MAX_NESTING deep, or an integer too long
    to print), or None. Checked without recursion, so a hostile document cannot exhaust the
    stack here or later in messages, keys or size estimates."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, (list, tuple)):
            children = item
        else:
            if isinstance(item, int) and item.bit_length() > MAX_INT_BITS:
                return f"holds an integer of more than {MAX_INT_BITS} bits"
            continue
        if depth > MAX_NESTING:
            return f"is nested more than {MAX_NESTING} levels deep"
        stack.extend((child, depth + 1) for child in children)
    return None


@dataclass(frozen=True)
class Link:
    node: str
    output: str

    def to_json(self) -> list:
        return [self.node, self.output]


@dataclass
class NodeEntry:
    type: str
    inputs: dict[str, Any]            # name -> Link | literal
    version: int | None = None        # written only when the document carried one
    meta: dict | None = None          # free-form (titles, positions), preserved as is

    def links(self) -> dict[str, Link]:
        return {k: v for k, v in self.inputs.items() if isinstance(v, Link)}

    def literals(self) -> dict[str, Any]:
        return {k: v for k, v in self.inputs.items() if not isinstance(v, Link)}


@dataclass(frozen=True)
class Param:
    node: str
    input: str
    description: str | None = None


def _looks_like_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, str) for v in value))


@dataclass
class Graph:
    nodes: dict[str, NodeEntry] = field(default_factory=dict)
    params: dict[str, Param] = field(default_factory=dict)
    meta: dict | None = None
    name: str = "graph"               # identifies the graph for run history (explain)
    source: str | None = None         # file it came from, for error messages

    def named_by_shape(self) -> "Graph":
        """This graph named by its node ids and types (not its literal values), so the runs
        of one workflow share explain history and different workflows never do, where
        documents arrive without a name of their own (the server)."""
        shape = json.dumps(sorted((node_id, entry.type) for node_id, entry in self.nodes.items()))
        self.name = "graph-" + hashlib.blake2b(shape.encode(), digest_size=10).hexdigest()
        return self

    # -- loading -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: Any, *, name: str = "graph", source: str | None = None) -> "Graph":
        problems: list[Problem] = []

        def bad(message: str, node: str | None = None, input: str | None = None, hint=None):
            problems.append(Problem(message, node=node, input=input, hint=hint, file=source))

        if not isinstance(data, dict):
            raise GraphError([Problem(f"a graph is a JSON object, got {type(data).__name__}",
                                      file=source)])
        for key in data:
            if key not in ("loom", "params", "nodes", "meta"):
                bad(f"unknown top-level key '{key}'", hint="expected loom, params, nodes, meta")
        if data.get("loom") != FORMAT_VERSION:
            bad(f"'loom' must be {FORMAT_VERSION} (the format version), got {data.get('loom')!r}")
        raw_nodes = data.get("nodes")
        nodes: dict[str, NodeEntry] = {}
        if not isinstance(raw_nodes, dict):
            bad("'nodes' must be an object of node id -> node")
            raw_nodes = {}
        for node_id, raw in raw_nodes.items():
            entry = _parse_node(node_id, raw, bad)
            if entry is not None:
                nodes[node_id] = entry
        params: dict[str, Param] = {}
        raw_params = data.get("params", {})
        if not isinstance(raw_params, dict):
            bad("'params' must be an object of name -> {node, input}")
            raw_params = {}
        for pname, raw in raw_params.items():
            if (not isinstance(raw, dict) or not isinstance(raw.get("node"), str)
                    or not isinstance(raw.get("input"), str)
                    or not set(raw) <= {"node", "input", "description"}):
                bad(f"param '{pname}' must be {{\"node\": id, \"input\": name}}")
                continue
            params[pname] = Param(raw["node"], raw["input"], raw.get("description"))
        meta = data.get("meta")
        if meta is not None and not isinstance(meta, dict):
            bad("'meta' must be an object")
        elif literal_problem(meta):
            bad(f"'meta' {literal_problem(meta)}")
        if problems:
            raise GraphError(problems)
        return cls(nodes=nodes, params=params, meta=meta, name=name, source=source)

    @classmethod
    def from_json(cls, text: str | bytes, *, name: str = "graph", source: str | None = None) -> "Graph":
        try:
            data = json.loads(text)
        except RecursionError:
            raise GraphError([Problem(f"the JSON is nested more than {MAX_NESTING} levels deep",
                                      file=source)]) from None
        except ValueError as exc:  # JSONDecodeError, bad UTF-8, an integer too long to read
            where = f" at line {exc.lineno}, column {exc.colno}" if hasattr(exc, "lineno") else ""
            raise GraphError([Problem(f"not valid JSON{where}: {getattr(exc, 'msg', exc)}",
                                      file=source)]) from None
        return cls.from_dict(data, name=name, source=source)

    @classmethod
    def load(cls, path: str | Path) -> "Graph":
        path = Path(path)
        try:
            text = path.read_bytes()
        except OSError as exc:
            raise GraphError([Problem(f"cannot read graph file: {exc.strerror}", file=str(path))]) from None
        return cls.from_json(text, name=str(path.resolve()), source=str(path))

    # -- saving --------------------------------------------------------------------
    def to_dict(self) -> dict:
        out: dict[str, Any] = {"loom": FORMAT_VERSION}
        out["params"] = {n: {"node": p.node, "input": p.input,
                             **({"description": p.description} if p.description else {})}
                         for n, p in self.params.items()}
        out["nodes"] = {nid: _dump_node(e) for nid, e in self.nodes.items()}
        if self.meta is not None:
            out["meta"] = copy.deepcopy(self.meta)
        return out

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    # -- editing -------------------------------------------------------------------
    def copy(self) -> "Graph":
        return Graph(nodes={k: NodeEntry(e.type, dict(e.inputs), e.version, e.meta)
                            for k, e in self.nodes.items()},
                     params=dict(self.params), meta=self.meta, name=self.name, source=self.source)

    def with_params(self, values: dict[str, Any] | None) -> "Graph":
        """A copy with param overrides written into their inputs; unknown names are an error."""
        if not values:
            return self
        unknown = [n for n in values if n not in self.params]
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise GraphError([Problem(f"unknown param '{n}'", hint=f"this graph's params: {known}",
                                      file=self.source) for n in unknown])
        graph = self.copy()
        for pname, value in values.items():
            p = self.params[pname]
            entry = graph.nodes.get(p.node)
            if entry is None:
                raise GraphError([Problem(f"param '{pname}' points at missing node", node=p.node,
                                          file=self.source)])
            entry.inputs[p.input] = value
        return graph

    def param_values(self) -> dict[str, Any]:
        """Current value of each param (None when its input is linked or unset)."""
        values = {}
        for pname, p in self.params.items():
            entry = self.nodes.get(p.node)
            value = entry.inputs.get(p.input) if entry else None
            values[pname] = None if isinstance(value, Link) else value
        return values


def _parse_node(node_id: str, raw: Any, bad) -> NodeEntry | None:
    if not isinstance(raw, dict):
        bad("a node must be an object with 'type' and 'inputs'", node=node_id)
        return None
    for key in raw:
        if key not in ("type", "inputs", "version", "meta"):
            bad(f"unknown key '{key}'", node=node_id, hint="expected type, inputs, version, meta")
    node_type = raw.get("type")
    if not isinstance(node_type, str) or not node_type:
        bad("'type' must be a non-empty string", node=node_id)
        return None
    raw_inputs = raw.get("inputs", {})
    if not isinstance(raw_inputs, dict):
        bad("'inputs' must be an object of name -> value or [node_id, output]", node=node_id)
        return None
    inputs: dict[str, Any] = {}
    for name, value in raw_inputs.items():
        problem = literal_problem(value)
        if problem:
            bad(f"the value {problem}", node=node_id, input=name)
            continue
        if _looks_like_link(value):
            inputs[name] = Link(value[0], value[1])
        elif isinstance(value, dict) and set(value) == {LITERAL_ESCAPE}:
            inputs[name] = value[LITERAL_ESCAPE]
        else:
            inputs[name] = value
    version = raw.get("version")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        bad(f"'version' must be a positive integer, got {version!r}", node=node_id)
        return None
    meta = raw.get("meta")
    if meta is not None and not isinstance(meta, dict):
        bad("'meta' must be an object", node=node_id)
        return None
    if literal_problem(meta):
        bad(f"'meta' {literal_problem(meta)}", node=node_id)
        return None
    return NodeEntry(node_type, inputs, version, meta)


def _dump_value(value: Any) -> Any:
    if isinstance(value, Link):
        return value.to_json()
    if _looks_like_link(value) or (isinstance(value, dict) and set(value) == {LITERAL_ESCAPE}):
        return {LITERAL_ESCAPE: value}
    return value


def _dump_node(entry: NodeEntry) -> dict:
    out: dict[str, Any] = {"type": entry.type,
                           "inputs": {k: _dump_value(v) for k, v in entry.inputs.items()}}
    if entry.version is not None:
        out["version"] = entry.version
    if entry.meta is not None:
        out["meta"] = copy.deepcopy(entry.meta)
    return out
