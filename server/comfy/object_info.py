"""`/object_info`: every registered node type described in ComfyUI's shape, from its declaration.

Nothing here is written per node: inputs, defaults, bounds, choices, outputs and their
order come from each node's `NodeSpec` (its signature and JSON Schema), so the editor
and code-generating clients see exactly what validation will accept. Port types get
ComfyUI's names where ComfyUI has one (`DiffusionModel` is `MODEL`, `TextEncoder` is
`CLIP`, ...) so Loom's nodes and the compatibility pack's connect to each other, and
an input also lists every output type the engine would accept on it (a subclass
output, such as a control hint, fits an `IMAGE` input).

Model-name inputs become choice lists of what the models folders hold; input-file
inputs list the input folder and get the editor's upload button.
"""
from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin

from engine import NodeSpec, Registry
from engine.types import is_assignable, strip_annotated
from nodes.comfy import COMFY_TYPES, is_comfy_class_type, is_widget

BUILTIN_TYPES = {"int": "INT", "float": "FLOAT", "str": "STRING", "bool": "BOOLEAN"}
SEED_INPUTS = frozenset({"seed", "noise_seed"})
MULTILINE_INPUTS = frozenset({"text", "prompt", "negative", "positive", "template"})
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
ANY_TYPE = "*"


def comfy_type_name(tp: Any) -> str:
    """ComfyUI's name for a port type: its known name, else the class name in upper snake case."""
    tp = strip_annotated(tp)
    if tp is Any or tp is object:
        return ANY_TYPE
    members = [m for m in get_args(tp) if m is not type(None)] if _is_union(tp) else None
    if members is not None:
        names = [comfy_type_name(m) for m in members]
        return ANY_TYPE if ANY_TYPE in names else ",".join(dict.fromkeys(names))
    name = getattr(tp, "__name__", None)
    if not isinstance(name, str) or getattr(tp, "__args__", None):
        return ANY_TYPE
    return COMFY_TYPES.get(name) or BUILTIN_TYPES.get(name) or re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, types.UnionType)


def _non_null(schema: dict) -> dict:
    """The one non-null branch of an `X | None` schema (else the schema itself)."""
    branches = [s for s in schema.get("anyOf", []) if s.get("type") != "null"]
    if len(branches) == 1:
        merged = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**branches[0], **merged}
    return schema


class ObjectInfo:
    """Builds the `/object_info` document for a registry.

    `models(kind)` lists model names and `input_files()` the input folder; both are
    called on each build, so a newly added model or upload shows up without a restart.
    """

    def __init__(self, registry: Registry, models: Callable[[str], list[str]],
                 input_files: Callable[[], list[str]]):
        self.registry = registry
        self.models = models
        self.input_files = input_files
        self._specs = list(registry)
        self._output_types = {tp for spec in self._specs for tp in spec.outputs.values()}

    def all(self) -> dict[str, dict]:
        return {spec.type: self.describe(spec) for spec in self._specs}

    def one(self, class_type: str) -> dict[str, dict]:
        spec = self.registry.get(class_type)
        return {class_type: self.describe(spec)} if spec is not None else {}

    def describe(self, spec: NodeSpec) -> dict:
        """Inputs keep their declared order (the order of the editor's widget values). A
        ComfyUI class type lists every input as required, as ComfyUI does, except sockets
        that may stay empty; Loom's nodes list inputs with a default as optional."""
        schema = spec.json_schema()["inputs"]["properties"]
        required: dict[str, list] = {}
        optional: dict[str, list] = {}
        comfy_class = is_comfy_class_type(spec)
        for name, ispec in spec.inputs.items():
            entry = self.input_entry(name, ispec, schema.get(name, {}))
            needed = ispec.required or (comfy_class and ispec.default is not None)
            (required if needed else optional)[name] = entry
        outputs = list(spec.outputs.items())
        return {
            "input": {"required": required, "optional": optional},
            "input_order": {"required": list(required), "optional": list(optional)},
            "output": [comfy_type_name(tp) for _, tp in outputs],
            "output_is_list": [False] * len(outputs),
            "output_name": [name for name, _ in outputs],
            "name": spec.type,
            "display_name": display_name(spec),
            "description": spec.description,
            "python_module": spec.fn.__module__,
            "category": category(spec),
            "output_node": spec.output_node,
            "output_tooltips": [""] * len(outputs),
        }

    def input_entry(self, name: str, ispec: Any, schema: dict) -> list:
        # A widget always sends a value; an input whose default is "nothing" (None) must be
        # able to send none, so it is a socket.
        if not is_widget(ispec) or (not ispec.required and ispec.default is None):
            accepted = self.accepted_types(ispec.port_type)
            if accepted in BUILTIN_TYPES.values():   # a value type shown as a socket
                return [accepted, {"forceInput": True, **_tooltip_options(schema)}]
            return [accepted] + _tooltip(schema)
        schema = _non_null(schema)
        options: dict[str, Any] = {}
        if "default" in schema and schema["default"] is not None:
            options["default"] = schema["default"]
        if schema.get("description"):
            options["tooltip"] = schema["description"]
        if "enum" in schema or "const" in schema:
            choices = list(schema.get("enum", [schema.get("const")]))
            return [choices, options]
        if "x-loom-model" in schema:
            return [self.models(schema["x-loom-model"]), options]
        if schema.get("x-loom-path") == "input":
            return [self.input_files(), {**options, "image_upload": True}]
        kind = schema.get("type")
        if kind == "integer":
            options.update(_bounds(schema, step=1))
            options.setdefault("default", options.get("min", 0))
            if name in SEED_INPUTS:
                options["control_after_generate"] = True
            return ["INT", options]
        if kind == "number":
            options.update(_bounds(schema, step=0.01))
            options.setdefault("default", options.get("min", 0.0))
            options["round"] = False
            return ["FLOAT", options]
        if kind == "boolean":
            options.setdefault("default", False)
            return ["BOOLEAN", options]
        if kind == "string":
            options.setdefault("default", "")
            options["multiline"] = name in MULTILINE_INPUTS
            return ["STRING", options]
        # Lists, objects, unions: no widget can edit them; they arrive over a link.
        return [self.accepted_types(ispec.port_type), options]

    def accepted_types(self, port_type: Any) -> str:
        """Every output type the engine would accept on this input, comma-separated (LiteGraph)."""
        own = comfy_type_name(port_type)
        if own == ANY_TYPE:
            return ANY_TYPE
        own_names = own.split(",")
        more = {comfy_type_name(tp) for tp in self._output_types
                if comfy_type_name(tp) != ANY_TYPE and is_assignable(tp, port_type)}
        return ",".join(own_names + sorted(more - set(own_names)))


def _bounds(schema: dict, step: float) -> dict:
    out: dict[str, Any] = {"step": step}
    if "minimum" in schema:
        out["min"] = schema["minimum"]
    elif "exclusiveMinimum" in schema:
        out["min"] = schema["exclusiveMinimum"] + (1 if step == 1 else 0)
    if "maximum" in schema:
        out["max"] = schema["maximum"]
    elif "exclusiveMaximum" in schema:
        out["max"] = schema["exclusiveMaximum"] - (1 if step == 1 else 0)
    if "multipleOf" in schema:
        out["step"] = schema["multipleOf"]
    return out


def _tooltip_options(schema: dict) -> dict:
    return {"tooltip": schema["description"]} if schema.get("description") else {}


def _tooltip(schema: dict) -> list:
    return [_tooltip_options(schema)] if schema.get("description") else []


def category(spec: NodeSpec) -> str:
    """ComfyUI class types keep ComfyUI's categories; Loom's nodes are grouped under `loom/`."""
    if is_comfy_class_type(spec):
        return spec.category.split("/", 1)[1]
    return f"loom/{spec.category}"


def display_name(spec: NodeSpec) -> str:
    """`encode_text` -> 'Encode Text'; ComfyUI class types are left as they are."""
    if is_comfy_class_type(spec):
        return spec.type
    return " ".join(part.capitalize() for part in re.split(r"[_.]", spec.type) if part)


def list_input_images(input_dir: Path) -> list[str]:
    """Images in the input folder (sub-folders as `sub/name`), for LoadImage-style choices."""
    if not input_dir.is_dir():
        return []
    root = input_dir.resolve()
    names = []
    for path in sorted(input_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
            try:
                names.append(path.resolve().relative_to(root).as_posix())
            except ValueError:   # a link pointing out of the folder is not offered
                continue
    return names
