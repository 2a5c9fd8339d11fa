"""Documents that become graphs: Loom's own JSON, and every format an installed pack can read.

A node pack brings a `DocumentReader` (recognise a document from its content, turn it into a
Loom graph document) or a `DocumentWriter` (turn a Loom graph into another format) the way it
brings node types: as module-level instances in a module the registry scans, or through
`registry.register_reader(...)` / `register_writer(...)` in a pack's register callable. The
engine knows this interface and Loom's own format only; `loom run/validate/explain/convert`
and the server's submit all go through `read_document` / `load_document` / `write_document`.

    READER = DocumentReader("my-format", detect=lambda doc: ..., read=lambda doc, registry: {...})

`detect` must be cheap and must not raise: it sees raw bytes (`doc.data`), the parsed JSON
when the content is JSON (`doc.json`), and memoised helpers other readers share
(`doc.memo`). `read` returns a Loom graph document (a dict) or raises `GraphError` naming
what is wrong and where.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .errors import GraphError, Problem
from .graph import Graph

if TYPE_CHECKING:
    from .registry import Registry

LOOM_FORMAT = "loom"
_NOT_PARSED = object()


@dataclass(eq=False)
class Document:
    """One document to read: its bytes (or an already-parsed JSON value) and where it came from."""

    data: bytes = b""
    source: str | None = None          # file name for messages
    parsed: Any = _NOT_PARSED          # set when the caller already holds the JSON value
    memo: dict = field(default_factory=dict, repr=False)   # readers' shared parse results

    @classmethod
    def from_value(cls, value: Any, source: str | None = None) -> "Document":
        return cls(data=b"", source=source, parsed=value)

    @cached_property
    def json(self) -> Any:
        """The parsed JSON value, or None when the content is not JSON."""
        if self.parsed is not _NOT_PARSED:
            return self.parsed
        try:
            return json.loads(self.data)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None


@dataclass(frozen=True)
class DocumentReader:
    format: str
    detect: Callable[[Document], bool]
    read: Callable[[Document, "Registry"], dict]
    description: str = ""


@dataclass(frozen=True)
class DocumentWriter:
    format: str
    write: Callable[[Graph, "Registry"], Any]     # a JSON value
    description: str = ""


def is_loom_document(value: Any) -> bool:
    return isinstance(value, dict) and "loom" in value


def read_document(document: Document, registry: "Registry", *, name: str = "graph") -> tuple[Graph, str]:
    """The graph a document describes and the format it was read as; GraphError otherwise."""
    value = document.json
    if is_loom_document(value):
        return Graph.from_dict(value, name=name, source=document.source), LOOM_FORMAT
    for reader in registry.readers():
        if _detects(reader, document):
            data = reader.read(document, registry)
            return Graph.from_dict(data, name=name, source=document.source), reader.format
    if value is None and document.data.lstrip()[:1] in (b"{", b"["):
        Graph.from_json(document.data, name=name, source=document.source)   # raises with the JSON error
    if isinstance(value, dict) and isinstance(value.get("nodes"), dict):
        return Graph.from_dict(value, name=name, source=document.source), LOOM_FORMAT  # says what is off
    known = ", ".join(f"{r.format} ({r.description})" if r.description else r.format
                      for r in registry.readers())
    raise GraphError([Problem("not a Loom graph, and no installed reader recognises this document",
                              file=document.source,
                              hint=f"readers: {known}" if known else "no document readers are installed")])


def _detects(reader: DocumentReader, document: Document) -> bool:
    try:
        return bool(reader.detect(document))
    except Exception:  # noqa: BLE001 - a pack's detector must not stop the others
        return False


def load_document(path: str | Path, registry: "Registry") -> Graph:
    """The graph in a file of any readable format (the run history knows it by its path)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise GraphError([Problem(f"cannot read graph file: {exc.strerror}", file=str(path))]) from None
    graph, _ = read_document(Document(data, source=str(path)), registry, name=str(path.resolve()))
    return graph


def write_document(graph: Graph, format: str, registry: "Registry") -> Any:
    """The graph as a JSON value of `format` (Loom's own, or one an installed writer knows)."""
    if format == LOOM_FORMAT:
        return graph.to_dict()
    writer = registry.writer(format)
    if writer is None:
        known = ", ".join([LOOM_FORMAT, *(w.format for w in registry.writers())])
        raise GraphError([Problem(f"no writer for format '{format}'", hint=f"formats: {known}")])
    return writer.write(graph, registry)
