"""Validation: check a graph against the node catalogue and report every problem at once.

The result, a `CheckedGraph`, is what the planner and executor work from: each node's
spec, its validated literals and its links, and a topological order. Nothing runs
unless validation passed.
"""
from __future__ import annotations

import difflib
import functools
import inspect
from dataclasses import dataclass
from typing import Any

from .errors import GraphError, Problem
from .graph import Graph, Link, NodeEntry, literal_problem
from .node import NodeSpec
from .registry import Registry
from .types import is_assignable, type_name


@dataclass
class CheckedGraph:
    graph: Graph
    specs: dict[str, NodeSpec]
    literals: dict[str, dict[str, Any]]   # node -> input -> validated value (defaults filled)
    links: dict[str, dict[str, Link]]     # node -> input -> upstream link
    order: list[str]                      # topological, every node
    outputs: list[str]                    # output-node ids, in order

    def needed(self) -> list[str]:
        """Nodes some output depends on, in topological order (the pruned plan)."""
        keep = set(self.outputs)
        for node_id in reversed(self.order):
            if node_id in keep:
                keep.update(link.node for link in self.links[node_id].values())
        return [n for n in self.order if n in keep]


def validate(graph: Graph, registry: Registry, previous: CheckedGraph | None = None) -> CheckedGraph:
    """Check every node, edge and param. `previous`, the last CheckedGraph of the same graph,
    lets nodes whose entry did not change keep their checked literals, and an unchanged
    structure keep its cycle check and topological order: a rerun costs what changed."""
    problems: list[Problem] = []
    src = graph.source

    def bad(message: str, node: str | None = None, input: str | None = None, hint: str | None = None):
        problems.append(Problem(message, node=node, input=input, hint=hint, file=src))

    specs: dict[str, NodeSpec] = {}
    literals: dict[str, dict[str, Any]] = {}
    links: dict[str, dict[str, Link]] = {}
    unchanged: set[str] = set()
    old_nodes = previous.graph.nodes if previous is not None else {}
    for node_id, entry in graph.nodes.items():
        old = old_nodes.get(node_id)
        if old is not None and node_id in previous.literals and _same_entry(old, entry) \
                and registry.get(entry.type) is previous.specs[node_id]:
            specs[node_id] = previous.specs[node_id]
            literals[node_id], links[node_id] = previous.literals[node_id], previous.links[node_id]
            unchanged.add(node_id)
            continue
        spec = registry.get(entry.type)
        if spec is None:
            close = registry.suggest(entry.type)
            bad(f"unknown node type '{entry.type}'", node=node_id,
                hint=f"did you mean {', '.join(repr(c) for c in close)}?" if close else "see `loom nodes`")
            continue
        specs[node_id] = spec
        inputs = entry.inputs
        if entry.version is not None and entry.version != spec.version:
            if entry.version > spec.version:
                bad(f"written for version {entry.version} of '{spec.type}', this install has "
                    f"version {spec.version}", node=node_id, hint="upgrade the node pack")
                continue
            try:
                inputs = spec.migrate(entry.version, inputs)
            except Exception as exc:  # noqa: BLE001 - a migration is node-pack code
                bad(f"cannot migrate from version {entry.version}: {exc}", node=node_id)
                continue
        literals[node_id], links[node_id] = _check_inputs(node_id, spec, inputs, bad)

    for node_id, node_links in links.items():
        spec = specs[node_id]
        if node_id in unchanged and all(link.node in unchanged for link in node_links.values()):
            continue  # the same edges between the same node types were checked last time
        for name, link in node_links.items():
            upstream = specs.get(link.node)
            if link.node not in graph.nodes:
                bad(f"links to missing node '{link.node}'", node=node_id, input=name,
                    hint=_did_you_mean(link.node, graph.nodes))
            elif upstream is None:
                continue  # its unknown type is already reported
            elif link.output not in upstream.outputs:
                bad(f"node '{link.node}' ({upstream.type}) has no output '{link.output}'",
                    node=node_id, input=name, hint=f"its outputs: {', '.join(upstream.outputs)}")
            elif not is_assignable(upstream.outputs[link.output], spec.inputs[name].annotation):
                bad(f"type mismatch: '{link.node}.{link.output}' gives "
                    f"{type_name(upstream.outputs[link.output])}, input wants "
                    f"{type_name(spec.inputs[name].annotation)}", node=node_id, input=name)

    for pname, param in graph.params.items():
        spec = specs.get(param.node)
        if param.node not in graph.nodes:
            bad(f"param '{pname}' points at missing node '{param.node}'")
        elif spec is not None and param.input not in spec.inputs:
            bad(f"param '{pname}' points at unknown input '{param.input}'", node=param.node,
                input=param.input)

    same_structure = (previous is not None and len(old_nodes) == len(graph.nodes)
                      and all(n in unchanged or (n in old_nodes and n in previous.links
                                                 and links.get(n) == previous.links[n])
                              for n in graph.nodes))
    if same_structure:
        order = previous.order
    else:
        order = _topological_order(graph, links, bad)

    outputs = [n for n, s in specs.items() if s.output_node]
    if graph.nodes and not outputs and not any(
            graph.nodes[n].type not in registry for n in graph.nodes):
        bad("the graph has no output node, so nothing would run",
            hint="add a sink such as 'show' or 'save_image'")
    if not graph.nodes:
        bad("the graph has no nodes")
    if problems:
        raise GraphError(problems)
    return CheckedGraph(graph, specs, literals, links, order, outputs)


def _topological_order(graph: Graph, links: dict[str, dict[str, Link]], bad) -> list[str]:
    """Every node after its inputs (the standard library's graphlib: importing networkx would
    double `loom validate`'s start-up); on a cycle, networkx names every cycle at once."""
    from graphlib import CycleError, TopologicalSorter

    inputs = {node_id: {link.node for link in links.get(node_id, {}).values() if link.node in graph.nodes}
              for node_id in graph.nodes}
    try:
        return list(TopologicalSorter(inputs).static_order())
    except CycleError:
        pass
    import networkx as nx

    dag = nx.DiGraph()
    dag.add_nodes_from(graph.nodes)
    dag.add_edges_from((source, node_id) for node_id, sources in inputs.items() for source in sources)
    cycles = [sorted(c) for c in nx.strongly_connected_components(dag)
              if len(c) > 1 or dag.has_edge(next(iter(c)), next(iter(c)))]
    for cycle in cycles:
        bad(f"cycle through nodes {', '.join(repr(n) for n in cycle)}", node=cycle[0],
            hint="a graph must be acyclic; use a retry node for loops")
    return []


_CONTAINERS = (list, dict, tuple)


def _same_entry(old: NodeEntry, new: NodeEntry) -> bool:
    if old is new:
        return True
    if old.type != new.type or old.version != new.version or old.inputs != new.inputs:
        return False
    for name, value in new.inputs.items():   # `==` takes 1, 1.0 and True for one another
        before = old.inputs[name]
        if type(before) is not type(value) or (type(value) in _CONTAINERS and not same_value(before, value)):
            return False
    return True


def same_value(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1, 1.0 and True are different literals)."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        if x is y:
            continue
        if type(x) is not type(y):
            return False
        if isinstance(x, dict):
            if x.keys() != y.keys():
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif isinstance(x, (list, tuple)):
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif x != y:
            return False
    return True


@functools.lru_cache(maxsize=None)
def fingerprinted_inputs(spec: NodeSpec) -> frozenset[str]:
    """Inputs the node's fingerprint reads: they must be literals, since fingerprints are
    computed while planning, before any upstream node has run."""
    if spec.fingerprint is None:
        return frozenset()
    params = inspect.signature(spec.fingerprint).parameters
    return frozenset(name for name, p in params.items()
                     if name in spec.inputs and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


def _did_you_mean(name: str, choices) -> str | None:
    close = difflib.get_close_matches(name, list(choices), n=3, cutoff=0.5)
    return f"did you mean {', '.join(repr(c) for c in close)}?" if close else None


def _check_inputs(node_id: str, spec: NodeSpec, inputs: dict[str, Any], bad):
    literals: dict[str, Any] = {}
    links: dict[str, Link] = {}
    for name, value in inputs.items():
        ispec = spec.inputs.get(name)
        if ispec is None:
            bad(f"unknown input '{name}' for '{spec.type}'", node=node_id, input=name,
                hint=_did_you_mean(name, spec.inputs) or f"inputs: {', '.join(spec.inputs) or 'none'}")
        elif isinstance(value, Link):
            if name in fingerprinted_inputs(spec):
                bad(f"must be a literal: it is fingerprinted (the node reads outside state such as a "
                    f"file named by it before anything runs), not linked from '{value.node}.{value.output}'",
                    node=node_id, input=name)
            links[name] = value
        elif literal_problem(value):
            bad(f"the value {literal_problem(value)}", node=node_id, input=name)
        elif not ispec.literal:
            bad(f"must be linked from an output of type {type_name(ispec.annotation)}, "
                f"not given a literal", node=node_id, input=name)
        else:
            try:
                literals[name] = ispec.check_value(value)
            except ValueError as exc:
                bad(str(exc), node=node_id, input=name)
    for name, ispec in spec.inputs.items():
        if name in inputs:
            continue
        if ispec.required:
            bad(f"missing required input '{name}' ({type_name(ispec.annotation)})",
                node=node_id, input=name)
        else:
            literals[name] = ispec.default
    return literals, links


def check_override(checked: CheckedGraph, node_id: str, input_name: str, value: Any) -> Any:
    """Validate a literal that replaces one input for a single evaluation (retry loops)."""
    spec = checked.specs.get(node_id)
    if spec is None or input_name not in spec.inputs:
        raise ValueError(f"no input '{input_name}' on node '{node_id}'")
    ispec = spec.inputs[input_name]
    if input_name in checked.links[node_id]:
        raise ValueError(f"input '{input_name}' of node '{node_id}' is linked, not a literal")
    return ispec.check_value(value)
