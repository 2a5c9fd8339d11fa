"""The Python graph builder produces exactly the JSON document format."""
from engine import Executor, Graph, GraphBuilder, Link


def test_readme_example(registry):
    g = GraphBuilder(registry)
    a = g.add("int", value=2)
    s = g.add("add", a=a.out("value"), b=3)
    g.add("show", value=s)
    g.param("x", a, "value")
    result = Executor(registry=registry).run(g.build(), params={"x": 5})
    assert result.outputs == {"show_1": {"value": 8.0}}


def test_built_graph_serialises_to_the_file_format_and_loads_back_for_editing(registry):
    g = GraphBuilder(registry)
    a = g.add("int", node_id="a", value=2)
    g.add("show", node_id="out", value=g.add("add", node_id="b", a=a, b=1))
    g.param("start", "a", "value", description="first number")
    doc = g.build().to_dict()
    assert doc == {
        "loom": 1,
        "params": {"start": {"node": "a", "input": "value", "description": "first number"}},
        "nodes": {"a": {"type": "int", "inputs": {"value": 2}},
                  "b": {"type": "add", "inputs": {"a": ["a", "value"], "b": 1}},
                  "out": {"type": "show", "inputs": {"value": ["b", "value"]}}}}
    editable = GraphBuilder.from_graph(Graph.from_dict(doc), registry)
    editable.set("b", "b", 10)
    assert editable.build().nodes["b"].inputs == {"a": Link("a", "value"), "b": 10}
    assert Graph.from_dict(doc).nodes["b"].inputs["b"] == 1


def test_generated_ids_are_unique(registry):
    g = GraphBuilder(registry)
    ids = [g.add("int", value=i).id for i in range(3)]
    g.remove(ids[0])
    ids.append(g.add("int", value=9).id)
    assert len(set(ids)) == 4
