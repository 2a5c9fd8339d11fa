"""Validation reports every problem at once, each with node id, input and an actionable message."""
import pytest

from engine import Graph, GraphError


def problems(executor, nodes, params=None):
    doc = {"loom": 1, "params": params or {}, "nodes": nodes}
    with pytest.raises(GraphError) as info:
        executor.check(Graph.from_dict(doc))
    return info.value.problems


def one(executor, nodes, **kw):
    found = problems(executor, nodes, **kw)
    assert len(found) == 1, found
    return found[0]


SHOW = {"out": {"type": "show", "inputs": {"value": 1}}}


def test_unknown_type_suggests_close_names(executor):
    p = one(executor, {"a": {"type": "ad", "inputs": {}}, **SHOW})
    assert (p.node, "unknown node type 'ad'") == ("a", p.message)
    assert "'add'" in p.hint


def test_missing_required_input(executor):
    p = one(executor, {"a": {"type": "add", "inputs": {}}, **SHOW})
    assert (p.node, p.input) == ("a", "a")
    assert "missing required input 'a'" in p.message


def test_unknown_input(executor):
    p = one(executor, {"a": {"type": "add", "inputs": {"a": 1, "c": 2}}, **SHOW})
    assert (p.node, p.input) == ("a", "c")
    assert "did you mean" in p.hint or "inputs:" in p.hint


def test_link_to_missing_node_and_missing_output(executor):
    found = problems(executor, {
        "a": {"type": "add", "inputs": {"a": ["nowhere", "value"]}},
        "b": {"type": "add", "inputs": {"a": ["a", "nope"]}}, **SHOW})
    messages = {(p.node, p.input): p.message for p in found}
    assert "missing node 'nowhere'" in messages[("a", "a")]
    assert "has no output 'nope'" in messages[("b", "a")]


def test_type_mismatch_names_both_types(executor):
    p = one(executor, {"s": {"type": "string", "inputs": {"value": "x"}},
                       "a": {"type": "add", "inputs": {"a": ["s", "value"]}}, **SHOW})
    assert (p.node, p.input) == ("a", "a")
    assert "str" in p.message and "float" in p.message


def test_int_output_feeds_float_input(executor):
    executor.check(Graph.from_dict({"loom": 1, "nodes": {
        "i": {"type": "int", "inputs": {"value": 1}},
        "a": {"type": "add", "inputs": {"a": ["i", "value"]}},
        "out": {"type": "show", "inputs": {"value": ["a", "value"]}}}}))


def test_literal_of_wrong_type_and_out_of_range(executor):
    found = problems(executor, {
        "i": {"type": "int", "inputs": {"value": "3"}},
        "s": {"type": "slow", "inputs": {"value": 1, "steps": 0}},
        "out": {"type": "show", "inputs": {"value": ["s", "value"]}}})
    messages = {(p.node, p.input): p.message for p in found}
    assert "valid integer" in messages[("i", "value")]
    assert "greater than or equal to 1" in messages[("s", "steps")] and "got 0" in messages[("s", "steps")]


def test_cycle_lists_its_nodes(executor):
    p = one(executor, {"a": {"type": "add", "inputs": {"a": ["b", "value"]}},
                       "b": {"type": "add", "inputs": {"a": ["a", "value"]}}, **SHOW})
    assert "cycle" in p.message and "'a'" in p.message and "'b'" in p.message


def test_no_output_node(executor):
    p = one(executor, {"a": {"type": "int", "inputs": {"value": 1}}})
    assert "no output node" in p.message


def test_every_problem_is_reported_in_one_go(executor):
    found = problems(executor, {
        "a": {"type": "nope", "inputs": {}},
        "b": {"type": "add", "inputs": {}},
        "c": {"type": "int", "inputs": {"value": 1.5}}, **SHOW},
        params={"p": {"node": "zzz", "input": "value"}})
    assert {p.node for p in found} >= {"a", "b", "c"}
    assert any("param 'p'" in p.message for p in found)


def test_link_only_input_refuses_a_literal(executor):
    found = problems(executor, {"sw": {"type": "switch", "inputs": {"condition": True, "on_true": 1,
                                                                    "on_false": 2}}, **SHOW})
    assert {(p.node, p.input) for p in found} == {("sw", "on_true"), ("sw", "on_false")}
    assert all("must be linked" in p.message for p in found)
