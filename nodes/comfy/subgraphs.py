"""Expanding the editor's subgraphs into the nodes they hold, as the editor does when it queues.

A subgraph is defined once (`definitions.subgraphs[]`: its inputs, outputs, nodes and links,
with the link ends -10 for "the instance's input i" and -20 for "the instance's output j")
and used by nodes whose `type` is its id. Each use becomes copies of the inner nodes, with
ids `<instance id>:<inner id>` (ComfyUI's own ids for them), wired to what feeds the
instance; an input the instance shows as a widget passes its value (as a PrimitiveNode
would). Nested subgraphs expand in turn; muted instances are dropped and bypassed ones are
left to the bypass rule.
"""
from __future__ import annotations

from typing import Any

from engine.errors import GraphError, Problem

INSTANCE_INPUT, INSTANCE_OUTPUT = -10, -20
MAX_DEPTH = 16


def expand_subgraphs(nodes: dict[Any, dict], links: dict[Any, tuple], definitions: list,
                     source: str | None = None) -> None:
    """Replace every subgraph instance in `nodes` (id -> UI node) by its inner nodes, rewriting
    `links` (id -> (from node, from slot, type)) to match. Both are changed in place."""
    defs = {d["id"]: d for d in definitions if isinstance(d, dict) and "id" in d}
    for _ in range(MAX_DEPTH):
        instances = [n for n in nodes.values() if n["type"] in defs and n.get("mode") != 4]
        if not instances:
            return
        for instance in instances:
            if instance.get("mode") == 2:
                del nodes[instance["id"]]
            else:
                _expand(instance, defs[instance["type"]], nodes, links)
    raise GraphError([Problem(f"subgraphs nest deeper than {MAX_DEPTH} levels (or contain themselves)",
                              file=source)])


def _inner_links(definition: dict) -> dict[Any, tuple]:
    table = {}
    for link in definition.get("links") or []:
        if isinstance(link, dict):
            table[link["id"]] = (link["origin_id"], link["origin_slot"], link["target_id"],
                                 link["target_slot"], link.get("type"))
        elif isinstance(link, list) and len(link) >= 5:
            table[link[0]] = (link[1], link[2], link[3], link[4], link[5] if len(link) > 5 else None)
    return table


def _expand(instance: dict, definition: dict, nodes: dict, links: dict) -> None:
    prefix = f"{instance['id']}:"
    inner = _inner_links(definition)
    fed = _instance_inputs(instance, definition)
    del nodes[instance["id"]]

    def new_id(inner_id: Any) -> str:
        return f"{prefix}{inner_id}"

    for index, feed in list(fed.items()):
        if isinstance(feed, tuple):             # a widget value: held by a PrimitiveNode
            holder, link_id = new_id(f"input{index}"), new_id(f"input{index}_link")
            nodes[holder] = {"id": holder, "type": "PrimitiveNode", "mode": 0, "widgets_values": [feed[1]]}
            links[link_id] = (holder, 0, None)
            fed[index] = link_id

    for raw in definition.get("nodes") or []:
        node = {**raw, "id": new_id(raw["id"]), "inputs": []}
        for slot in raw.get("inputs") or []:
            slot = dict(slot)
            link = inner.get(slot.get("link"))
            if link is not None and link[0] == INSTANCE_INPUT:
                slot["link"] = fed.get(link[1])
            elif link is not None:
                slot["link"] = new_id(f"link{slot['link']}")
                links[slot["link"]] = (new_id(link[0]), link[1], link[4])
            node["inputs"].append(slot)
        nodes[node["id"]] = node
    # what the instance's outputs fed now comes from the inner node wired to that output
    for link_id, (from_node, from_slot, link_type) in list(links.items()):
        if from_node != instance["id"]:
            continue
        origin = next((l for l in inner.values() if l[2] == INSTANCE_OUTPUT and l[3] == from_slot), None)
        if origin is None:
            del links[link_id]
        elif origin[0] == INSTANCE_INPUT:      # an input passed straight through
            through = fed.get(origin[1])
            if through in links:
                links[link_id] = links[through]
            else:
                del links[link_id]
        else:
            links[link_id] = (new_id(origin[0]), origin[1], link_type)


def _instance_inputs(instance: dict, definition: dict) -> dict[int, Any]:
    """Subgraph input slot -> the link that feeds it: the instance's own link, or a link from a
    PrimitiveNode-like source holding the instance's widget value."""
    names = [i.get("name") for i in definition.get("inputs") or []]
    values = instance.get("widgets_values") or []
    widget_values = iter(values if isinstance(values, list) else [])
    fed: dict[int, Any] = {}
    for slot in instance.get("inputs") or []:
        value = next(widget_values, None) if slot.get("widget") else None
        if slot.get("name") not in names:
            continue
        index = names.index(slot["name"])
        if slot.get("link") is not None:
            fed[index] = slot["link"]
        elif slot.get("widget") and value is not None:
            fed[index] = ("widget", value)
    return fed
