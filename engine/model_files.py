"""What a model file is, read from its bytes: format, integrity, content hash.

Used wherever a file enters or is checked in the models folders (pull, list, verify),
so a truncated download or a pickle disguised by its suffix is caught the same way
everywhere. Nothing here unpickles or loads tensors.
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

from .errors import LoomError

SAFETENSORS_SUFFIXES = (".safetensors", ".sft")
GGUF_MAGIC = b"GGUF"
_ZIP_MAGIC = b"PK\x03\x04"          # torch.save's default container holds a pickle
_PICKLE_PROTOCOL_MARK = 0x80        # first byte of a pickle of protocol 2 or later
_MAX_SAFETENSORS_HEADER = 100 << 20


class BadModelFile(LoomError):
    """A model file is truncated, malformed or of a format that needs explicit consent."""


def sha256_of(path: Path, progress=None) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks; `progress(bytes_read)` after each."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
            done += len(block)
            if progress is not None:
                progress(done)
    return digest.hexdigest()


def file_format(path: Path) -> str:
    """`safetensors`, `gguf`, `pickle` (torch.save / raw pickle) or `unknown`, from the bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == GGUF_MAGIC:
        return "gguf"
    if head[:4] == _ZIP_MAGIC or (head[:1] and head[0] == _PICKLE_PROTOCOL_MARK):
        return "pickle"
    if len(head) >= 9 and head[8:9] == b"{":
        return "safetensors"
    return "unknown"


def safetensors_header(path: Path) -> dict:
    """The JSON header of a .safetensors file, after checking the file holds every tensor it
    declares (a download cut short fails here, with the byte counts)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise BadModelFile(f"{path}: {size} bytes is too short for a safetensors file")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > min(_MAX_SAFETENSORS_HEADER, size - 8):
            raise BadModelFile(f"{path}: safetensors header claims {header_len} bytes "
                               f"but the file has {size}")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadModelFile(f"{path}: safetensors header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise BadModelFile(f"{path}: safetensors header is not a JSON object")
    data_end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets)):
            raise BadModelFile(f"{path}: tensor {name!r} has no valid data_offsets")
        data_end = max(data_end, offsets[1])
    expected = 8 + header_len + data_end
    if size < expected:
        raise BadModelFile(f"{path}: truncated: {size} bytes, the header declares {expected}")
    return header


def check_model_file(path: Path, allow_pickle: bool = False) -> str:
    """The file's format after checking it may be installed: safetensors must be complete,
    pickled formats need `allow_pickle`, anything else is refused."""
    fmt = file_format(path)
    if fmt == "safetensors":
        safetensors_header(path)
    elif fmt == "pickle" and not allow_pickle:
        raise BadModelFile(f"{path.name}: a pickled file (it can run code when loaded); "
                           "prefer a .safetensors version, or pass --allow-pickle if you trust it")
    elif fmt == "unknown":
        raise BadModelFile(f"{path.name}: not a model file Loom reads (safetensors, GGUF, or a "
                           "pickle with --allow-pickle); an HTML error page instead of the file?")
    return fmt
