"""Declaring nodes: inputs, outputs, schemas, registration through entry points."""
from typing import Annotated, Any, Literal, NamedTuple, Optional

import pytest
from pydantic import Field

from engine import Registry, node
from engine.types import is_assignable


class Animal:
    pass


class Cat(Animal):
    pass


class Two(NamedTuple):
    first: int
    second: Cat


@node("demo", category="test", version=3)
def demo(ctx, pet: Animal, count: Annotated[int, Field(ge=1, le=9, description="how many")] = 2,
         mode: Literal["fast", "slow"] = "fast", note: Optional[str] = None) -> Two:
    """Makes two things.

    Longer text."""
    return Two(count, Cat())


def test_signature_becomes_inputs_outputs_and_description():
    spec = demo.spec
    assert (spec.type, spec.version, spec.category, spec.wants_ctx) == ("demo", 3, "test", True)
    assert spec.description.startswith("Makes two things.")
    assert list(spec.inputs) == ["pet", "count", "mode", "note"]
    assert spec.inputs["pet"].required and not spec.inputs["pet"].literal
    assert spec.inputs["count"].default == 2 and spec.inputs["count"].literal
    assert list(spec.outputs) == ["first", "second"]


def test_json_schema_has_constraints_defaults_and_port_types():
    schema = demo.spec.json_schema()
    count = schema["inputs"]["properties"]["count"]
    assert (count["minimum"], count["maximum"], count["default"]) == (1, 9, 2)
    assert count["description"] == "how many"
    assert schema["inputs"]["properties"]["mode"]["enum"] == ["fast", "slow"]
    assert schema["inputs"]["properties"]["pet"]["x-loom-link-only"] is True
    assert schema["inputs"]["required"] == ["pet"]
    assert schema["outputs"] == {"first": "int", "second": "Cat"}


def test_single_output_names():
    @node("t1")
    def t1() -> Cat:
        return Cat()

    @node("t2")
    def t2() -> float:
        return 1.0

    @node("t3", output="image")
    def t3() -> Any:
        return None
    assert [list(f.spec.outputs) for f in (t1, t2, t3)] == [["cat"], ["value"], ["image"]]


@pytest.mark.parametrize("src, dst, ok", [
    (Cat, Animal, True), (Animal, Cat, False), (int, float, True), (float, int, False),
    (bool, int, True), (str, Optional[str], True), (Cat, Any, True), (Any, Cat, True),
    (str, Literal["a", "b"], True), (int, Literal["a"], False), (list[int], list[float], True),
    (list[str], list[int], False), (Optional[Cat], Animal, False),
])
def test_edge_rule_is_subclass_plus_int_to_float(src, dst, ok):
    assert is_assignable(src, dst) is ok


def test_registry_refuses_duplicates_and_non_nodes():
    r = Registry()
    r.register(demo)
    r.register(demo)  # the same declaration twice is harmless

    @node("demo")
    def other(x: int) -> int:
        return x
    with pytest.raises(ValueError, match="registered twice"):
        r.register(other)
    with pytest.raises(TypeError, match="not a node"):
        r.register(lambda: 1)


def test_default_registry_loads_the_builtin_pack_through_its_entry_point():
    registry = Registry.default()
    for type_id in ("int", "float", "string", "bool", "add", "multiply", "switch", "show", "retry"):
        assert type_id in registry
    assert all(entry["type"] for entry in registry.catalogue())


def test_custom_pack_registers_through_the_entry_point_group(monkeypatch):
    import engine.registry as registry_module

    class FakeEntryPoint:
        name = "demo-pack"

        def load(self):
            import sys
            return sys.modules[__name__]
    monkeypatch.setattr(registry_module, "entry_points", lambda group: [FakeEntryPoint()])
    r = Registry()
    r.load_entry_points()
    assert "demo" in r
