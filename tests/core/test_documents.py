"""Document readers and writers: packs register them like node types; the engine knows only
the interface and Loom's own format."""
from __future__ import annotations

import types

import pytest

from engine import Graph, GraphError, Registry
from engine.documents import (Document, DocumentReader, DocumentWriter, load_document, read_document,
                              write_document)

ARITHMETIC = {"loom": 1, "nodes": {"a": {"type": "int", "inputs": {"value": 2}},
                                   "s": {"type": "show", "inputs": {"value": ["a", "value"]}}}}


def _csv_read(document, registry):
    value = int(document.data.decode().strip())
    return {**ARITHMETIC, "nodes": {**ARITHMETIC["nodes"], "a": {"type": "int", "inputs": {"value": value}}}}


def _broken_detect(document):
    raise RuntimeError("a pack's bug")


def _csv_write(graph, registry):
    return {"value": graph.nodes["a"].inputs["value"]}


def _pack() -> types.ModuleType:
    module = types.ModuleType("csv_pack")
    _csv_read.__module__ = _csv_write.__module__ = _broken_detect.__module__ = "csv_pack"
    module.BROKEN = DocumentReader("broken", detect=_broken_detect, read=_csv_read)
    module.READER = DocumentReader("number", detect=lambda doc: doc.data.strip().isdigit(), read=_csv_read,
                                   description="a bare number")
    module.WRITER = DocumentWriter("number", write=_csv_write)
    return module


@pytest.fixture
def registry():
    from nodes import primitives

    registry = Registry()
    registry.load_module(primitives)
    registry.load_module(_pack())
    return registry


def test_a_scanned_module_brings_its_readers_and_writers(registry, tmp_path):
    assert [r.format for r in registry.readers()] == ["broken", "number"]
    path = tmp_path / "seven.txt"
    path.write_text("7\n")
    graph = load_document(path, registry)            # the broken detector does not stop the others
    assert graph.nodes["a"].inputs["value"] == 7 and graph.name == str(path.resolve())
    assert write_document(graph, "number", registry) == {"value": 7}
    assert write_document(graph, "loom", registry) == graph.to_dict()


def test_loom_documents_need_no_reader(registry):
    graph, fmt = read_document(Document.from_value(ARITHMETIC), registry)
    assert fmt == "loom" and isinstance(graph, Graph)


def test_unrecognised_documents_list_the_readers(registry):
    with pytest.raises(GraphError) as info:
        read_document(Document(b"\x00\x01binary", source="x.bin"), registry)
    [problem] = info.value.problems
    assert "no installed reader recognises" in problem.message and "number (a bare number)" in problem.hint


def test_broken_json_says_where(registry):
    with pytest.raises(GraphError, match="not valid JSON at line 1"):
        read_document(Document(b'{"loom": 1,', source="bad.json"), registry)


def test_unknown_target_format_lists_the_known_ones(registry):
    with pytest.raises(GraphError) as info:
        write_document(Graph.from_dict(ARITHMETIC), "yaml", registry)
    assert "loom, number" in info.value.problems[0].hint


def test_a_format_is_registered_once(registry):
    with pytest.raises(ValueError, match="registered twice"):
        registry.register_reader(DocumentReader("number", detect=lambda d: False, read=_csv_read))


def test_a_loom_graph_missing_its_version_gets_loom_problems(registry):
    with pytest.raises(GraphError, match="'loom' must be 1"):
        read_document(Document.from_value({"nodes": {}}), registry)
