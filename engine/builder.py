"""Build graphs from Python; the result is the same JSON document a file holds.

    g = GraphBuilder()
    a = g.add("int", value=2)
    s = g.add("add", a=a, b=3)           # a handle links its only output ...
    g.add("show", value=s.out("value"))  # ... or name it: h.out("name") / h["name"]
    g.param("x", a, "value")
    result = Executor().run(g.build(), params={"x": 5})
"""
from __future__ import annotations

from typing import Any

from .graph import Graph, Link, NodeEntry, Param
from .registry import Registry


class NodeHandle:
    def __init__(self, builder: "GraphBuilder", node_id: str):
        self._builder = builder
        self.id = node_id

    @property
    def type(self) -> str:
        return self._builder._nodes[self.id].type

    def out(self, name: str | None = None) -> Link:
        """A link to output `name`; without a name, to the node's only output."""
        return Link(self.id, name if name is not None else self._builder._single_output(self.id))

    __getitem__ = out

    def __repr__(self) -> str:
        return f"<node {self.id!r} ({self.type})>"


class GraphBuilder:
    def __init__(self, registry: Registry | None = None, name: str = "graph"):
        self._registry = registry
        self._nodes: dict[str, NodeEntry] = {}
        self._params: dict[str, Param] = {}
        self._meta: dict | None = None
        self.name = name

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            self._registry = Registry.default()
        return self._registry

    @classmethod
    def from_graph(cls, graph: Graph, registry: Registry | None = None) -> "GraphBuilder":
        builder = cls(registry, name=graph.name)
        copy = graph.copy()
        builder._nodes, builder._params, builder._meta = copy.nodes, copy.params, copy.meta
        return builder

    def add(self, type_id: str, /, node_id: str | None = None, **inputs: Any) -> NodeHandle:
        if node_id is None:
            count = sum(1 for e in self._nodes.values() if e.type == type_id) + 1
            node_id = f"{type_id}_{count}"
            while node_id in self._nodes:
                count += 1
                node_id = f"{type_id}_{count}"
        elif node_id in self._nodes:
            raise ValueError(f"node id '{node_id}' is already used")
        self._nodes[node_id] = NodeEntry(type_id, {})
        for name, value in inputs.items():
            self.set(node_id, name, value)
        return NodeHandle(self, node_id)

    def node(self, node_id: str) -> NodeHandle:
        if node_id not in self._nodes:
            raise KeyError(f"no node '{node_id}'")
        return NodeHandle(self, node_id)

    def set(self, node: NodeHandle | str, input: str, value: Any) -> None:
        """Set an input to a literal, a Link, or a handle (its only output)."""
        node_id = node.id if isinstance(node, NodeHandle) else node
        if isinstance(value, NodeHandle):
            value = value.out()
        self._nodes[node_id].inputs[input] = value

    def remove(self, node: NodeHandle | str) -> None:
        node_id = node.id if isinstance(node, NodeHandle) else node
        del self._nodes[node_id]

    def param(self, name: str, node: NodeHandle | str, input: str, description: str | None = None) -> None:
        node_id = node.id if isinstance(node, NodeHandle) else node
        self._params[name] = Param(node_id, input, description)

    def build(self) -> Graph:
        return Graph(nodes=self._nodes, params=self._params, meta=self._meta, name=self.name).copy()

    def _single_output(self, node_id: str) -> str:
        type_id = self._nodes[node_id].type
        spec = self.registry.get(type_id)
        if spec is None:
            raise KeyError(f"unknown node type '{type_id}': name the output with .out(name)")
        if len(spec.outputs) != 1:
            raise ValueError(f"node '{node_id}' ({type_id}) has outputs {', '.join(spec.outputs)}: "
                             f"name one with .out(name)")
        return next(iter(spec.outputs))
