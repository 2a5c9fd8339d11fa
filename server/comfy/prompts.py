"""ComfyUI's API-format prompt in, a Loom graph out; Loom's problems back in ComfyUI's error shape.

A prompt is `{node_id: {"class_type", "inputs", "_meta"?}}`, where an input is a literal or
a link `[source_id, output_index]`. Every class type is a registered Loom node type (the
compatibility pack's ComfyUI class types, or Loom's own nodes as `/object_info` shows
them), so the graph keeps the prompt's node ids and a link's output index is the
position of that output in the source node's declaration (the order `/object_info`
lists). Problems name the ComfyUI node id, which is the Loom node id.

What the editor sends besides the prompt (the UI workflow, the client id) travels in the
graph's `meta.comfy`, which the run store keeps with the run: history and the websocket
read it back from there, and the save node writes `prompt` and `workflow` into the PNG.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any

from engine import GraphError, Problem, Registry

COMFY_META = "comfy"


def read_prompt(prompt: Any, registry: Registry) -> dict:
    """The Loom graph document for an API-format prompt; GraphError listing every problem."""
    if not isinstance(prompt, dict) or not prompt:
        raise GraphError([Problem("'prompt' must be a non-empty object of nodes "
                                  "{id: {class_type, inputs}}")])
    problems: list[Problem] = []
    nodes: dict[str, dict] = {}
    for node_id, body in prompt.items():
        if not isinstance(body, dict) or not isinstance(body.get("class_type"), str):
            problems.append(Problem("a node needs a 'class_type' (string) and 'inputs' (object)",
                                    node=node_id))
            continue
        class_type = body["class_type"]
        if registry.get(class_type) is None:
            close = registry.suggest(class_type)
            problems.append(Problem(f"Cannot execute because node {class_type} does not exist.",
                                    node=node_id,
                                    hint=f"did you mean {', '.join(close)}?" if close else None))
            continue
        inputs = body.get("inputs", {})
        if not isinstance(inputs, dict):
            problems.append(Problem("'inputs' must be an object", node=node_id))
            continue
        converted = {}
        for name, value in inputs.items():
            try:
                converted[name] = _input_value(value, prompt, registry)
            except ValueError as exc:
                problems.append(Problem(str(exc), node=node_id, input=name))
        entry: dict[str, Any] = {"type": class_type, "inputs": converted}
        title = (body.get("_meta") or {}).get("title") if isinstance(body.get("_meta"), dict) else None
        if title:
            entry["meta"] = {"title": title}
        nodes[str(node_id)] = entry
    if problems:
        raise GraphError(problems)
    return {"loom": 1, "params": {}, "nodes": nodes}


def _input_value(value: Any, prompt: dict, registry: Registry) -> Any:
    if _is_comfy_link(value):
        source_id, index = str(value[0]), value[1]
        source = prompt.get(source_id)
        if not isinstance(source, dict):
            raise ValueError(f"links to node '{source_id}', which is not in the prompt")
        spec = registry.get(source.get("class_type"))
        if spec is None:
            raise ValueError(f"links to node '{source_id}', whose class type is unknown")
        outputs = list(spec.outputs)
        if not 0 <= index < len(outputs):
            raise ValueError(f"links to output {index} of node '{source_id}' "
                             f"({source['class_type']} has {len(outputs)} outputs)")
        return [source_id, outputs[index]]
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return {"$literal": value}      # would otherwise read as a Loom link
    return value


def _is_comfy_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int)
            and not isinstance(value[1], bool))


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

def prompt_error(exc: GraphError, prompt: Any, outputs: list[str] = ()) -> dict:
    """The 400 body for a refused prompt: every problem, grouped under its node id.

    `outputs` are the prompt's output node ids; each node's entry lists those that need it.
    """
    classes = {str(k): v.get("class_type") for k, v in prompt.items()
               if isinstance(v, dict)} if isinstance(prompt, dict) else {}
    node_errors: dict[str, dict] = defaultdict(lambda: {"errors": [], "dependent_outputs": [],
                                                        "class_type": None})
    general: list[Problem] = []
    unknown = [p for p in exc.problems if p.message.startswith("Cannot execute because node")]
    for problem in exc.problems:
        if problem.node is None or problem.node not in classes or problem in unknown:
            general.append(problem)
            continue
        entry = node_errors[problem.node]
        entry["class_type"] = classes[problem.node]
        entry["errors"].append(_error_item(problem))
    for node_id, entry in node_errors.items():
        entry["dependent_outputs"] = [o for o in outputs if o == node_id
                                      or node_id in _upstream(prompt, o)]
    details = "; ".join(str(p) for p in exc.problems)
    if unknown:
        error = {"type": "invalid_prompt", "message": unknown[0].message,
                 "details": "; ".join(f"Node ID '#{p.node}': {p.message}" for p in unknown),
                 "extra_info": {}}
    elif general:
        error = {"type": "invalid_prompt", "message": general[0].message, "details": details,
                 "extra_info": {}}
    else:
        error = {"type": "prompt_outputs_failed_validation",
                 "message": "Prompt outputs failed validation", "details": details,
                 "extra_info": {}}
    return {"error": error, "node_errors": dict(node_errors)}


def _upstream(prompt: dict, node_id: str) -> set[str]:
    seen: set[str] = set()
    todo = [node_id]
    while todo:
        body = prompt.get(todo.pop())
        for value in (body.get("inputs") or {}).values() if isinstance(body, dict) else ():
            if _is_comfy_link(value) and str(value[0]) not in seen:
                seen.add(str(value[0]))
                todo.append(str(value[0]))
    return seen


def _error_item(problem: Problem) -> dict:
    message = problem.message
    # Types the editor knows; "custom_validation_failed" shows our details as they are.
    kind = ("required_input_missing" if message.startswith("missing required input")
            else "custom_validation_failed")
    details = f"{problem.input}: {message}" if problem.input else message
    if problem.hint:
        details += f" ({problem.hint})"
    return {"type": kind, "message": message, "details": details,
            "extra_info": {"input_name": problem.input} if problem.input else {}}
