"""Running graphs: only dirty nodes rerun, failures keep earlier work, events, lazy inputs, retry."""
import itertools
import threading
import time

import pytest

from engine import (Cache, CancelToken, Cancelled, Executor, Graph, GraphBuilder, MemoryCache,
                    NodeError)
from engine.events import NODE_CACHED, NODE_FINISHED, NODE_PROGRESS, RUN_FINISHED, RUN_STARTED

from .helpers import chain


def test_result_has_outputs_ran_cached_and_timings(executor, registry):
    result = executor.run(chain(4, registry).build())
    assert result.status == "succeeded"
    assert result.outputs == {"out": {"value": 4.0}}
    assert result.ran == ["n0", "n1", "n2", "n3", "out"]
    assert result.cached == []
    assert set(result.timings) == set(result.ran)


def test_identical_rerun_runs_nothing(executor, registry):
    graph = chain(4, registry).build()
    executor.run(graph)
    again = executor.run(graph)
    assert again.ran == [] and again.cached == ["out"]
    assert again.outputs == {"out": {"value": 4.0}}


def test_editing_one_literal_reruns_exactly_it_and_its_descendants(executor, registry):
    g = chain(5, registry)
    executor.run(g.build())
    g.set("n2", "b", 10)
    result = executor.run(g.build())
    assert result.ran == ["n2", "n3", "n4", "out"]
    assert result.cached == ["n1"]
    assert result.reasons["n2"] == "input `b` changed"
    assert result.reasons["n3"] == "upstream `n2` changed"


def test_pruned_nodes_do_not_run(executor, registry):
    g = chain(3, registry)
    g.add("add", node_id="unused", a=1, b=2)
    assert "unused" not in executor.run(g.build()).ran


def test_failure_names_the_node_and_keeps_upstream_cached(executor, registry):
    g = GraphBuilder(registry)
    a = g.add("int", node_id="a", value=1)
    b = g.add("add", node_id="b", a=a, b=1)
    f = g.add("fail", node_id="f", value=b, message="kaput")
    g.add("show", node_id="out", value=f)
    with pytest.raises(NodeError) as info:
        executor.run(g.build())
    error = info.value
    assert (error.node, error.node_type) == ("f", "fail")
    assert "RuntimeError: kaput" in error.message and "kaput" in error.traceback
    assert error.result.ran == ["a", "b"]
    # after the fix, only the repaired node and what follows it run
    g.remove("f")
    g.add("add", node_id="f", a=b, b=0)
    result = executor.run(g.build())
    assert result.cached == ["b"] and result.ran == ["f", "out"]


def test_failed_result_without_raising(executor, registry):
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("fail", node_id="f", value=1))
    result = executor.run(g.build(), check=False)
    assert result.status == "failed" and result.error.node == "f"
    assert result.to_dict()["error"]["node"] == "f"


def test_events_in_order(executor, registry):
    events = []
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("slow", node_id="s", value=1, steps=3))
    executor.run(g.build(), listener=events.append)
    kinds = [e.kind for e in events]
    assert kinds[0] == RUN_STARTED and kinds[-1] == RUN_FINISHED
    assert [e.data["step"] for e in events if e.kind == NODE_PROGRESS] == [1, 2, 3]
    assert [e.node for e in events if e.kind == NODE_FINISHED] == ["s", "out"]
    events.clear()
    executor.run(g.build(), listener=events.append)
    assert [e.node for e in events if e.kind == NODE_CACHED] == ["out"]


def test_a_broken_listener_does_not_break_the_run(executor, registry):
    def broken(event):
        raise ValueError("display crashed")
    assert executor.run(chain(2, registry).build(), listener=broken).status == "succeeded"


def test_cancel_inside_a_long_node_and_between_nodes(executor, registry):
    token = CancelToken()

    def cancel_on_second_step(event):
        if event.kind == NODE_PROGRESS and event.data["step"] == 2:
            token.cancel()
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("slow", node_id="s", value=1, steps=100))
    result = executor.run(g.build(), cancel=token, listener=cancel_on_second_step, check=False)
    assert result.status == "cancelled" and "'s'" in str(result.error)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled):
        executor.run(chain(2, registry).build(), cancel=token)


def test_switch_computes_only_the_chosen_branch(executor, registry):
    g = GraphBuilder(registry)
    cond = g.add("bool", node_id="cond", value=True)
    yes = g.add("int", node_id="yes", value=1)
    no = g.add("fail", node_id="no", value=0)
    g.add("show", node_id="out", value=g.add("switch", node_id="sw", condition=cond,
                                             on_true=yes, on_false=no))
    result = executor.run(g.build())
    assert result.outputs["out"]["value"] == 1 and "no" not in result.ran
    g.set("cond", "value", False)
    with pytest.raises(NodeError) as info:
        executor.run(g.build())
    assert info.value.node == "no"


def test_never_cache_node_reruns_every_time(executor, registry):
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("noise", node_id="r"))
    first, second = executor.run(g.build()), executor.run(g.build())
    assert first.ran == second.ran == ["r", "out"]
    assert "never cached" in second.reasons["r"]


def test_fingerprint_reruns_when_the_file_changes(executor, registry, tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one")
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("read_text", node_id="r", path=str(path)))
    assert executor.run(g.build()).outputs["out"]["value"] == "one"
    assert executor.run(g.build()).ran == []
    path.write_text("two!")
    result = executor.run(g.build())
    assert result.ran == ["r", "out"] and result.outputs["out"]["value"] == "two!"
    assert "fingerprint changed" in result.reasons["r"]


def test_fingerprint_sees_the_run_settings(registry, tmp_path):
    from engine import Settings
    (tmp_path / "a.txt").write_text("hello")
    executor = Executor(registry=registry, settings=Settings(input_dir=tmp_path))
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("read_input", node_id="r", name="a.txt"))
    assert executor.run(g.build()).outputs["out"]["value"] == "hello"
    (tmp_path / "a.txt").write_text("changed")
    assert executor.run(g.build()).ran == ["r", "out"]


def test_fingerprint_failure_is_reported_before_running(executor, registry, tmp_path):
    g = GraphBuilder(registry)
    g.add("show", node_id="out", value=g.add("read_text", node_id="r", path=str(tmp_path / "no")))
    from engine import GraphError
    with pytest.raises(GraphError) as info:
        executor.run(g.build())
    assert info.value.problems[0].node == "r"


def test_several_named_outputs(executor, registry):
    g = GraphBuilder(registry)
    s = g.add("split", node_id="s", value=7)
    g.add("show", node_id="lo", value=s.out("low"))
    g.add("show", node_id="hi", value=s["high"])
    result = executor.run(g.build())
    assert result.outputs == {"lo": {"value": 3}, "hi": {"value": 4}}
    with pytest.raises(ValueError, match="name one"):
        s.out()


def retry_graph(registry, threshold):
    """value = seed * 10; passes when value >= threshold; seed varied by the retry node."""
    g = GraphBuilder(registry)
    base = g.add("float", node_id="base", value=10)           # does not depend on the seed
    seed = g.add("int", node_id="seed", value=0)
    value = g.add("multiply", node_id="value", a=seed, b=base)
    check = g.add("check_at_least", node_id="check", value=value, threshold=threshold)
    loop = g.add("retry", node_id="loop", value=value, check=check,
                 vary={"node": "seed", "input": "value"}, start=1, max_tries=5)
    g.add("show", node_id="tries", value=loop.out("tries"))
    g.add("show", node_id="out", value=loop.out("value"))
    return g


def test_retry_runs_until_the_check_passes_and_reuses_what_does_not_depend_on_the_seed(executor, registry):
    result = executor.run(retry_graph(registry, threshold=30).build())
    assert result.outputs["tries"]["value"] == 3
    assert result.outputs["out"]["value"] == 30.0
    assert result.ran.count("base") == 1          # computed once, reused by every try
    assert result.ran.count("value") == 3 and result.ran.count("check") == 3
    again = executor.run(retry_graph(registry, threshold=30).build())
    assert again.ran == []


def test_retry_gives_up_after_max_tries(executor, registry):
    g = retry_graph(registry, threshold=1000)
    assert executor.run(g.build()).outputs["tries"]["value"] == 5
    g.set("loop", "require_pass", True)
    with pytest.raises(NodeError, match="no try passed in 5 tries"):
        executor.run(g.build())


def test_retry_keeps_the_try_that_missed_least_when_none_passes(executor, registry):
    g = GraphBuilder(registry)
    seed = g.add("int", node_id="seed", value=0)
    value = g.add("multiply", node_id="value", a=seed, b=10.0)
    check = g.add("check_near", node_id="check", value=value, target=35.0)   # tries 10..50 never pass
    loop = g.add("retry", node_id="loop", value=value, check=check,
                 vary={"node": "seed", "input": "value"}, start=1, max_tries=5)
    g.add("show", node_id="out", value=loop.out("value"))
    assert executor.run(g.build()).outputs["out"]["value"] == 50.0            # keep="last", the default
    g.set("loop", "keep", "best")
    result = executor.run(g.build())
    assert result.outputs["out"]["value"] == 30.0   # misses 3, 2, 1, 1, 2: the first of the fewest
    assert result.ran == ["loop", "out"]            # every try was cached; only the choice changed


def test_memory_budget_evicts_least_recently_used_but_not_pinned(registry):
    memory = MemoryCache(budget_bytes=25_000)
    executor = Executor(registry=registry, cache=Cache(memory))
    g = GraphBuilder(registry)
    for i in range(4):
        g.add("show", node_id=f"out{i}", value=g.add("big", node_id=f"b{i}", size=10_000 + i))
    result = executor.run(g.build())   # needs ~80 kB: everything pinned while it runs
    assert len(result.ran) == 8
    assert memory.bytes <= 25_000
    rerun = executor.run(g.build())
    assert "b0" in rerun.ran and rerun.reasons["b0"] == "not in cache: evicted"


def test_runs_from_several_threads_are_serialised(executor, registry):
    """Runs started together never overlap: each run's events form one block, from its
    run_started to its run_finished, with no other run's event inside."""
    events = []

    def record(event):
        events.append((event.kind, event.run_id))
        if event.kind == NODE_PROGRESS:
            time.sleep(0.001)   # long enough nodes that unserialised runs would interleave

    executor.events.subscribe(record)
    graphs = []
    for i in range(4):
        g = GraphBuilder(registry)
        value = g.add("slow", value=float(i), steps=10)
        for _ in range(3):
            value = g.add("slow", value=value, steps=10)
        g.add("show", value=value)
        graphs.append(g.build())
    threads = [threading.Thread(target=executor.run, args=(g,)) for g in graphs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blocks = [(run_id, [kind for kind, _ in group])
              for run_id, group in itertools.groupby(events, key=lambda e: e[1])]
    assert len(blocks) == 4 and len({run_id for run_id, _ in blocks}) == 4
    for _, kinds in blocks:
        assert kinds[0] == RUN_STARTED and kinds[-1] == RUN_FINISHED
        assert kinds.count(NODE_PROGRESS) == 40


def test_identical_runs_from_several_threads_compute_once(executor, registry):
    graphs = [chain(20, registry).build() for _ in range(4)]
    results = []
    threads = [threading.Thread(target=lambda g=g: results.append(executor.run(g))) for g in graphs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(len(r.ran) for r in results) == [0, 0, 0, 21]


def test_explain_without_running(executor, registry):
    g = chain(4, registry)
    before = executor.explain(g.build())
    assert {e.status for e in before.values()} == {"will run"}
    assert before["n0"].reason == "first run: no earlier result for this node"
    executor.run(g.build())
    g.set("n2", "b", 5)
    after = executor.explain(g.build())
    assert after["n0"].status == "not needed"
    assert after["n1"].status == "cached"
    assert after["n2"].status == "will run" and after["n2"].reason == "input `b` changed"
    assert after["n3"].reason == "upstream `n2` changed"


def test_migrations_let_old_graphs_load(registry):
    from engine import Registry, node

    @node("scale_v2", version=2)
    def scale(value: float, factor: float = 1.0) -> float:
        return value * factor

    @scale.spec.migration(1)
    def rename_k_to_factor(inputs):
        inputs["factor"] = inputs.pop("k")
        return inputs

    r = Registry([*registry])
    r.register(scale)
    doc = {"loom": 1, "nodes": {
        "s": {"type": "scale_v2", "version": 1, "inputs": {"value": 2, "k": 3}},
        "out": {"type": "show", "inputs": {"value": ["s", "value"]}}}}
    assert Executor(registry=r).run(Graph.from_dict(doc)).outputs["out"]["value"] == 6.0


def test_linked_values_meet_the_input_constraints(executor, registry):
    g = GraphBuilder(registry)
    steps = g.add("int", node_id="steps", value=0)
    g.add("show", node_id="out", value=g.add("slow", node_id="s", value=1, steps=steps))
    with pytest.raises(NodeError) as info:
        executor.run(g.build())
    assert info.value.node == "s" and "input 'steps'" in info.value.message
