"""Limits hold whatever the wiring: values through links, grown batches, padded canvases,
nested loops, a run's total steps and time. Nodes declare limits; the engine enforces them."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import Executor, GraphBuilder, NodeError, Registry, Settings
from engine.limits import (Limit, LimitExceeded, Limits, RunBudget, declared_limits, input_amounts,
                           over_node_limits)
from loom_server_testing import graph, wait_final
from server.config import GraphLimits

SERVER_LIMITS = GraphLimits(max_width=256, max_height=256, max_pixels=128 * 128, max_batch=4,
                            max_steps=50, max_repeats=8, max_run_steps=60, max_run_repeats=12,
                            max_run_seconds=5.0).engine_limits()


@pytest.fixture(scope="module")
def registry() -> Registry:
    registry = Registry()
    for module in ("nodes.primitives", "nodes.draw", "nodes.image", "nodes.compose", "nodes.flow",
                   "loom_test_nodes"):
        registry.load_module(module)
    return registry


def run_limited(registry, tmp_path, g, limits=SERVER_LIMITS) -> NodeError:
    executor = Executor(registry=registry, limits=limits,
                        settings=Settings(output_dir=tmp_path / "out", input_dir=tmp_path / "in",
                                          models_dirs=[]))
    with pytest.raises(NodeError) as failed:
        executor.run(g.build())
    return failed.value


def test_inputs_of_one_kind_multiply_and_lists_count_by_length():
    from typing import Annotated

    assert declared_limits(Annotated[int, Limit("width"), Limit("pixels")]) == ("width", "pixels")
    amounts = input_amounts({"w": ("width", "pixels"), "h": ("pixels",), "v": ("repeats",)},
                            {"w": 30, "h": 20, "v": [1, 2, 3]})
    assert amounts == {"width": (30, "w"), "pixels": (600, "w"), "repeats": (3, "v")}


def test_a_size_reached_through_a_link_is_checked_where_it_is_used(registry, tmp_path):
    g = GraphBuilder()
    w = g.add("int", node_id="w", value=512)
    g.add("show", value=g.add("draw_shape", node_id="draw", width=w, height=64))
    error = run_limited(registry, tmp_path, g)
    assert error.node == "draw"
    assert "input 'width'" in error.message and "width 512 is over" in error.message


def test_a_batch_doubled_past_the_limit_stops_at_the_node_that_grew_it(registry, tmp_path):
    g = GraphBuilder()
    image = g.add("draw_shape", node_id="one", width=32, height=32)
    for i in range(4):   # 2, 4, 8, 16 images
        image = g.add("image_batch", node_id=f"double{i}", a=image, b=image)
    g.add("show", value=image)
    error = run_limited(registry, tmp_path, g)
    assert error.node == "double2" and "batch 8 is over" in error.message


def test_outpaint_padding_cannot_grow_a_canvas_past_the_pixel_limit(registry, tmp_path):
    g = GraphBuilder()
    image = g.add("draw_shape", width=64, height=64)
    g.add("show", value=g.add("pad_for_outpaint", node_id="pad", image=image, left=128, right=128)
          .out("image"))
    error = run_limited(registry, tmp_path, g)
    assert error.node == "pad" and f"pixels {64 * 320} is over" in error.message


def test_nested_retries_spend_one_run_budget_of_repeats(registry, tmp_path):
    g = GraphBuilder(registry)
    work = g.add("test.steps", node_id="work", steps=1, seconds_per_step=0)
    inner = g.add("retry", node_id="inner", value=work, check=g.add("test.reject", value=work),
                  max_tries=4, vary={"node": "work", "input": "steps"}, start=1)
    outer = g.add("retry", node_id="outer", value=inner.out("value"),
                  check=g.add("test.reject", value=inner.out("value")), max_tries=4,
                  vary={"node": "inner", "input": "start"}, start=1)
    g.add("show", value=outer.out("tries"))
    error = run_limited(registry, tmp_path, g)
    assert error.node == "inner"   # its third call pushed the total over
    assert "repeats for the whole run 16 is over the run's budget of 12" in error.message


def test_retries_spend_one_run_budget_of_steps(registry, tmp_path):
    g = GraphBuilder(registry)
    work = g.add("test.steps", node_id="work", steps=20, seconds_per_step=0)
    retry = g.add("retry", value=work, check=g.add("test.reject", value=work), max_tries=4,
                  vary={"node": "work", "input": "steps"}, start=20)
    g.add("show", value=retry.out("tries"))
    error = run_limited(registry, tmp_path, g)
    assert "steps for the whole run 63 is over the run's budget of 60" in error.message


def test_a_run_past_its_wall_clock_budget_fails_at_the_next_step(registry, tmp_path):
    g = GraphBuilder(registry)
    g.add("show", value=g.add("test.steps", node_id="slow", steps=40, seconds_per_step=0.05))
    error = run_limited(registry, tmp_path, g, Limits(seconds=0.5))
    assert error.node == "slow" and "run time" in error.message


def test_without_limits_nothing_is_refused(registry, tmp_path):
    g = GraphBuilder()
    image = g.add("draw_shape", width=512, height=512)
    g.add("show", value=g.add("image_batch", a=image, b=image))
    executor = Executor(registry=registry, settings=Settings(output_dir=tmp_path, models_dirs=[]))
    assert executor.run(g.build()).status == "succeeded"


def test_a_run_budget_is_shared_by_every_node_and_thread_safe():
    budget = RunBudget(Limits(per_run={"steps": 100}))
    for _ in range(10):
        budget.check("steps", 10)
    with pytest.raises(LimitExceeded, match="budget of 100"):
        budget.check("steps", 1, "steps")


def test_the_server_refuses_a_linked_size_at_run_time(client):
    g = graph({"w": {"type": "int", "inputs": {"value": 100_000}},
               "img": {"type": "test.image_size", "inputs": {"width": ["w", "value"]}},
               "out": {"type": "show", "inputs": {"value": ["img", "value"]}}})
    response = client.post("/v1/runs?wait=true", json={"graph": g})
    run = response.json() if response.status_code == 200 else wait_final(client, response.json()["id"])
    assert run["status"] == "failed"
    assert run["error"]["node"] == "img"
    assert "width 100000 is over this server" not in run["error"]["message"]   # engine wording
    assert "input 'width': width 100000 is over the configured limit of 2048" in run["error"]["message"]


def test_comfyui_class_types_are_held_to_the_same_limits(tmp_path):
    from nodes.comfy import register

    registry = Registry()
    registry.load_module("nodes.primitives")
    register(registry)
    assert registry.get("EmptyLatentImage").input_limits == {
        "width": ("width", "pixels"), "height": ("height", "pixels"), "batch_size": ("batch",)}
    assert registry.get("KSampler").input_limits["steps"] == ("steps",)
    g = GraphBuilder(registry)
    g.add("show", value=g.add("EmptyLatentImage", node_id="empty", width=64, height=64,
                              batch_size=4096).out("LATENT"))
    error = run_limited(registry, tmp_path, g)
    assert error.node == "empty" and "batch 4096 is over" in error.message


@given(values=st.dictionaries(st.sampled_from(["a", "b", "c"]),
                              st.one_of(st.integers(0, 10_000), st.lists(st.integers(), max_size=20),
                                        st.none(), st.booleans(), st.text(max_size=3))),
       kinds=st.dictionaries(st.sampled_from(["a", "b", "c"]),
                             st.lists(st.sampled_from(["pixels", "batch"]), max_size=2, unique=True)),
       limit=st.integers(0, 100_000))
def test_a_node_is_refused_exactly_when_the_product_of_its_declared_inputs_is_over(values, kinds, limit):
    expected: dict[str, int] = {}
    for name, declared in kinds.items():
        value = values.get(name)
        amount = len(value) if isinstance(value, list) else (
            value if isinstance(value, int) and not isinstance(value, bool) else None)
        if amount is None:
            continue
        for kind in declared:
            expected[kind] = expected.get(kind, 1) * amount
    assert {k: a for k, (a, _) in input_amounts(kinds, values).items()} == expected
    refused = {e.kind for e in over_node_limits(kinds, values, Limits(per_node={"pixels": limit}))}
    assert refused == ({"pixels"} if expected.get("pixels", 0) > limit else set())
