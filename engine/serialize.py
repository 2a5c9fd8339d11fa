"""Encode node results for the disk cache: msgpack, with tensors and arrays as raw buffers.

Supported: JSON-like values, tuples, bytes, torch tensors (any dtype, stored with dtype
and shape, read back on the CPU), numpy arrays, PIL images, dataclasses and pydantic
models whose fields are supported. Anything else (a loaded model, an open file) raises
`Unpersistable` and is simply not written: its node re-creates it from its inputs.

Reading builds only classes node packs declared (the port types of registered nodes and
the dataclass / pydantic types their fields name): a cache file that names any other
class is a miss, so a planted file can never make the decoder construct arbitrary objects.
"""
from __future__ import annotations

import dataclasses
import io
import sys
import typing
from typing import Any

import msgpack

_TENSOR, _NDARRAY, _IMAGE, _DATACLASS, _PYDANTIC, _TUPLE = range(1, 7)
_RAW_IMAGE_MODES = {"RGB", "RGBA", "L", "LA", "I", "F", "I;16", "CMYK"}


class Unpersistable(TypeError):
    """The value cannot be written to the disk cache (and that is fine)."""


def _qualified(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


_PERSISTABLE: set[str] = set()   # qualified names of the classes the decoder may build


def allow_types(*annotations: Any) -> None:
    """Let the decoder rebuild the dataclasses and pydantic models these annotations name,
    and those their fields name in turn (called for every registered node's ports)."""
    pending = list(annotations)
    while pending:
        tp = pending.pop()
        args = typing.get_args(tp)
        if args:
            pending.extend(args)
            continue
        if not isinstance(tp, type):
            continue
        is_dataclass = dataclasses.is_dataclass(tp)
        is_model = hasattr(tp, "model_fields") and hasattr(tp, "model_validate")
        if not (is_dataclass or is_model) or _qualified(tp) in _PERSISTABLE:
            continue
        _PERSISTABLE.add(_qualified(tp))
        pending.extend(_field_types(tp))


def _field_types(cls: type) -> list[Any]:
    """The field annotations of a dataclass or pydantic model that can be resolved; names
    imported only for type checkers (torch under TYPE_CHECKING) are skipped one by one."""
    if hasattr(cls, "model_fields"):
        return [f.annotation for f in cls.model_fields.values()]
    namespace = vars(sys.modules.get(cls.__module__, typing))
    found = []
    for f in dataclasses.fields(cls):
        tp = f.type
        if isinstance(tp, str):
            try:
                tp = eval(tp, dict(namespace))  # noqa: S307 - the class's own annotation text
            except Exception:  # noqa: BLE001
                continue
        found.append(tp)
    return found


def _resolve_class(name: str) -> type:
    # Only declared classes from modules already imported (the loaded node packs) are
    # rebuilt, so a cache file can never make us import code or build anything else.
    if name not in _PERSISTABLE:
        raise ValueError(f"class {name} is not a port type of a registered node")
    module_name, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module_name)
    if obj is None:
        raise ValueError(f"class {name} is not loaded")
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ValueError(f"{name} is not a class")
    return obj


def _encode(value: Any) -> msgpack.ExtType:
    module = type(value).__module__
    if module.startswith("torch") and hasattr(value, "element_size"):
        import torch

        tensor = value.detach().to("cpu").contiguous()
        raw = tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header = [str(tensor.dtype).removeprefix("torch."), list(tensor.shape)]
        return msgpack.ExtType(_TENSOR, msgpack.packb([header, raw]))
    if module == "numpy" and hasattr(value, "dtype") and hasattr(value, "tobytes"):
        if value.dtype.hasobject:
            raise Unpersistable("numpy array of Python objects")
        return msgpack.ExtType(_NDARRAY, msgpack.packb(
            [value.dtype.str, list(value.shape), value.tobytes()]))
    if module.startswith("PIL") and hasattr(value, "tobytes") and hasattr(value, "mode"):
        if value.mode in _RAW_IMAGE_MODES:
            body = [value.mode, list(value.size), value.tobytes(), None]
        else:
            buffer = io.BytesIO()
            value.save(buffer, format="PNG")
            body = [value.mode, list(value.size), None, buffer.getvalue()]
        return msgpack.ExtType(_IMAGE, msgpack.packb(body))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value) if f.init}
        return msgpack.ExtType(_DATACLASS, pack([_qualified(type(value)), fields]))
    if hasattr(value, "model_dump") and hasattr(type(value), "model_validate"):
        return msgpack.ExtType(_PYDANTIC, pack([_qualified(type(value)),
                                                value.model_dump(mode="python")]))
    if isinstance(value, tuple):
        return msgpack.ExtType(_TUPLE, pack(list(value)))
    if type(value).__module__ == "numpy":  # numpy scalars
        return value.item()
    raise Unpersistable(f"cannot persist {type(value).__module__}.{type(value).__qualname__}")


def _decode(code: int, data: bytes) -> Any:
    if code == _TENSOR:
        import torch

        (dtype_name, shape), raw = msgpack.unpackb(data)
        dtype = getattr(torch, dtype_name)
        if not raw:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape)
    if code == _NDARRAY:
        import numpy as np

        dtype, shape, raw = msgpack.unpackb(data)
        return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape).copy()
    if code == _IMAGE:
        from PIL import Image

        mode, size, raw, png = msgpack.unpackb(data)
        if raw is not None:
            return Image.frombytes(mode, tuple(size), raw)
        image = Image.open(io.BytesIO(png))
        image.load()
        return image
    if code == _DATACLASS:
        name, fields = unpack(data)
        return _resolve_class(name)(**fields)
    if code == _PYDANTIC:
        name, fields = unpack(data)
        return _resolve_class(name).model_validate(fields)
    if code == _TUPLE:
        return tuple(unpack(data))
    raise ValueError(f"unknown cache value code {code}")


def pack(value: Any) -> bytes:
    try:
        return msgpack.packb(value, default=_encode, strict_types=True, use_bin_type=True)
    except Unpersistable:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise Unpersistable(str(exc)) from None


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_decode, raw=False, strict_map_key=False)
