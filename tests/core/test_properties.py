"""Property tests for the loader, the validator and the cache keys."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import Executor, Graph, GraphError, Settings
from engine.plan import make_plan

from .helpers import registry as make_registry

REGISTRY = make_registry()
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None,
                             suppress_health_check=[HealthCheck.too_slow])


@st.composite
def arithmetic_dags(draw):
    """A random DAG of int / add / multiply nodes, with some of them shown."""
    count = draw(st.integers(1, 25))
    nodes = {}
    for i in range(count):
        kind = "int" if i == 0 else draw(st.sampled_from(["int", "add", "multiply"]))
        if kind == "int":
            nodes[f"n{i}"] = {"type": "int", "inputs": {"value": draw(st.integers(-3, 3))}}
            continue
        inputs = {}
        for name in ("a", "b"):
            if draw(st.booleans()):
                inputs[name] = [f"n{draw(st.integers(0, i - 1))}", "value"]
            else:
                inputs[name] = draw(st.integers(-3, 3))
        nodes[f"n{i}"] = {"type": kind, "inputs": inputs}
    shown = draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3, unique=True))
    for j in shown:
        nodes[f"show{j}"] = {"type": "show", "inputs": {"value": [f"n{j}", "value"]}}
    return {"loom": 1, "params": {}, "nodes": nodes}


def evaluate_directly(doc):
    values = {}
    for node_id, node in doc["nodes"].items():
        inputs = {k: values[v[0]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
        if node["type"] == "int":
            values[node_id] = inputs["value"]
        elif node["type"] == "add":
            values[node_id] = float(inputs["a"] + inputs["b"])
        elif node["type"] == "multiply":
            values[node_id] = float(inputs["a"] * inputs["b"])
        else:
            values[node_id] = inputs["value"]
    return {n: {"value": values[n]} for n in doc["nodes"] if n.startswith("show")}


@PROPERTY_SETTINGS
@given(arithmetic_dags())
def test_random_dags_match_direct_evaluation_and_round_trip(doc):
    graph = Graph.from_dict(doc)
    assert graph.to_dict() == doc
    executor = Executor(registry=REGISTRY)
    assert executor.run(graph).outputs == evaluate_directly(doc)
    assert executor.run(graph).ran == []


def descendants(doc, node_id):
    found, changed = {node_id}, True
    while changed:
        changed = False
        for n, node in doc["nodes"].items():
            if n not in found and any(isinstance(v, list) and v[0] in found
                                      for v in node["inputs"].values()):
                found.add(n)
                changed = True
    return found


def keys_of(doc):
    checked = Executor(registry=REGISTRY).check(Graph.from_dict(doc))
    return make_plan(checked, nonce="n", settings=Settings()).keys


@PROPERTY_SETTINGS
@given(arithmetic_dags(), st.data())
def test_an_edit_changes_exactly_the_keys_of_the_node_and_its_descendants(doc, data):
    before = keys_of(doc)
    candidates = [(n, k) for n, node in doc["nodes"].items() for k, v in node["inputs"].items()
                  if not isinstance(v, list) and n in before]
    if not candidates:
        return
    node_id, name = data.draw(st.sampled_from(candidates))
    edited = {**doc, "nodes": {**doc["nodes"]}}
    node = doc["nodes"][node_id]
    edited["nodes"][node_id] = {**node, "inputs": {**node["inputs"], name: node["inputs"][name] + 100}}
    after = keys_of(edited)
    changed = {n for n in before if before[n] != after[n]}
    assert changed == descendants(doc, node_id) & set(before)


@PROPERTY_SETTINGS
@given(arithmetic_dags(), st.randoms(use_true_random=False))
def test_keys_do_not_depend_on_node_ids_or_key_order(doc, rnd):
    ids = list(doc["nodes"])
    renamed = {old: f"x{rnd.randrange(10**9)}_{i}" for i, old in enumerate(ids)}
    shuffled = ids[:]
    rnd.shuffle(shuffled)
    nodes = {}
    for old in shuffled:
        node = doc["nodes"][old]
        inputs = list(node["inputs"].items())
        rnd.shuffle(inputs)
        nodes[renamed[old]] = {"inputs": {k: [renamed[v[0]], v[1]] if isinstance(v, list) else v
                                          for k, v in inputs}, "type": node["type"]}
    before, after = keys_of(doc), keys_of({"nodes": nodes, "params": {}, "loom": 1})
    assert {renamed[n]: k for n, k in before.items()} == after


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10)


@st.composite
def mangled_documents(draw):
    """Documents that are sometimes valid, mostly not: wrong shapes, types, links, cycles."""
    if draw(st.integers(0, 9)) == 0:
        return draw(json_values)
    doc = draw(arithmetic_dags())
    nodes = doc["nodes"]
    node_ids = list(nodes)
    for _ in range(draw(st.integers(1, 4))):
        target = draw(st.sampled_from(node_ids))
        mutation = draw(st.integers(0, 6))
        if not isinstance(nodes.get(target), dict) or not isinstance(nodes[target].get("inputs"), dict):
            continue  # already replaced wholesale
        if mutation == 0:
            nodes[target] = draw(json_values)
        elif mutation == 1:
            nodes[target]["type"] = draw(st.text(max_size=6))
        elif mutation == 2:
            nodes[target]["inputs"] = {draw(st.text(max_size=3)): draw(json_values)}
        elif mutation == 3:  # may point forwards: cycles
            nodes[target]["inputs"]["a"] = [draw(st.sampled_from(node_ids)), "value"]
        elif mutation == 4:
            nodes[target]["inputs"]["a"] = [target, draw(st.text(max_size=4))]
        elif mutation == 5:
            doc["params"] = {draw(st.text(max_size=3)): draw(json_values)}
        else:
            doc[draw(st.sampled_from(["loom", "params", "nodes", "meta", "other"]))] = draw(json_values)
            break
    return doc


@PROPERTY_SETTINGS
@given(mangled_documents())
def test_malformed_documents_only_ever_give_graph_errors(doc):
    try:
        graph = Graph.from_dict(doc)
        Executor(registry=REGISTRY).check(graph)
    except GraphError as exc:
        assert exc.problems and all(p.message for p in exc.problems)
