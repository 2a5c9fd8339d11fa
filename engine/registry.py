"""Which node types exist: built-ins and custom packs, found through the `loom.nodes` entry points.

An entry point names a module (scanned for `@node` functions) or a callable that
takes the registry. The project's own `nodes` package registers the same way, so
a third-party pack is no different from a built-in one. Packs bring document readers and
writers (`engine.documents`) the same way: module-level instances in a scanned module, or
`register_reader` / `register_writer` from a pack's callable.
"""
from __future__ import annotations

import difflib
import importlib
import logging
import types
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, Iterable

from .documents import DocumentReader, DocumentWriter
from .node import NodeSpec, spec_of
from .serialize import allow_types

ENTRY_POINT_GROUP = "loom.nodes"
log = logging.getLogger(__name__)


class Registry:
    def __init__(self, specs: Iterable[NodeSpec] = ()):
        self._specs: dict[str, NodeSpec] = {}
        self._readers: dict[str, DocumentReader] = {}
        self._writers: dict[str, DocumentWriter] = {}
        self._model_detectors: list[Callable[[Path, str], str | None]] = []
        for spec in specs:
            self.register(spec)

    def register(self, item: NodeSpec | Callable) -> NodeSpec:
        spec = item if isinstance(item, NodeSpec) else spec_of(item)
        if spec is None:
            raise TypeError(f"{item!r} is not a node (decorate it with @node)")
        existing = self._specs.get(spec.type)
        if existing is not None and existing.fn is not spec.fn:
            raise ValueError(f"node type '{spec.type}' is registered twice "
                             f"({existing.fn.__module__} and {spec.fn.__module__})")
        self._specs[spec.type] = spec
        allow_types(*(i.annotation for i in spec.inputs.values()), *spec.outputs.values())
        return spec

    def load_module(self, module: types.ModuleType | str) -> list[NodeSpec]:
        if isinstance(module, str):
            module = importlib.import_module(module)
        for value in vars(module).values():
            if isinstance(value, DocumentReader) and value.read.__module__ == module.__name__:
                self.register_reader(value)
            elif isinstance(value, DocumentWriter) and value.write.__module__ == module.__name__:
                self.register_writer(value)
        found = [spec_of(v) for v in vars(module).values()]
        return [self.register(s) for s in found if s is not None and s.fn.__module__ == module.__name__]

    def register_reader(self, reader: DocumentReader) -> None:
        """A document format `loom run` and the server accept besides Loom's own, tried in
        registration order."""
        existing = self._readers.get(reader.format)
        if existing is not None and existing is not reader:
            raise ValueError(f"document reader '{reader.format}' is registered twice")
        self._readers[reader.format] = reader

    def register_writer(self, writer: DocumentWriter) -> None:
        existing = self._writers.get(writer.format)
        if existing is not None and existing is not writer:
            raise ValueError(f"document writer '{writer.format}' is registered twice")
        self._writers[writer.format] = writer

    def readers(self) -> list[DocumentReader]:
        return list(self._readers.values())

    def writers(self) -> list[DocumentWriter]:
        return list(self._writers.values())

    def writer(self, format: str) -> DocumentWriter | None:
        return self._writers.get(format)

    def copy(self) -> "Registry":
        """The same node types, readers, writers and detectors, to extend without changing
        this registry (the CLI shares one per process)."""
        clone = Registry()
        clone._specs = dict(self._specs)
        clone._readers = dict(self._readers)
        clone._writers = dict(self._writers)
        clone._model_detectors = list(self._model_detectors)
        return clone

    def register_model_detector(self, detect: Callable[[Path, str], str | None]) -> None:
        """`detect(path, kind)` names the model family of a file or folder in the models
        folders (e.g. "sdxl"), or None; `loom models list` asks each pack in turn."""
        self._model_detectors.append(detect)

    def detect_model_family(self, path: Path, kind: str) -> str | None:
        for detect in self._model_detectors:
            found = detect(path, kind)
            if found:
                return found
        return None

    def load_entry_points(self, group: str = ENTRY_POINT_GROUP) -> None:
        for ep in entry_points(group=group):
            target: Any = ep.load()
            if isinstance(target, types.ModuleType):
                self.load_module(target)
            elif callable(target):
                target(self)
            else:
                raise TypeError(f"entry point '{ep.name}' in {group} is neither a module nor a callable")

    @classmethod
    def default(cls) -> "Registry":
        """Every node type installed: the built-ins and each `loom.nodes` pack."""
        registry = cls()
        registry.load_entry_points()
        return registry

    def get(self, type_id: str) -> NodeSpec | None:
        return self._specs.get(type_id)

    def __contains__(self, type_id: str) -> bool:
        return type_id in self._specs

    def __iter__(self):
        return iter(sorted(self._specs.values(), key=lambda s: (s.category, s.type)))

    def suggest(self, type_id: str, limit: int = 3) -> list[str]:
        return difflib.get_close_matches(type_id, self._specs, n=limit, cutoff=0.5)

    def catalogue(self) -> list[dict]:
        return [spec.json_schema() for spec in self]
