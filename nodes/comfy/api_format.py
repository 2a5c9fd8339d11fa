"""ComfyUI's API format (the `prompt` of POST /prompt) to a Loom graph document and back.

    {"3": {"class_type": "KSampler", "inputs": {"seed": 5, "model": ["4", 0], ...},
           "_meta": {"title": "KSampler"}}}

Node ids stay as they are (so errors and `loom explain` speak in ComfyUI's ids); a link
`[id, index]` becomes `[id, output name]` through the class type's output order; a list
literal written `{"__value__": [...]}` becomes the list. Inputs a class type does not
declare are ignored, as ComfyUI does. Every literal input becomes a param named
`<node id>.<input>`, and `<title>.<input>` for a title given to one node only, so
`loom run workflow.json --set 3.seed=7 --set "Positive.text=a cat"` works.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

from engine.errors import GraphError, Problem
from engine.graph import LITERAL_ESCAPE, Graph, Link
from engine.registry import Registry

from .vocabulary import REFUSED

COMFY_CATEGORY = "comfy/"


def is_api_prompt(value: Any) -> bool:
    return (isinstance(value, dict) and bool(value)
            and all(isinstance(n, dict) and isinstance(n.get("class_type"), str) for n in value.values()))


def _looks_like_link(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int))
            and not isinstance(value[0], bool) and isinstance(value[1], int) and not isinstance(value[1], bool))


def unknown_class_types(prompt: dict, registry: Registry) -> dict[str, list[str]]:
    """Class types the installed packs do not have -> the ids of the nodes that use them."""
    unknown: dict[str, list[str]] = {}
    for node_id, raw in prompt.items():
        if raw["class_type"] not in registry and raw["class_type"] not in REFUSED:
            unknown.setdefault(raw["class_type"], []).append(str(node_id))
    return unknown


def read_api_prompt(prompt: Any, registry: Registry | None = None,
                    source: str | None = None) -> tuple[dict, dict[str, str]]:
    """A ComfyUI API-format prompt as (Loom graph document, ComfyUI node id -> Loom node id).

    Raises GraphError: one problem listing every unknown class type with its node ids, then
    one per refused class type or bad link, each naming the node and input.
    """
    registry = registry if registry is not None else Registry.default()
    if not is_api_prompt(prompt):
        raise GraphError([Problem("a ComfyUI API prompt is an object of node id -> "
                                  "{\"class_type\": ..., \"inputs\": {...}}", file=source)])
    problems: list[Problem] = []
    unknown = unknown_class_types(prompt, registry)
    if unknown:
        listed = "; ".join(f"{t} (node{'s' if len(ids) > 1 else ''} {', '.join(ids)})"
                           for t, ids in sorted(unknown.items()))
        problems.append(Problem(f"unknown class types (custom nodes Loom does not have): {listed}",
                                file=source, hint="install a node pack that provides them, or "
                                                  "remove those nodes"))
    for node_id, raw in prompt.items():
        if raw["class_type"] in REFUSED:
            problems.append(Problem(f"{raw['class_type']}: {REFUSED[raw['class_type']]}",
                                    node=str(node_id), file=source))
    nodes: dict[str, dict] = {}
    for node_id, raw in prompt.items():
        node_id = str(node_id)
        spec = registry.get(raw["class_type"])
        if spec is None or raw["class_type"] in REFUSED:
            continue
        inputs: dict[str, Any] = {}
        raw_inputs = raw.get("inputs", {})
        if not isinstance(raw_inputs, dict):
            problems.append(Problem("'inputs' must be an object", node=node_id, file=source))
            continue
        for name, value in raw_inputs.items():
            if name not in spec.inputs:
                continue
            if _looks_like_link(value):
                inputs[name] = _link(prompt, registry, node_id, name, value, problems, source)
            elif isinstance(value, dict) and set(value) == {"__value__"}:
                inputs[name] = {LITERAL_ESCAPE: value["__value__"]}
            elif isinstance(value, list) or (isinstance(value, dict) and set(value) == {LITERAL_ESCAPE}):
                inputs[name] = {LITERAL_ESCAPE: value}
            elif isinstance(value, str) and value.endswith(ANNOTATIONS) and _is_input_file(spec.inputs[name]):
                inputs[name] = _input_file_name(value, node_id, name, problems, source)
            else:
                inputs[name] = value
        node: dict[str, Any] = {"type": raw["class_type"], "inputs": inputs}
        raw_meta = raw.get("_meta") or {}
        meta = {key: raw_meta[key] for key, kind in (("title", str), ("models", list))
                if isinstance(raw_meta.get(key), kind)}
        if meta:
            node["meta"] = meta
        nodes[node_id] = node
    if problems:
        raise GraphError(problems)
    return {"loom": 1, "params": _params(nodes), "nodes": nodes}, {str(i): str(i) for i in prompt}


# ComfyUI annotates a file name with the folder it was picked from: "cat.png [input]"
ANNOTATIONS = (" [input]", " [output]", " [temp]")


def _is_input_file(input_spec) -> bool:
    return input_spec.json_schema().get("x-loom-path") == "input"


def _input_file_name(value: str, node_id: str, name: str, problems: list[Problem], source: str | None) -> str:
    if value.endswith(" [input]"):
        return value.removesuffix(" [input]")
    problems.append(Problem(f"{value!r} names a file in ComfyUI's output or temp folder; Loom reads "
                            "images from the input folder", node=node_id, input=name, file=source,
                            hint="copy the image into the input folder and name it there"))
    return value


def _link(prompt: dict, registry: Registry, node_id: str, name: str, value: list,
          problems: list[Problem], source: str | None) -> list | None:
    src, index = str(value[0]), value[1]
    upstream = prompt.get(src, prompt.get(value[0]))
    if upstream is None:
        return [src, str(index)]          # validation names the missing node
    spec = registry.get(upstream["class_type"])
    if spec is None:
        return [src, str(index)]          # already listed as unknown
    outputs = list(spec.outputs)
    if not 0 <= index < len(outputs):
        problems.append(Problem(f"links to output {index} of node '{src}' ({upstream['class_type']}), "
                                f"which has {len(outputs)} output(s)", node=node_id, input=name, file=source))
        return None
    return [src, outputs[index]]


def _params(nodes: dict[str, dict]) -> dict[str, dict]:
    params: dict[str, dict] = {}
    titles = Counter(n.get("meta", {}).get("title") for n in nodes.values())
    for node_id, node in nodes.items():
        title = node.get("meta", {}).get("title")
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                continue                  # a link
            params[f"{node_id}.{name}"] = {"node": node_id, "input": name}
            if title and title != node["type"] and titles[title] == 1:
                params.setdefault(f"{title}.{name}", {"node": node_id, "input": name})
    return params


# -- Loom -> API --------------------------------------------------------------------------

def export_api_prompt(graph: Graph, registry: Registry | None = None) -> dict:
    """The graph as a ComfyUI API prompt. Every node must be a ComfyUI class type or a Loom node
    with a ComfyUI counterpart (load_checkpoint, encode_text, sample, ...) used the way that
    class type can express; GraphError names every node and input that is not."""
    from .counterparts import COUNTERPARTS, NoCounterpart, comfy_literals

    registry = registry if registry is not None else Registry.default()
    problems = []
    prompt: dict[str, dict] = {}

    def bad(message: str, node: str, input: str | None = None, hint: str | None = None) -> None:
        problems.append(Problem(message, node=node, input=input, hint=hint, file=graph.source))

    for node_id, entry in graph.nodes.items():
        spec = registry.get(entry.type)
        counterpart = COUNTERPARTS.get(entry.type)
        if spec is not None and spec.category.startswith(COMFY_CATEGORY):
            class_type, renames = entry.type, None
            literals = {k: v for k, v in entry.inputs.items() if not isinstance(v, Link)}
        elif counterpart is not None:
            class_type, renames = counterpart.class_type, counterpart.inputs
            try:
                literals = comfy_literals(counterpart, {k: v for k, v in entry.inputs.items()
                                                        if not isinstance(v, Link)})
            except NoCounterpart as exc:
                bad(str(exc), node_id, exc.input)
                continue
        else:
            bad(f"'{entry.type}' has no ComfyUI counterpart", node_id,
                hint="ComfyUI class types (the comfy node pack) and Loom's loaders, encode_text, "
                     "empty_latent, sample, vae_decode/encode, load/save_image export to comfy-api")
            continue
        inputs: dict[str, Any] = {k: {"__value__": v} if isinstance(v, list) else v for k, v in literals.items()}
        for name, value in entry.inputs.items():
            if not isinstance(value, Link):
                continue
            if renames is not None and name not in renames:
                bad(f"a linked '{name}' has no ComfyUI counterpart", node_id, name)
                continue
            if renames is not None and renames[name] is None:
                continue
            index = _output_index(graph, registry, value)
            if index is None:
                bad(f"links to output '{value.output}' of '{value.node}', which has no ComfyUI output",
                    node_id, name)
                continue
            inputs[renames[name] if renames is not None else name] = [value.node, index]
        node: dict[str, Any] = {"inputs": inputs, "class_type": class_type}
        meta = {key: value for key, value in (entry.meta or {}).items() if key in ("title", "models")}
        if meta:
            node["_meta"] = meta
        prompt[node_id] = node
    if problems:
        raise GraphError(problems)
    return prompt


def _output_index(graph: Graph, registry: Registry, link: Link) -> int | None:
    """ComfyUI's index of a Loom link's output (through the counterpart for a Loom node)."""
    from .counterparts import COUNTERPARTS

    upstream = graph.nodes.get(link.node)
    if upstream is None:
        return None
    output = link.output
    if upstream.type in COUNTERPARTS:
        output = COUNTERPARTS[upstream.type].outputs.get(output)
        spec = registry.get(COUNTERPARTS[upstream.type].class_type)
    else:
        spec = registry.get(upstream.type)
    outputs = list(spec.outputs) if spec is not None else []
    return outputs.index(output) if output in outputs else None


# -- Loom problems -> ComfyUI's per-node errors ------------------------------------------------

def node_errors(error: GraphError, prompt: dict | None = None,
                id_map: dict[str, str] | None = None) -> dict[str, dict]:
    """ComfyUI's `node_errors` for POST /prompt's 400 answer: ComfyUI node id ->
    {"errors": [{type, message, details, extra_info}], "dependent_outputs": [], "class_type"}.
    Problems not tied to one node are left to the caller's top-level error."""
    to_comfy = {loom: comfy for comfy, loom in (id_map or {}).items()}
    out: dict[str, dict] = {}
    for problem in error.problems:
        if problem.node is None:
            continue
        comfy_id = to_comfy.get(problem.node, problem.node)
        class_type = ((prompt or {}).get(comfy_id) or {}).get("class_type", "")
        entry = out.setdefault(comfy_id, {"errors": [], "dependent_outputs": [], "class_type": class_type})
        details = f"{problem.input}: {problem.message}" if problem.input else problem.message
        entry["errors"].append({
            "type": "value_not_valid" if problem.input else "invalid_node",
            "message": problem.message + (f" ({problem.hint})" if problem.hint else ""),
            "details": details,
            "extra_info": {"input_name": problem.input} if problem.input else {}})
    return out
