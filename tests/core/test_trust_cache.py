"""Cache correctness: a key changes exactly when the result can, and bad input never crashes."""
from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from engine import Cache, Context, Executor, GraphBuilder, GraphError, Settings, node
from engine.events import NODE_FAILED, RUN_FAILED
from engine.graph import MAX_NESTING, Graph
from engine.models import file_digest

from .helpers import chain, registry as base_registry


def _numbered_fingerprint(index: int, folder: str) -> str:
    return file_digest(Path(folder) / f"{index}.txt")


@node("read_numbered", category="test", fingerprint=_numbered_fingerprint)
def read_numbered(index: int, folder: str) -> int:
    """The integer written in `folder/<index>.txt`."""
    return int((Path(folder) / f"{index}.txt").read_text())


@node("device_name", category="test")
def device_name(ctx: Context, value: int) -> str:
    """Reads the run settings, so they enter its key."""
    return f"{ctx.settings.device}:{value}"


@pytest.fixture(scope="module")
def registry():
    r = base_registry()
    r.register(read_numbered)
    r.register(device_name)
    return r


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


# -- settings and versions in keys ---------------------------------------------------------

def settings_graph(registry) -> GraphBuilder:
    g = GraphBuilder(registry)
    n0 = g.add("int", node_id="n0", value=1)
    g.add("show", node_id="out", value=g.add("device_name", node_id="d", value=n0))
    return g


def test_settings_enter_only_the_keys_of_nodes_that_can_read_them(registry, tmp_path):
    cache = Cache()
    g = settings_graph(registry)

    def run(**settings):
        return Executor(registry=registry, cache=cache, settings=Settings(**settings)).run(g.build())

    assert run(dtype="float32").ran == ["n0", "d", "out"]
    assert run(dtype="float32", output_dir=tmp_path).ran == []           # folders do not enter
    assert run(dtype="float16").ran == ["d", "out"]                      # arithmetic ignores dtype


@pytest.mark.parametrize("neutral", [
    {"options": {"cpu_offload": True}}, {"options": {"attention_slicing": True}},
])
def test_result_neutral_options_do_not_invalidate(registry, neutral):
    cache = Cache()
    g = settings_graph(registry)
    Executor(registry=registry, cache=cache).run(g.build())
    assert Executor(registry=registry, cache=cache, settings=Settings(**neutral)).run(g.build()).ran == []
    tiled = Executor(registry=registry, cache=cache, settings=Settings(options={"vae_tiling": True}))
    assert tiled.run(g.build()).ran == ["d", "out"]


def test_cuda_and_cuda0_are_the_same_device():
    assert Settings(device="cuda").result_salt() == Settings(device="cuda:0").result_salt()
    assert Settings(device="cuda").result_salt() != Settings(device="cuda:1").result_salt()


def test_keys_include_the_node_packs_version_and_its_libraries(registry, monkeypatch):
    import nodes.image
    from engine import plan as plan_module

    ex = Executor(registry=registry)
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("int", node_id="n", value=1))
    before = ex.plan(g.build())
    assert before.parts["n"].pack.startswith("loom ")                      # the built-in pack
    assert "torch " not in before.parts["n"].pack                          # plain JSON in, out
    assert "torch " in plan_module.pack_salt(nodes.image.image_to_mask.spec)  # tensors in, out
    monkeypatch.setattr(plan_module, "pack_version", lambda module: "loom 99.0")
    after = Executor(registry=registry).plan(g.build())
    assert after.key("n") != before.key("n")


# -- fingerprints -----------------------------------------------------------------------------

def test_a_linked_fingerprinted_input_is_a_validation_problem(registry, tmp_path):
    g = GraphBuilder(registry)
    folder = g.add("string", node_id="folder", value=str(tmp_path))
    g.add("show", node_id="out", value=g.add("read_numbered", node_id="r", index=0, folder=folder))
    with pytest.raises(GraphError) as info:
        Executor(registry=registry).plan(g.build())
    [problem] = info.value.problems
    assert (problem.node, problem.input) == ("r", "folder")
    assert "must be a literal: it is fingerprinted" in problem.message


def test_each_retry_try_is_fingerprinted_for_its_own_value(registry, tmp_path):
    (tmp_path / "0.txt").write_text("1")
    (tmp_path / "1.txt").write_text("9")
    g = GraphBuilder(registry)
    reader = g.add("read_numbered", node_id="r", index=0, folder=str(tmp_path))
    check = g.add("check_at_least", node_id="c", value=reader, threshold=5)
    retry = g.add("retry", node_id="retry", value=reader, check=check,
                  vary={"node": "r", "input": "index"}, max_tries=2)
    g.add("show", node_id="out", value=retry.out("value"))
    ex = Executor(registry=registry)
    assert ex.run(g.build()).outputs["out"]["value"] == 9
    (tmp_path / "1.txt").write_text("7")                  # edit the file the second try read
    assert ex.run(g.build()).outputs["out"]["value"] == 7


# -- deep and hostile input -------------------------------------------------------------------

def test_deep_json_is_a_graph_error_not_a_recursion_error():
    text = "[" * 100_000 + "]" * 100_000
    with pytest.raises(GraphError, match="nested"):
        Graph.from_json(text)
    deep_input = {"loom": 1, "nodes": {"a": {"type": "int", "inputs": {"value": nested(50_000)}}}}
    with pytest.raises(GraphError) as info:
        Graph.from_dict(deep_input)
    assert (info.value.problems[0].node, info.value.problems[0].input) == ("a", "value")
    with pytest.raises(GraphError, match="meta"):
        Graph.from_dict({"loom": 1, "nodes": {}, "meta": {"x": nested(50_000)}})


def test_deep_literals_from_params_and_the_builder_name_node_and_input(registry):
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("int", node_id="n", value=1))
    g.param("v", "n", "value")
    for graph, params in [(g.build(), {"v": nested(20_000)}),
                          (g.build().with_params({"v": nested(MAX_NESTING + 1)}), None)]:
        with pytest.raises(GraphError) as info:
            Executor(registry=registry).plan(graph, params)
        assert (info.value.problems[0].node, info.value.problems[0].input) == ("n", "value")
        assert "nested more than" in info.value.problems[0].message


def test_deep_set_value_exits_2(tmp_path, capsys):
    from engine.cli import main

    graph = tmp_path / "g.json"
    graph.write_text(json.dumps({"loom": 1, "params": {"v": {"node": "n", "input": "value"}},
                                 "nodes": {"n": {"type": "int", "inputs": {"value": 1}},
                                           "out": {"type": "show", "inputs": {"value": ["n", "value"]}}}}))
    deep = "[" * 50_000 + "]" * 50_000
    assert main(["validate", str(graph), "--set", f"v={deep}"]) == 2
    assert "nested" in capsys.readouterr().err


# -- failures while storing ---------------------------------------------------------------------

class FailingCache(Cache):
    def put(self, key, outputs):
        raise MemoryError("no room")


def test_an_exception_while_storing_fails_the_run_with_the_node(registry):
    events = []
    ex = Executor(registry=registry, cache=FailingCache())
    ex.events.subscribe(events.append)
    result = ex.run(chain(2, registry).build(), check=False)
    assert result.status == "failed" and result.error.node == "n0"
    assert "cannot store the result: MemoryError: no room" in result.error.message
    assert [e.kind for e in events if e.kind in (NODE_FAILED, RUN_FAILED)] == [NODE_FAILED, RUN_FAILED]


# -- threads ------------------------------------------------------------------------------------

def test_plans_explains_and_runs_from_many_threads(registry):
    ex = Executor(registry=registry)
    errors: list[BaseException] = []
    results: dict[tuple[int, int], float] = {}

    def work(worker: int):
        try:
            for i in range(15):
                g = chain(20, registry)
                g.name = f"graph{worker % 2}"
                g.set("n0", "value", i)
                ex.explain(g.build())
                ex.plan(g.build())
                results[worker, i] = ex.run(g.build()).outputs["out"]["value"]
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == {(w, i): float(i + 19) for w in range(4) for i in range(15)}


# -- incremental rerun ----------------------------------------------------------------------------

def test_a_rerun_revalidates_and_rekeys_only_what_changed(registry, monkeypatch):
    from engine import plan as plan_module, validate as validate_module

    ex = Executor(registry=registry)
    g = chain(200, registry)
    cold = ex.run(g.build())
    checked, encoded = [], []
    real_check, real_canonical = validate_module._check_inputs, plan_module.canonical
    monkeypatch.setattr(validate_module, "_check_inputs",
                        lambda node_id, *a: checked.append(node_id) or real_check(node_id, *a))
    monkeypatch.setattr(plan_module, "canonical", lambda v: encoded.append(v) or real_canonical(v))
    g.set("n150", "b", 5)
    result = ex.run(g.build())
    assert checked == ["n150"]
    assert len(encoded) == 1                                   # n150's one literal; the rest reused
    assert result.ran == [f"n{i}" for i in range(150, 200)] + ["out"]
    fresh = Executor(registry=registry).plan(g.build())         # reuse gives the cold keys
    assert ex.plan(g.build()).keys == fresh.keys
    assert cold.outputs["out"]["value"] + 4 == result.outputs["out"]["value"]


def test_explain_names_a_changed_variant_before_the_run(registry, tmp_path):
    (tmp_path / "0.txt").write_text("1")
    (tmp_path / "1.txt").write_text("9")
    g = GraphBuilder(registry)
    reader = g.add("read_numbered", node_id="r", index=0, folder=str(tmp_path))
    check = g.add("check_at_least", node_id="c", value=reader, threshold=5)
    g.add("show", node_id="out", value=g.add("retry", node_id="retry", value=reader, check=check,
                                              vary={"node": "r", "input": "index"}, max_tries=2).out("value"))
    ex = Executor(registry=registry)
    ex.run(g.build())
    assert ex.explain(g.build())["out"].status == "cached"
    (tmp_path / "1.txt").write_text("7")
    explained = ex.explain(g.build())
    assert explained["retry"].status == "will run" and "varied input" in explained["retry"].reason
    assert explained["out"].status == "will run"
    assert ex.run(g.build()).reasons["retry"] == explained["retry"].reason
