"""ComfyUI compatibility: ComfyUI's core class types as Loom nodes, and its workflow formats.

Registered through its own `loom.nodes` entry point (`comfy = "nodes.comfy:register"`).
Every class type keeps ComfyUI's input names, defaults, ranges, choices and output order,
and runs by calling Loom's own node functions (one sampler, one loader, one encoder). A
ComfyUI workflow becomes an ordinary Loom graph of these nodes, so validation, the cache and
`loom explain` work on it unchanged, in ComfyUI's node ids.

Public interface (for the CLI, `server/comfy/` and tests):

    read_api_prompt(prompt, registry=None, source=None) -> (loom_document, id_map)
        A ComfyUI API-format prompt (POST /prompt's `prompt`) as a Loom graph document and
        ComfyUI node id -> Loom node id (identical today). Raises GraphError: one problem
        listing every unknown class type with its node ids, one per refused class type or
        bad link.
    read_ui_workflow(workflow, registry=None, source=None) -> (loom_document, id_map)
        The same for the editor's saved (UI) format.
    ui_to_api(workflow, registry, source=None) -> prompt
        The API prompt the editor itself would queue for a UI workflow.
    export_api_prompt(graph, registry=None) -> prompt
        A Loom graph of ComfyUI class types as an API prompt (GraphError names other nodes).
    node_errors(graph_error, prompt=None, id_map=None) -> {comfy_id: {errors, dependent_outputs, class_type}}
        Loom validation problems as ComfyUI's per-node `node_errors`.
    unknown_class_types(prompt, registry) -> {class_type: [node ids]}
    SAMPLERS, SCHEDULES: ComfyUI sampler / scheduler names Loom runs -> Loom's names.
    COMFY_TYPES: Loom port class name -> ComfyUI socket type (MODEL, CLIP, ...).
    is_comfy_class_type(spec): whether a node type is one of this pack's class types.
    is_widget(input_spec): whether ComfyUI shows an input as a widget (a value) rather than a
        socket; widgets in `spec.inputs` order are the order of `widgets_values`, and the
        inputs' order is ComfyUI's `input_order`.

Document readers (`comfy-api`, `comfy-ui`, `comfy-png`) and the `comfy-api` writer are
registered with the node types, so `loom run/validate/explain/convert` take ComfyUI files.
"""
from __future__ import annotations

import importlib

from .api_format import COMFY_CATEGORY, export_api_prompt, node_errors, read_api_prompt, unknown_class_types
from . import documents
from .documents import read_ui_workflow
from .ui_format import is_widget, ui_to_api
from .vocabulary import COMFY_TYPES, SAMPLERS, SCHEDULES

CLASS_TYPE_MODULES = ("loaders", "conditioning", "latent_image", "flow_families")

__all__ = ["COMFY_TYPES", "SAMPLERS", "SCHEDULES", "export_api_prompt", "is_comfy_class_type",
           "is_widget", "node_errors", "read_api_prompt", "read_ui_workflow", "register", "ui_to_api",
           "unknown_class_types"]


def is_comfy_class_type(spec) -> bool:
    return spec.category.startswith(COMFY_CATEGORY)


def register(registry) -> None:
    """Register the class types, the ComfyUI document readers and the API-format writer."""
    for name in CLASS_TYPE_MODULES:
        registry.load_module(importlib.import_module(f"{__name__}.{name}"))
    for reader in (documents.COMFY_API, documents.COMFY_UI, documents.COMFY_PNG):
        registry.register_reader(reader)
    registry.register_writer(documents.COMFY_API_WRITER)
