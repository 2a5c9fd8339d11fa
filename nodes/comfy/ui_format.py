"""ComfyUI's UI format (what the editor saves) to its API format, as the editor's own export does.

- `widgets_values` are positional, in the order of the class type's widget inputs, with one
  extra value after a seed widget (the "control after generate" setting, e.g. "randomize")
  that is not an input. Some nodes save them as an object by name instead.
- Inputs fed by a link are in the node's `inputs` (a converted widget carries `widget: {name}`).
- Links are `[link_id, from_node, from_slot, to_node, to_slot, type]` (or objects with
  origin_id / origin_slot / target_id / target_slot in schema version 1).
- Muted nodes (mode 2) are dropped; bypassed nodes (mode 4) pass their input of the matching
  type through; Reroute and PrimitiveNode dissolve into direct links and literals; Note nodes
  and groups are ignored. Subgraphs are expanded into their nodes (`nodes.comfy.subgraphs`).
"""
from __future__ import annotations

from types import UnionType
from typing import Any, Union, get_args, get_origin

from engine.errors import GraphError, Problem
from engine.types import accepts_literal, strip_annotated
from engine.registry import Registry

from .subgraphs import expand_subgraphs
from .vocabulary import SEED_WIDGETS, UI_ONLY

MUTED, BYPASSED = 2, 4
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
PASS_THROUGH = {"Reroute"}
PRIMITIVES = {"PrimitiveNode"}


def is_ui_workflow(value: Any) -> bool:
    return isinstance(value, dict) and isinstance(value.get("nodes"), list) and "links" in value


def ui_to_api(workflow: dict, registry: Registry, source: str | None = None) -> dict:
    """The API prompt the editor would queue for this workflow."""
    problems: list[Problem] = []
    nodes = {}
    for raw in workflow.get("nodes", []):
        if isinstance(raw, dict) and "id" in raw and isinstance(raw.get("type"), str):
            nodes[raw["id"]] = raw
        else:
            problems.append(Problem("a UI node needs an 'id' and a 'type'", file=source))
    if problems:
        raise GraphError(problems)
    links = _links(workflow.get("links") or [])
    expand_subgraphs(nodes, links, (workflow.get("definitions") or {}).get("subgraphs") or [], source)

    def source_of(link_id: Any, want_type: str | None, seen: frozenset = frozenset()):
        """What a link delivers: ("link", node, slot), ("value", v) or None (muted/missing)."""
        if link_id is None or link_id not in links or link_id in seen:
            return None
        from_node, from_slot, link_type = links[link_id]
        raw = nodes.get(from_node)
        if raw is None or raw.get("mode") == MUTED:
            return None
        seen = seen | {link_id}
        if raw["type"] in PASS_THROUGH:
            inputs = raw.get("inputs") or []
            return source_of(inputs[0].get("link"), want_type, seen) if inputs else None
        if raw["type"] in PRIMITIVES:
            values = raw.get("widgets_values") or []
            return ("value", values[0]) if values else None
        if raw.get("mode") == BYPASSED:
            return source_of(_bypass_input(raw, from_slot, link_type), want_type, seen)
        return ("link", from_node, from_slot)

    prompt: dict[str, dict] = {}
    for node_id, raw in nodes.items():
        kind = raw["type"]
        if kind in UI_ONLY or kind in PASS_THROUGH or kind in PRIMITIVES or raw.get("mode") in (MUTED, BYPASSED):
            continue
        inputs = _widget_inputs(raw, registry.get(kind))
        for slot in raw.get("inputs") or []:
            if not isinstance(slot, dict) or slot.get("link") is None:
                continue
            found = source_of(slot["link"], slot.get("type"))
            name = (slot.get("widget") or {}).get("name") or slot.get("name")
            if found is None:
                inputs.pop(name, None) if not slot.get("widget") else None
                continue
            inputs[name] = [str(found[1]), found[2]] if found[0] == "link" else _api_value(found[1])
        node: dict[str, Any] = {"inputs": inputs, "class_type": kind}
        meta = {}
        if isinstance(raw.get("title"), str):
            meta["title"] = raw["title"]
        models = (raw.get("properties") or {}).get("models")
        if isinstance(models, list):
            meta["models"] = models   # where the editor says a missing model can be downloaded
        if meta:
            node["_meta"] = meta
        prompt[str(node_id)] = node
    return prompt


def _links(raw_links: list) -> dict[Any, tuple]:
    table = {}
    for link in raw_links:
        if isinstance(link, list) and len(link) >= 5:
            table[link[0]] = (link[1], link[2], link[5] if len(link) > 5 else None)
        elif isinstance(link, dict) and "id" in link:
            table[link["id"]] = (link.get("origin_id"), link.get("origin_slot"), link.get("type"))
    return table


def _bypass_input(raw: dict, slot: int, link_type: str | None) -> Any:
    """The link a bypassed node passes through for output `slot`: its input of the same type,
    the one at the same position first."""
    inputs = [i for i in raw.get("inputs") or [] if isinstance(i, dict)]
    outputs = raw.get("outputs") or []
    want = link_type or (outputs[slot].get("type") if slot < len(outputs) else None)
    if slot < len(inputs) and inputs[slot].get("type") == want:
        return inputs[slot].get("link")
    for candidate in inputs:
        if candidate.get("type") == want and candidate.get("link") is not None:
            return candidate.get("link")
    return None


def _widget_inputs(raw: dict, spec) -> dict[str, Any]:
    """The node's widget values by input name."""
    values = raw.get("widgets_values")
    if spec is None or values is None:
        return {}
    widgets = [name for name, i in spec.inputs.items() if is_widget(i)]
    if isinstance(values, dict):
        return {k: _api_value(v) for k, v in values.items() if k in widgets}
    out: dict[str, Any] = {}
    position = 0
    for index, name in enumerate(widgets):
        if position >= len(values):
            break
        out[name] = _api_value(values[position])
        position += 1
        if position < len(values) and _is_control_value(name, values[position], spec, widgets[index + 1:]):
            position += 1
    return out


def _api_value(value: Any) -> Any:
    """A widget value as the API format writes it: a list is wrapped, or it would read as a link."""
    return {"__value__": value} if isinstance(value, list) else value


def is_widget(input_spec) -> bool:
    """Whether ComfyUI shows this input as a widget (a value), not a socket: an optional model
    input accepts None as a literal but is still a socket."""
    tp = strip_annotated(input_spec.annotation)
    members = [m for m in get_args(tp) if m is not type(None)] if get_origin(tp) in (Union, UnionType) else [tp]
    return input_spec.literal and all(accepts_literal(m) for m in members)


def _is_control_value(name: str, value: Any, spec, following: list[str]) -> bool:
    """Whether `value` is the "control after generate" setting the editor saves after a seed."""
    if not isinstance(value, str) or value not in CONTROL_VALUES:
        return False
    if name in SEED_WIDGETS:
        return True
    if spec.inputs[name].port_type is not int:
        return False
    if not following:
        return True
    try:
        spec.inputs[following[0]].check_value(value)
        return False          # the next widget accepts it: it is that widget's value
    except ValueError:
        return True
