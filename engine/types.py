"""Port types: which output may feed which input, and which inputs accept JSON literals.

Port types are plain Python classes. An edge is valid when the source type is a
subclass of the destination type; the only implicit coercion is int -> float.
"""
from __future__ import annotations

import enum
import functools
import types
import typing
from typing import Annotated, Any, Generic, Literal, TypeVar, Union, get_args, get_origin

T = TypeVar("T")


class Lazy(Generic[T]):
    """An input evaluated only when the node asks for it (`value = lazy.get()`).

    Declared in a node signature as `Lazy[SomeType]`; lets a switch or a gate skip
    the branches it does not need.
    """

    def __init__(self, evaluate: typing.Callable[[dict | None], T]):
        self._evaluate = evaluate

    def get(self, overrides: dict[tuple[str, str], Any] | None = None) -> T:
        """The upstream value; `overrides` replaces literal inputs `(node, input)` first."""
        return self._evaluate(overrides)


_JSON_SCALARS = (int, float, str, bool, type(None))


def file_input(folder: Literal["input", "output"], **constraints: Any) -> Any:
    """A string input naming a file in the run's input or output folder.

    The schema says so (`x-loom-path`), so the server and user interfaces check and
    offer such names without guessing from input names; the node still resolves the
    name with `engine.paths.contained`.
    """
    from pydantic import Field

    return Annotated[str, Field(min_length=1, json_schema_extra={"x-loom-path": folder}, **constraints)]


def model_name(kind: str, **constraints: Any) -> Any:
    """A string input naming a model under models/<kind> (`x-loom-model` in the schema)."""
    from pydantic import Field

    return Annotated[str, Field(min_length=1, json_schema_extra={"x-loom-model": kind}, **constraints)]


class _WrittenFiles:
    """Marks a node output as naming files the node wrote to the run's output folder."""

    def __repr__(self) -> str:
        return "WrittenFiles"


_WRITTEN_FILES = _WrittenFiles()

# Return types of outputs that list files the node wrote (paths in the output folder).
# Only such outputs make a file downloadable from the server, never a string that merely
# happens to name a file.
OutputFiles = Annotated[list[str], _WRITTEN_FILES]
OutputFile = Annotated[str, _WRITTEN_FILES]


def names_written_files(tp: Any) -> bool:
    """True for an output declared as `OutputFiles` / `OutputFile`."""
    return get_origin(tp) is Annotated and any(m is _WRITTEN_FILES for m in tp.__metadata__)


def strip_annotated(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    return tp


def unwrap_lazy(tp: Any) -> tuple[Any, bool]:
    """`Lazy[X]` -> (X, True); anything else -> (tp, False)."""
    bare = strip_annotated(tp)
    if get_origin(bare) is Lazy:
        return get_args(bare)[0], True
    return tp, False


def _members(tp: Any) -> tuple | None:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return get_args(tp)
    return None


def type_name(tp: Any) -> str:
    tp = strip_annotated(tp)
    members = _members(tp)
    if members is not None:
        return " | ".join(type_name(m) for m in members)
    if tp is Any:
        return "Any"
    if tp is type(None):
        return "None"
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


@functools.lru_cache(maxsize=4096)
def _assignable(src: Any, dst: Any) -> bool:
    if dst is Any or src is Any:
        return True
    dst_members = _members(dst)
    if dst_members is not None:
        return any(_assignable(src, strip_annotated(m)) for m in dst_members)
    src_members = _members(src)
    if src_members is not None:
        return all(_assignable(strip_annotated(m), dst) for m in src_members)
    if get_origin(dst) is Literal:
        # A linked value for a choice input is checked against the choices when it arrives.
        values = get_args(dst)
        if get_origin(src) is Literal:
            return set(get_args(src)) <= set(values)
        return any(isinstance(v, src) for v in values) if isinstance(src, type) else False
    if get_origin(src) is Literal:
        return all(isinstance(v, dst) for v in get_args(src)) if isinstance(dst, type) else False
    src_origin, dst_origin = get_origin(src) or src, get_origin(dst) or dst
    if src_origin is int and dst_origin is float:
        return True
    if not (isinstance(src_origin, type) and isinstance(dst_origin, type)):
        return src == dst
    if not issubclass(src_origin, dst_origin):
        return False
    src_args, dst_args = get_args(src), get_args(dst)
    if not src_args or not dst_args or len(src_args) != len(dst_args):
        return True
    return all(_assignable(strip_annotated(s), strip_annotated(d)) for s, d in zip(src_args, dst_args))


def is_assignable(src: Any, dst: Any) -> bool:
    """True when a value of type `src` may flow into an input declared as `dst`."""
    return _assignable(strip_annotated(src), strip_annotated(dst))


@functools.lru_cache(maxsize=4096)
def _accepts_literal(tp: Any) -> bool:
    tp = strip_annotated(tp)
    if tp is Any:
        return True
    members = _members(tp)
    if members is not None:
        return any(_accepts_literal(m) for m in members)
    origin = get_origin(tp)
    if origin is Literal:
        return True
    if origin in (list, tuple, dict, set, frozenset):
        return all(a is Ellipsis or _accepts_literal(a) for a in get_args(tp))
    if isinstance(tp, type):
        if issubclass(tp, _JSON_SCALARS) or issubclass(tp, enum.Enum):
            return True
        return hasattr(tp, "model_json_schema")  # pydantic models come from JSON
    return False


def accepts_literal(tp: Any) -> bool:
    """True when an input of this type can be written as a JSON literal in a graph."""
    return _accepts_literal(tp)
