"""Hostile graph documents for the loader, the validator and the planner (used by test_fuzz.py
and bench/fuzz.py): random JSON text, random node graphs over the real catalogue, literals
nested thousands deep, huge numbers and strings. A document may be rejected (GraphError);
anything else escaping is a crash."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Executor, Graph, GraphError, Registry


@dataclass
class Tally:
    tried: int = 0
    rejected: int = 0                  # GraphError: a clear problem named
    accepted: int = 0                  # validated and planned
    crashes: list[str] = field(default_factory=list)

    def line(self) -> str:
        return (f"documents tried: {self.tried}, rejected with a GraphError: {self.rejected}, "
                f"planned: {self.accepted}, crashes: {len(self.crashes)}")


def _nested(depth: int, as_dict: bool) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"k": value} if as_dict else [value]
    return value


json_leaves = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
               | st.text(max_size=20) | st.integers(min_value=-10 ** 6000, max_value=10 ** 6000)
               | st.just("x" * 1_000_000))
json_values = st.recursive(json_leaves, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=20)
deep_values = st.builds(_nested, st.integers(min_value=1, max_value=20_000), st.booleans())
literals = json_values | deep_values
deep_text = st.builds(lambda n, as_dict: '{"k":' * n + "1" + "}" * n if as_dict else "[" * n + "1" + "]" * n,
                      st.integers(min_value=1, max_value=200_000), st.booleans())


@st.composite
def graph_documents(draw, catalogue: list[tuple[str, list[str], list[str]]], values=literals) -> dict:
    """A document naming real node types and inputs mostly, with links, literals and junk."""
    ids = draw(st.lists(st.text(min_size=1, max_size=6), min_size=1, max_size=8, unique=True))
    nodes = {}
    for node_id in ids:
        type_id, inputs, outputs = draw(st.sampled_from(catalogue))
        given = {}
        for name in draw(st.lists(st.sampled_from(inputs + ["junk"]), max_size=5, unique=True)):
            if draw(st.booleans()):
                given[name] = [draw(st.sampled_from(ids)), draw(st.sampled_from(outputs + ["nope"]))]
            else:
                given[name] = draw(values)
        nodes[node_id] = {"type": draw(st.sampled_from([type_id, type_id, "no_such_type"])), "inputs": given}
    doc: dict = {"loom": draw(st.sampled_from([1, 1, 1, 2, "1"])), "nodes": nodes}
    if draw(st.booleans()):
        target = draw(st.sampled_from(ids))
        doc["params"] = {"p": {"node": target, "input": draw(st.text(max_size=6))}}
    if draw(st.booleans()):
        doc["meta"] = draw(values)
    return doc


@st.composite
def arithmetic_documents(draw) -> dict:
    """Mostly valid: a number shown, its value a param; the value may be anything."""
    value = draw(st.integers() | st.integers(min_value=-10 ** 6000, max_value=10 ** 6000) | literals)
    return {"loom": 1, "params": {"p": {"node": "a", "input": "value"}},
            "nodes": {"a": {"type": "int", "inputs": {"value": value}},
                      "out": {"type": "show", "inputs": {"value": ["a", "value"]}}}}


def _catalogue(registry: Registry) -> list[tuple[str, list[str], list[str]]]:
    return [(spec.type, list(spec.inputs) or ["x"], list(spec.outputs)) for spec in registry]


def _check(tally: Tally, executor: Executor, load, params: dict | None = None) -> None:
    tally.tried += 1
    try:
        executor.plan(load(), params)
        tally.accepted += 1
    except GraphError:
        tally.rejected += 1
    except Exception as exc:  # noqa: BLE001 - what the fuzzing is looking for
        tally.crashes.append(f"{type(exc).__name__}: {str(exc)[:200]}")


def fuzz(examples: int, registry: Registry | None = None) -> Tally:
    """Run `examples` documents of each kind (raw text, graphs as JSON text, graphs with deep
    params) through Graph.from_json / from_dict and Executor.plan; count the outcomes."""
    registry = registry if registry is not None else Registry.default()
    executor = Executor(registry=registry)
    tally = Tally()
    options = settings(max_examples=examples, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck))

    @options
    @given(st.text(max_size=200) | st.binary(max_size=200) | deep_text)
    def raw_text(text):
        _check(tally, executor, lambda: Graph.from_json(text))

    @options
    @given(graph_documents(_catalogue(registry), json_values))
    def graphs(doc):
        try:
            text = json.dumps(doc)
        except ValueError:       # an integer Python will not print: not a document anyone can send
            return
        _check(tally, executor, lambda: Graph.from_json(text))

    @options
    @given(graph_documents(_catalogue(registry)), literals)
    def graphs_with_params(doc, value):
        _check(tally, executor, lambda: Graph.from_dict(doc), {"p": value} if "params" in doc else None)

    @options
    @given(arithmetic_documents(), st.integers() | literals)
    def arithmetic(doc, value):
        _check(tally, executor, lambda: Graph.from_dict(doc))
        _check(tally, executor, lambda: Graph.from_dict(doc), {"p": value})

    for run in (raw_text, graphs, graphs_with_params, arithmetic):
        run()
    return tally
