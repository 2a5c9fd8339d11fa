"""Constants, arithmetic and `show`: enough to write and test graphs without diffusion."""
from __future__ import annotations

from typing import Any

from engine import node


@node("int", category="primitives")
def int_constant(value: int) -> int:
    """An integer constant."""
    return value


@node("float", category="primitives")
def float_constant(value: float) -> float:
    """A floating-point constant."""
    return value


@node("string", category="primitives")
def string_constant(value: str) -> str:
    """A text constant."""
    return value


@node("bool", category="primitives")
def bool_constant(value: bool) -> bool:
    """A true/false constant."""
    return value


@node("add", category="math")
def add(a: float, b: float = 0.0) -> float:
    """a + b."""
    return a + b


@node("multiply", category="math")
def multiply(a: float, b: float = 1.0) -> float:
    """a × b."""
    return a * b


@node("show", category="output", output_node=True)
def show(value: Any) -> Any:
    """Put any value into the run's outputs (and the CLI's report)."""
    return value
