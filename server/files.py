"""Files in and out: uploaded images (checked, re-encoded, stored atomically) and run outputs.

Uploads: only PNG, JPEG and WebP are accepted, sniffed from the bytes (never from the
name or the client's content type); the pixel count is checked from the header before
any decoding (decompression bombs), the first frame is decoded and re-encoded as PNG,
which drops metadata and anything smuggled after the image data. The stored name is
the content hash, so names never collide and the same image uploaded twice is one file.

Outputs: a run's output values become JSON for its record. Values of outputs its nodes
declare as files they wrote (`engine.types.OutputFiles`), when they are files under the
output folder, become `{"file": <name>, "url": ...}` and may be downloaded; other
JSON values are kept inline up to a size; anything else (tensors, models) is described
by its type and shape.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

from engine.files import atomic_write
from engine.paths import UnsafePath, contained

UPLOAD_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
MAX_INLINE_JSON = 64 * 1024

# What a downloaded output is served as; anything else is an attachment of raw bytes.
OUTPUT_CONTENT_TYPES = {
    ".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp",
    ".json": "application/json", ".txt": "text/plain; charset=utf-8",
}


class UploadRejected(ValueError):
    pass


@dataclass(frozen=True)
class StoredImage:
    name: str       # what a load-image node takes as its file name
    width: int
    height: int
    format: str     # as sniffed from the upload
    bytes: int      # size stored


def store_uploaded_image(data: bytes, input_dir: Path, *, max_pixels: int) -> StoredImage:
    """Check and re-encode an uploaded image; store it under `input_dir`."""
    from PIL import Image

    # Image.open reads only the header, so the pixel count is checked before any decoding.
    # No warnings filter is changed here: filters are process-wide, and uploads are stored
    # from a thread pool.
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        if fmt not in UPLOAD_FORMATS:
            raise UploadRejected(f"only PNG, JPEG and WebP images are accepted (got "
                                 f"{fmt or 'an unknown format'})")
        width, height = img.size
        if width * height > max_pixels:
            raise UploadRejected(f"image is {width}x{height} = {width * height} pixels; "
                                 f"the limit is {max_pixels}")
        img.seek(0)
        img.load()
    except UploadRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise UploadRejected(f"image refused as a decompression bomb: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise UploadRejected(f"not a readable image: {exc}") from None
    if img.mode not in ("RGB", "RGBA", "L", "LA"):
        img = img.convert("RGBA" if "A" in img.getbands() or "transparency" in img.info else "RGB")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    encoded = buffer.getvalue()
    name = f"upload-{hashlib.sha256(encoded).hexdigest()[:24]}.png"
    target = contained(input_dir, name)
    if not target.exists():
        atomic_write(target, encoded, durable=True)
    return StoredImage(name=name, width=width, height=height, format=fmt, bytes=len(encoded))


def describe_outputs(outputs: dict[str, dict[str, Any]], output_dir: Path, url_for: Any, *,
                     file_outputs: dict[str, Collection[str]]) -> tuple[dict, list[str]]:
    """(JSON-able outputs, names of output files) for a run record.

    `file_outputs` is {node id: names of its outputs declared as files it wrote}
    (`NodeSpec.file_outputs`); only their values become downloadable files, and only when
    they are files inside the output folder. `url_for(name)` gives a file's download URL.
    """
    files: list[str] = []
    root = Path(output_dir).resolve()

    def as_file(value: Any) -> dict | None:
        if isinstance(value, (str, os.PathLike)) and len(str(value)) < 4096:
            try:
                path = Path(value)
                path = (path if path.is_absolute() else root / path).resolve()
                if root in path.parents and path.is_file():
                    name = path.relative_to(root).as_posix()
                    files.append(name)
                    return {"file": name, "url": url_for(name)}
            except (OSError, ValueError):
                return None
        return None

    def describe(value: Any, written: bool, depth: int = 0) -> Any:
        ref = as_file(value) if written else None
        if ref is not None:
            return ref
        if isinstance(value, os.PathLike):
            return {"type": "path", "summary": "not a file this run wrote to the output folder"}
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        if isinstance(value, (list, tuple)) and depth < 4:
            return [describe(v, written, depth + 1) for v in value]
        if isinstance(value, dict) and depth < 4 and all(isinstance(k, str) for k in value):
            return {k: describe(v, False, depth + 1) for k, v in value.items()}
        return summarise(value)

    described = {}
    for node_id, node_outputs in outputs.items():
        described[node_id] = {}
        declared = file_outputs.get(node_id, ())
        for name, value in node_outputs.items():
            item = describe(value, name in declared)
            if len(json.dumps(item, default=str)) > MAX_INLINE_JSON:
                item = summarise(value)
            described[node_id][name] = item
    return described, sorted(set(files))


def summarise(value: Any) -> dict:
    summary: dict[str, Any] = {"type": type(value).__name__}
    shape = getattr(value, "shape", None)
    if shape is not None:
        try:
            summary["shape"] = [int(s) for s in shape]
        except (TypeError, ValueError):
            pass
    dtype = getattr(value, "dtype", None)
    if dtype is not None:
        summary["dtype"] = str(dtype)
    if isinstance(value, (list, tuple, dict, set)):
        summary["length"] = len(value)
    return summary


def output_file(output_dir: Path, name: str, run_files: list[str]) -> Path:
    """The path of output `name` of a run, or UnsafePath / FileNotFoundError."""
    if name not in run_files:
        raise FileNotFoundError(name)
    path = contained(output_dir, name)
    if not path.is_file():
        raise FileNotFoundError(name)
    return path


def output_content_type(path: Path) -> tuple[str, bool]:
    """(content type, serve inline?) for an output file."""
    kind = OUTPUT_CONTENT_TYPES.get(path.suffix.lower())
    return (kind, True) if kind else ("application/octet-stream", False)


__all__ = ["UploadRejected", "StoredImage", "store_uploaded_image",
           "describe_outputs", "output_file", "output_content_type", "UnsafePath"]
