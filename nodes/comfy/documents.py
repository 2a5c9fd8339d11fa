"""The ComfyUI document formats Loom reads and writes: API-format JSON, UI-format JSON, PNGs
with `prompt` / `workflow` text chunks (the prompt, exactly what ran, is preferred), and the
API format as an export target (`loom convert --to comfy-api`)."""
from __future__ import annotations

from engine.documents import Document, DocumentReader, DocumentWriter
from engine.errors import GraphError, Problem

from ..png_documents import png_json_chunk, png_text
from .api_format import export_api_prompt, is_api_prompt, read_api_prompt
from .ui_format import is_ui_workflow, ui_to_api


def _read_api(document: Document, registry) -> dict:
    return read_api_prompt(document.json, registry, document.source)[0]


def read_ui_workflow(workflow: dict, registry=None, source: str | None = None) -> tuple[dict, dict[str, str]]:
    """A UI-format workflow as (Loom graph document, ComfyUI node id -> Loom node id)."""
    if registry is None:
        from engine.registry import Registry

        registry = Registry.default()
    return read_api_prompt(ui_to_api(workflow, registry, source), registry, source)


def _read_ui(document: Document, registry) -> dict:
    return read_ui_workflow(document.json, registry, document.source)[0]


def _is_comfy_png(document: Document) -> bool:
    text = png_text(document)
    return "prompt" in text or "workflow" in text


def _read_png(document: Document, registry) -> dict:
    if "prompt" in png_text(document):
        prompt = png_json_chunk(document, "prompt")
        if is_api_prompt(prompt):
            return read_api_prompt(prompt, registry, document.source)[0]
    workflow = png_json_chunk(document, "workflow")
    if not is_ui_workflow(workflow):
        raise GraphError([Problem("the PNG's 'workflow' chunk is not a ComfyUI workflow",
                                  file=document.source)])
    return read_ui_workflow(workflow, registry, document.source)[0]


COMFY_API = DocumentReader("comfy-api", detect=lambda doc: is_api_prompt(doc.json), read=_read_api,
                           description="a ComfyUI workflow in API format")
COMFY_UI = DocumentReader("comfy-ui", detect=lambda doc: is_ui_workflow(doc.json), read=_read_ui,
                          description="a ComfyUI workflow as the editor saves it")
COMFY_PNG = DocumentReader("comfy-png", detect=_is_comfy_png, read=_read_png,
                           description="a PNG saved by ComfyUI (prompt / workflow text chunks)")
COMFY_API_WRITER = DocumentWriter("comfy-api", write=export_api_prompt,
                                  description="ComfyUI's API format (POST /prompt)")
