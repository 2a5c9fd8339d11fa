"""Errors as values: every problem names where it happened so a person can act on it.

The CLI and the server format the same objects; nothing here knows how they are shown.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a graph document, located by node id and input name."""

    message: str
    node: str | None = None
    input: str | None = None
    hint: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        where = []
        if self.file:
            where.append(self.file)
        if self.node is not None:
            where.append(f"node '{self.node}'")
        if self.input is not None:
            where.append(f"input '{self.input}'")
        text = f"{', '.join(where)}: {self.message}" if where else self.message
        return f"{text} ({self.hint})" if self.hint else text

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


class LoomError(Exception):
    """Base of every error the engine raises on purpose."""


class GraphError(LoomError):
    """A graph document failed to load or validate; holds every problem found."""

    def __init__(self, problems: list[Problem]):
        self.problems = list(problems)
        super().__init__("\n".join(str(p) for p in self.problems))

    def to_dict(self) -> dict:
        return {"error": "invalid_graph", "problems": [p.to_dict() for p in self.problems]}


class NodeError(LoomError):
    """A node failed while running. Work finished before it stays cached."""

    def __init__(self, node: str, node_type: str, message: str, traceback: str = ""):
        self.node = node
        self.node_type = node_type
        self.message = message
        self.traceback = traceback
        super().__init__(f"node '{node}' ({node_type}) failed: {message}")

    def to_dict(self) -> dict:
        return {"error": "node_failed", "node": self.node, "type": self.node_type,
                "message": self.message, "traceback": self.traceback}


class NodeInputError(LoomError):
    """Raised by a node for input it cannot use; reported like a validation problem."""

    def __init__(self, input: str | None, message: str):
        self.input = input
        self.message = message
        super().__init__(f"input '{input}': {message}" if input else message)


class Cancelled(LoomError):
    """The run was cancelled; raised between nodes or inside a node's progress call."""
