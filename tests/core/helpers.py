"""Node types used only by the engine tests, and a registry holding them plus the built-ins."""
from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, NamedTuple

from pydantic import BaseModel, Field

import nodes.flow
import nodes.primitives
from engine import Context, GraphBuilder, Registry, node
from engine.models import file_digest

CALLS: list[str] = []


@node("fail", category="test")
def fail(value: float, message: str = "boom") -> float:
    """Always raises."""
    raise RuntimeError(message)


@node("slow", category="test")
def slow(ctx: Context, value: float, steps: Annotated[int, Field(ge=1)] = 5) -> float:
    """Reports progress `steps` times; cancellable inside."""
    for i in range(steps):
        ctx.progress(i + 1, steps)
    return value


class Pair(NamedTuple):
    low: int
    high: int


@node("split", category="test")
def split(value: int) -> Pair:
    """Two named outputs."""
    return Pair(value // 2, value - value // 2)


def _text_fingerprint(path: str) -> str:
    return file_digest(Path(path))


@node("read_text", category="test", fingerprint=_text_fingerprint)
def read_text(path: str) -> str:
    """Reads a file; its content hash is the fingerprint."""
    return Path(path).read_text()


def _input_fingerprint(name: str, settings) -> str:
    return file_digest(Path(settings.input_dir) / name)


@node("read_input", category="test", fingerprint=_input_fingerprint)
def read_input(ctx: Context, name: str) -> str:
    """Reads a file from the run's input folder; the fingerprint finds it through settings."""
    return (Path(ctx.settings.input_dir) / name).read_text()


@node("noise", category="test", cache=False)
def noise() -> float:
    """Unseeded randomness: never cached."""
    return random.random()


@node("check_at_least", category="test")
def check_at_least(value: float, threshold: float) -> bool:
    """True when value >= threshold."""
    CALLS.append("check")
    return value >= threshold


class Verdict(BaseModel):
    """A check result in the shape of a quality report: passed, and a reason per missed threshold."""

    passed: bool
    reasons: list[str]


@node("check_near", category="test")
def check_near(value: float, target: float) -> Verdict:
    """Passes only at exactly `target`; one more reason per 10 away (10 from 35 misses 3, 30 misses 1)."""
    return Verdict(passed=value == target, reasons=["off"] * (1 + int(abs(value - target)) // 10))


@node("big", category="test")
def big(size: int) -> bytes:
    """A value of `size` bytes, for cache-budget tests."""
    return b"x" * size


def registry() -> Registry:
    r = Registry()
    for module in (nodes.primitives, nodes.flow):
        r.load_module(module)
    for fn in (fail, slow, split, read_text, read_input, noise, check_at_least, check_near, big):
        r.register(fn)
    return r


def chain(length: int, registry_: Registry) -> GraphBuilder:
    g = GraphBuilder(registry_)
    prev = g.add("int", node_id="n0", value=1)
    for i in range(1, length):
        prev = g.add("add", node_id=f"n{i}", a=prev, b=1)
    g.add("show", node_id="out", value=prev)
    return g
