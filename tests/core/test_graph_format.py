"""The graph document: load from file, string or dict; save back identically."""
import json

import pytest

from engine import Graph, GraphError, Link

DOC = {
    "loom": 1,
    "params": {"x": {"node": "a", "input": "value", "description": "start"}},
    "nodes": {
        "a": {"type": "int", "inputs": {"value": 2}, "meta": {"title": "A"}},
        "b": {"type": "add", "inputs": {"a": ["a", "value"], "b": 3}, "version": 1},
        "s": {"type": "show", "inputs": {"value": {"$literal": ["not", "a link"]}}},
    },
    "meta": {"author": "someone"},
}


def test_round_trip_from_dict_string_and_file(tmp_path):
    assert Graph.from_dict(DOC).to_dict() == DOC
    assert Graph.from_json(json.dumps(DOC)).to_dict() == DOC
    path = tmp_path / "g.json"
    Graph.from_dict(DOC).save(path)
    assert Graph.load(path).to_dict() == DOC


def test_links_and_escaped_literals_are_told_apart():
    g = Graph.from_dict(DOC)
    assert g.nodes["b"].inputs["a"] == Link("a", "value")
    assert g.nodes["s"].inputs["value"] == ["not", "a link"]


def test_param_override_writes_the_input_and_unknown_param_is_an_error():
    g = Graph.from_dict(DOC)
    assert g.with_params({"x": 7}).nodes["a"].inputs["value"] == 7
    assert g.nodes["a"].inputs["value"] == 2  # the original is untouched
    with pytest.raises(GraphError) as info:
        g.with_params({"y": 1})
    assert "unknown param 'y'" in str(info.value)
    assert "x" in info.value.problems[0].hint


@pytest.mark.parametrize("text, fragment", [
    ("{not json", "not valid JSON at line 1"),
    ("[1, 2]", "a graph is a JSON object"),
    ('{"loom": 2, "nodes": {}}', "'loom' must be 1"),
    ('{"loom": 1, "nodes": []}', "'nodes' must be an object"),
    ('{"loom": 1, "nodes": {"a": 5}}', "a node must be an object"),
    ('{"loom": 1, "nodes": {"a": {"inputs": {}}}}', "'type' must be a non-empty string"),
    ('{"loom": 1, "nodes": {"a": {"type": "int", "inputs": 3}}}', "'inputs' must be an object"),
    ('{"loom": 1, "nodes": {}, "extra": 1}', "unknown top-level key 'extra'"),
    ('{"loom": 1, "nodes": {}, "params": {"p": {"node": 1}}}', "param 'p' must be"),
])
def test_malformed_documents_give_structured_errors(text, fragment):
    with pytest.raises(GraphError) as info:
        Graph.from_json(text, source="bad.json")
    assert fragment in str(info.value)
    assert all(p.file == "bad.json" for p in info.value.problems)


def test_missing_file_is_a_graph_error(tmp_path):
    with pytest.raises(GraphError, match="cannot read graph file"):
        Graph.load(tmp_path / "nope.json")
