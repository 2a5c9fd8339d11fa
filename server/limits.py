"""What a submitted graph may ask of this server, checked before it is queued.

The engine validates that a graph makes sense; this checks that it is reasonable to
run here: how many nodes, how large an image, how many steps, how big a batch, and
that every file name it carries stays inside the folder it names. Problems come back
as the engine's `Problem` values, so a refusal reads like any validation error.

Inputs are recognised by name (`width`, `steps`, `batch_size`, `max_tries`, `scale`,
`values` of a batch, ...) on any node type,
with params applied first, so a node pack cannot slip past a limit by a new type id.
A node may also mark a string input as a path with `x-loom-path` in its input schema
(`"input"`, `"output"`); the well-known names below are covered either way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from engine.errors import Problem
from engine.paths import UnsafePath, contained

from .config import GraphLimits

WIDTH_INPUTS = frozenset({"width"})
HEIGHT_INPUTS = frozenset({"height"})
STEPS_INPUTS = frozenset({"steps"})
BATCH_INPUTS = frozenset({"batch", "batch_size"})
REPEAT_INPUTS = frozenset({"max_tries"})          # how many times a sub-graph may rerun
REPEAT_LIST_INPUTS = frozenset({"values"})        # one sub-graph run per item
SCALE_INPUTS = frozenset({"scale", "upscale_by", "scale_by"})
# String inputs that name a file; checked against the folder they are read from or written to.
OUTPUT_PATH_INPUTS = frozenset({"prefix", "filename_prefix", "save_prefix", "subfolder"})
INPUT_PATH_INPUTS = frozenset({"image", "mask", "path", "file", "filename", "name", "image_name",
                               "ckpt_name", "lora_name", "model_name", "control_net_name", "vae_name",
                               "blocklist"})


def is_link(value: Any, node_ids: Iterable[str]) -> bool:
    return (isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value)
            and value[0] in node_ids)


def effective_literals(graph: dict, params: dict) -> dict[str, dict[str, Any]]:
    """{node_id: {input: literal}} with params applied; links left out."""
    nodes = graph.get("nodes") if isinstance(graph.get("nodes"), dict) else {}
    literals: dict[str, dict[str, Any]] = {}
    for node_id, body in nodes.items():
        inputs = body.get("inputs") if isinstance(body, dict) else None
        literals[node_id] = {k: v for k, v in (inputs or {}).items()
                             if isinstance(inputs, dict) and not is_link(v, nodes)}
    declared = graph.get("params") if isinstance(graph.get("params"), dict) else {}
    for name, value in (params or {}).items():
        target = declared.get(name)
        if isinstance(target, dict) and target.get("node") in literals:
            literals[target["node"]][str(target.get("input"))] = value
    return literals


def too_many_nodes(graph: dict, limits: GraphLimits) -> Problem | None:
    """Checked first and alone: a graph this large is not worth validating."""
    nodes = graph.get("nodes")
    if isinstance(nodes, dict) and len(nodes) > limits.max_nodes:
        return Problem(f"the graph has {len(nodes)} nodes; this server runs at most "
                       f"{limits.max_nodes}", hint="split the work or raise --max-nodes")
    return None


def check_graph(graph: dict, params: dict, limits: GraphLimits, *, input_dir: Path,
                output_dir: Path, path_inputs: dict[str, dict[str, str]] | None = None) -> list[Problem]:
    """Every way `graph` (with `params`) exceeds `limits` or escapes a folder; [] when fine.

    `path_inputs` is {node_type: {input: "input" | "output"}} from node schemas.
    """
    problems: list[Problem] = []
    nodes = graph.get("nodes") if isinstance(graph.get("nodes"), dict) else {}
    path_inputs = path_inputs or {}
    for node_id, inputs in effective_literals(graph, params).items():
        node_type = nodes[node_id].get("type") if isinstance(nodes[node_id], dict) else None
        marked = path_inputs.get(node_type, {}) if isinstance(node_type, str) else {}

        def over(name: str, value: Any, limit: float, what: str, node_id: str = node_id) -> None:
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value > limit:
                problems.append(Problem(f"{what} {value} is over this server's limit of {limit}",
                                        node=node_id, input=name,
                                        hint=f"use at most {limit}"))

        width = height = None
        for name, value in inputs.items():
            if name in WIDTH_INPUTS:
                over(name, value, limits.max_width, "width")
                width = value
            elif name in HEIGHT_INPUTS:
                over(name, value, limits.max_height, "height")
                height = value
            elif name in STEPS_INPUTS:
                over(name, value, limits.max_steps, "steps")
            elif name in BATCH_INPUTS:
                over(name, value, limits.max_batch, "batch size")
            elif name in REPEAT_INPUTS:
                over(name, value, limits.max_repeats, "repeat count")
            elif name in REPEAT_LIST_INPUTS and isinstance(value, list):
                over(name, len(value), limits.max_repeats, "number of values")
            elif name in SCALE_INPUTS:
                over(name, value, limits.max_scale, "scale factor")
            kind = marked.get(name) or ("output" if name in OUTPUT_PATH_INPUTS
                                        else "input" if name in INPUT_PATH_INPUTS else None)
            if kind is not None and isinstance(value, str):
                base = output_dir if kind == "output" else input_dir
                try:
                    contained(base, value)
                except UnsafePath as exc:
                    problems.append(Problem(f"file name refused: {exc}", node=node_id, input=name,
                                            hint="use a plain relative name inside the "
                                                 f"{kind} folder"))
        if (isinstance(width, int) and isinstance(height, int) and width * height > limits.max_pixels
                and width <= limits.max_width and height <= limits.max_height):
            problems.append(Problem(f"{width}x{height} is {width * height} pixels; this server's "
                                    f"limit is {limits.max_pixels}", node=node_id, input="width",
                                    hint="use a smaller image"))
    return problems


def path_inputs_of(catalogue: list[dict]) -> dict[str, dict[str, str]]:
    """{node_type: {input: kind}} for inputs whose schema says `x-loom-path`."""
    found: dict[str, dict[str, str]] = {}
    for entry in catalogue:
        props = entry.get("inputs", {}).get("properties", {})
        marked = {name: s["x-loom-path"] for name, s in props.items()
                  if isinstance(s, dict) and s.get("x-loom-path") in ("input", "output")}
        if marked:
            found[entry["type"]] = marked
    return found
