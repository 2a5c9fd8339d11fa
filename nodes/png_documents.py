"""PNGs as graph documents: the text chunks an image carries, and Loom's own `loom` chunk.

`save_image` embeds the graph that made an image in a `loom` text chunk, so
`loom run IMAGE.png` reruns it. Other packs read their own chunks through `png_text`
(the ComfyUI pack reads `prompt` / `workflow`), which parses each PNG once per document.
"""
from __future__ import annotations

import json

from engine.documents import Document, DocumentReader
from engine.errors import GraphError, Problem

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_text(document: Document) -> dict[str, str]:
    """The PNG's text chunks (tEXt, zTXt, iTXt) by keyword; {} for anything that is not a PNG."""
    if "png_text" not in document.memo:
        document.memo["png_text"] = _read_text_chunks(document.data)
    return document.memo["png_text"]


def _read_text_chunks(data: bytes) -> dict[str, str]:
    if not data.startswith(PNG_SIGNATURE):
        return {}
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()      # chunks after the image data are read with it
            return {k: v for k, v in getattr(image, "text", {}).items() if isinstance(v, str)}
    except (OSError, UnidentifiedImageError, SyntaxError):
        return {}


def png_json_chunk(document: Document, keyword: str):
    """The JSON value in the PNG text chunk `keyword`, or GraphError naming the chunk."""
    text = png_text(document).get(keyword)
    try:
        return json.loads(text)
    except (TypeError, json.JSONDecodeError) as exc:
        raise GraphError([Problem(f"the PNG's '{keyword}' text chunk is not valid JSON: {exc}",
                                  file=document.source)]) from None


def _is_loom_png(document: Document) -> bool:
    return "loom" in png_text(document)


def _read_loom_png(document: Document, registry) -> dict:
    return png_json_chunk(document, "loom")


LOOM_PNG = DocumentReader("loom-png", detect=_is_loom_png, read=_read_loom_png,
                          description="a PNG saved by Loom, with its graph in a 'loom' text chunk")
