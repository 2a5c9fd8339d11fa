"""A Loom graph drawn as a ComfyUI editor workflow (UI format), for the editor's default graph.

The editor's own default names models Loom does not ship, so `loom serve` offers
`graphs/txt2img.json` instead, laid out left to right by depth. Widget values are
positional in the order `/object_info` gives (required, then optional inputs), with the
editor's extra "control after generate" value after every seed widget; inputs that are
sockets carry the link ids. The result is what the editor itself would save.
"""
from __future__ import annotations

from typing import Any

import networkx as nx

WIDGET_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN"})
COLUMN_WIDTH, ROW_HEIGHT, NODE_WIDTH = 340, 220, 300


def is_widget(entry: list) -> bool:
    options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
    if options.get("forceInput"):
        return False
    return isinstance(entry[0], list) or entry[0] in WIDGET_TYPES


def ui_workflow(graph: dict, object_info: dict[str, dict]) -> dict:
    """The UI-format workflow of a Loom graph document whose node types are all in `object_info`."""
    nodes = graph["nodes"]
    numbers = {node_id: i + 1 for i, node_id in enumerate(nodes)}
    links: list[list] = []
    incoming: dict[tuple[str, str], int] = {}
    outgoing: dict[tuple[str, int], list[int]] = {}
    for node_id, body in nodes.items():
        for name, value in body.get("inputs", {}).items():
            if _is_link(value, nodes):
                source, output = value
                slot = object_info[nodes[source]["type"]]["output_name"].index(output)
                link_id = len(links) + 1
                links.append([link_id, numbers[source], slot, numbers[node_id], None, None])
                incoming[(node_id, name)] = link_id
                outgoing.setdefault((source, slot), []).append(link_id)
    positions = _layout(nodes)
    ui_nodes = []
    for order, (node_id, body) in enumerate(nodes.items()):
        info = object_info[body["type"]]
        inputs, widgets = [], []
        specs = {**info["input"]["required"], **info["input"].get("optional", {})}
        for name in info["input_order"]["required"] + info["input_order"].get("optional", []):
            entry = specs[name]
            link = incoming.get((node_id, name))
            if is_widget(entry):
                value = body.get("inputs", {}).get(name, entry[1].get("default") if len(entry) > 1 else None)
                if link is not None:
                    inputs.append({"name": name, "type": entry[0], "link": link, "widget": {"name": name}})
                widgets.append(value)
                if len(entry) > 1 and entry[1].get("control_after_generate"):
                    widgets.append("fixed")
            else:
                inputs.append({"name": name, "type": entry[0], "link": link})
        for slot, item in enumerate(inputs):
            if item["link"] is not None:
                links[item["link"] - 1][4] = slot
                links[item["link"] - 1][5] = item["type"]
        outputs = [{"name": name, "type": kind, "links": outgoing.get((node_id, slot), []),
                    "slot_index": slot}
                   for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
        ui_nodes.append({
            "id": numbers[node_id], "type": body["type"], "pos": positions[node_id],
            "size": [NODE_WIDTH, 60 + 26 * (len(inputs) + len(widgets))], "flags": {},
            "order": order, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"Node name for S&R": body["type"]}, "widgets_values": widgets,
            "title": (body.get("meta") or {}).get("title") or info["display_name"],
        })
    # An input's link type is the input's; the editor draws links in the output's type colour.
    for link in links:
        link[5] = ui_nodes[link[1] - 1]["outputs"][link[2]]["type"]
    return {"last_node_id": len(ui_nodes), "last_link_id": len(links), "nodes": ui_nodes,
            "links": links, "groups": [], "config": {}, "extra": {"ds": {"scale": 0.8, "offset": [40, 110]}},
            "version": 0.4}


def _is_link(value: Any, nodes: dict) -> bool:
    return (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
            and value[0] in nodes)


def _layout(nodes: dict) -> dict[str, list[int]]:
    """Columns by longest path from a source, rows in declaration order."""
    dag = nx.DiGraph()
    dag.add_nodes_from(nodes)
    for node_id, body in nodes.items():
        for value in body.get("inputs", {}).values():
            if _is_link(value, nodes):
                dag.add_edge(value[0], node_id)
    depth: dict[str, int] = {}
    for node_id in nx.topological_sort(dag):
        depth[node_id] = max((depth[p] + 1 for p in dag.predecessors(node_id)), default=0)
    rows: dict[int, int] = {}
    positions = {}
    for node_id in nodes:
        column = depth[node_id]
        row = rows.get(column, 0)
        rows[column] = row + 1
        positions[node_id] = [40 + column * COLUMN_WIDTH, 40 + row * ROW_HEIGHT]
    return positions
