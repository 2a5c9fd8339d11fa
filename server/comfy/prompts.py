"""ComfyUI's API-format prompt in, a Loom graph out; Loom's problems back in ComfyUI's error shape.

A prompt is `{node_id: {"class_type", "inputs", "_meta"?}}`, where an input is a literal or
a link `[source_id, output_index]`. The compatibility pack reads it (`nodes.comfy`): every
class type is a registered Loom node type (ComfyUI's core class types, or Loom's own nodes
as `/object_info` shows them), node ids stay as they are and a link's output index is the
position of that output in the source node's declaration. Problems name the ComfyUI node
id, which is the Loom node id.

What the editor sends besides the prompt (the UI workflow, the client id) travels in the
graph's `meta.comfy`, which the run store keeps with the run: history and the websocket
read it back from there, and the save node writes `prompt` and `workflow` into the PNG.
"""
from __future__ import annotations

from typing import Any

from engine import GraphError, Registry
from nodes.comfy import node_errors, read_api_prompt, unknown_class_types
from nodes.comfy.api_format import is_api_prompt

from ..limits import is_link

COMFY_META = "comfy"


def read_prompt(prompt: Any, registry: Registry) -> dict:
    """The Loom graph document for an API-format prompt; GraphError listing every problem."""
    graph, _ = read_api_prompt(prompt, registry)     # ComfyUI's node ids are kept as they are
    return graph


def attach_request(graph: dict, *, prompt: dict, prompt_id: str, client_id: str | None,
                   extra_data: dict) -> dict:
    """The graph with what the run's ComfyUI views need later (kept with the run)."""
    pnginfo = extra_data.get("extra_pnginfo") if isinstance(extra_data, dict) else None
    workflow = pnginfo.get("workflow") if isinstance(pnginfo, dict) else None
    comfy = {"prompt_id": prompt_id, "client_id": client_id, "prompt": prompt}
    if workflow is not None:
        comfy["workflow"] = workflow
    return {**graph, "meta": {**(graph.get("meta") or {}), COMFY_META: comfy}}


def comfy_meta(graph: dict) -> dict:
    meta = graph.get("meta") if isinstance(graph, dict) else None
    comfy = meta.get(COMFY_META) if isinstance(meta, dict) else None
    return comfy if isinstance(comfy, dict) else {}


# -- errors in ComfyUI's shape ------------------------------------------------------------

def prompt_error(exc: GraphError, prompt: Any, registry: Registry, graph: dict | None = None,
                 outputs: list[str] = ()) -> dict:
    """The 400 body for a refused prompt: every problem, grouped under its node id.

    `graph` is the prompt read as a Loom graph (None when it could not be read) and
    `outputs` its output node ids; each node's entry lists the outputs that need it.
    """
    prompt = prompt if isinstance(prompt, dict) else {}
    errors = node_errors(exc, prompt)
    for node_id, entry in errors.items():
        entry["dependent_outputs"] = [o for o in outputs
                                      if o == node_id or node_id in _upstream(graph or {}, o)]
        for item in entry["errors"]:
            item["type"] = _editor_error_type(item)
    general = [p for p in exc.problems if p.node is None or p.node not in errors]
    details = "; ".join(str(p) for p in exc.problems)
    unknown = unknown_class_types(prompt, registry) if is_api_prompt(prompt) else {}
    if unknown:
        class_type, ids = next(iter(unknown.items()))
        error = {"type": "invalid_prompt",
                 "message": f"Cannot execute because node {class_type} does not exist.",
                 "details": "; ".join(f"Node ID '#{i}': {t}" for t, found in unknown.items() for i in found),
                 "extra_info": {}}
    elif general:
        error = {"type": "invalid_prompt", "message": str(general[0]), "details": details,
                 "extra_info": {}}
    else:
        error = {"type": "prompt_outputs_failed_validation",
                 "message": "Prompt outputs failed validation", "details": details, "extra_info": {}}
    return {"error": error, "node_errors": errors}


def _editor_error_type(item: dict) -> str:
    """A type the editor knows, so it shows our message ("custom_validation_failed" shows
    the details as they are)."""
    if item["message"].startswith("missing required input"):
        return "required_input_missing"
    return "custom_validation_failed"


def _upstream(graph: dict, node_id: str) -> set[str]:
    """Every node `node_id` depends on in a Loom graph document."""
    nodes = graph.get("nodes") or {}
    seen: set[str] = set()
    todo = [node_id]
    while todo:
        for value in (nodes.get(todo.pop()) or {}).get("inputs", {}).values():
            if is_link(value, nodes) and value[0] not in seen:
                seen.add(value[0])
                todo.append(value[0])
    return seen
