"""Limits a run stays within: declared by nodes, configured by whoever runs the graph.

A node says what an input costs in its annotation, beside its constraints:

    width: Annotated[int, Field(ge=64), Limit("width"), Limit("pixels")]
    steps: Annotated[int, Field(ge=1), Limit("steps")]
    values: Annotated[list[str], Limit("repeats")]       # a list counts by its length

Limits hold whatever the wiring, because they are checked where they take effect:

1. before a node runs, on the values it actually receives (literal, param or link): the
   inputs of one node that share a kind multiply (width x height -> pixels);
2. while it runs, for amounts only the node knows (`ctx.limit("pixels", w * h)` for an
   upscaled or padded size);
3. on what it returns: a value with `limit_amounts()` (an image batch: pixels, batch)
   is measured as it comes out, so concatenating or padding nodes cannot grow past a
   limit however they are chained.

Some kinds also have a per-run total (every sampler call's steps, retries included),
and a run has a wall-clock budget, checked before each node and at every progress report.
`Limits()` is unlimited; the server configures real ones.
"""
from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Iterable, Mapping, get_args, get_origin

from .errors import NodeInputError


@dataclass(frozen=True)
class Limit:
    """Input metadata: this input's value (a list's length) counts against limit `kind`."""

    kind: str


@dataclass(frozen=True)
class Limits:
    per_node: Mapping[str, float] = field(default_factory=dict)  # kind -> most one node may use
    per_run: Mapping[str, float] = field(default_factory=dict)   # kind -> most a run may spend
    seconds: float | None = None                                 # wall-clock budget of a run


class LimitExceeded(NodeInputError):
    """A value is over a configured limit; names the input when one is to blame."""

    def __init__(self, kind: str, amount: float, limit: float, input: str | None = None,
                 scope: str = "the configured limit"):
        self.kind, self.amount, self.limit = kind, amount, limit
        super().__init__(input, f"{kind} {number(amount)} is over {scope} of {number(limit)}")


def number(x: float) -> str:
    """12 not 12.0; 1.5 as is."""
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def declared_limits(annotation: Any) -> tuple[str, ...]:
    """The kinds an input's annotation declares with `Limit(...)`."""
    if get_origin(annotation) is not Annotated:
        return ()
    return tuple(m.kind for m in get_args(annotation)[1:] if isinstance(m, Limit))


def amount_of(value: Any) -> float | None:
    """What a value counts for: a number itself, a collection its length; None = nothing."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        return len(value)
    return None


def input_amounts(declared: Mapping[str, Iterable[str]], values: Mapping[str, Any]
                  ) -> dict[str, tuple[float, str]]:
    """{kind: (amount, input to blame)}: inputs of one kind multiply (width x height)."""
    found: dict[str, tuple[float, str]] = {}
    for name, kinds in declared.items():
        amount = amount_of(values.get(name))
        if amount is None:
            continue
        for kind in kinds:
            total, blamed = found.get(kind, (1, name))
            found[kind] = (total * amount, blamed)
    return found


def over_node_limits(declared: Mapping[str, Iterable[str]], values: Mapping[str, Any],
                     limits: Limits, scope: str = "the configured limit") -> list[LimitExceeded]:
    """Every per-node limit these input values break (for checks before a run is queued)."""
    return [LimitExceeded(kind, amount, limits.per_node[kind], name, scope)
            for kind, (amount, name) in input_amounts(declared, values).items()
            if kind in limits.per_node and amount > limits.per_node[kind]]


class RunBudget:
    """One run's limits and what it has spent so far; shared by all its nodes."""

    def __init__(self, limits: Limits | None = None, clock: Callable[[], float] = time.monotonic):
        self.limits = limits or Limits()
        self.clock = clock
        self.started = clock()
        self.spent: dict[str, float] = {}
        self._lock = threading.Lock()

    def check(self, kind: str, amount: float, input: str | None = None) -> None:
        """Spend `amount` of `kind`; LimitExceeded if it is over the per-node limit or the
        run's remaining total."""
        limit = self.limits.per_node.get(kind)
        if limit is not None and amount > limit:
            raise LimitExceeded(kind, amount, limit, input)
        total = self.limits.per_run.get(kind)
        if total is None:
            return
        with self._lock:
            spent = self.spent.get(kind, 0) + amount
            if spent > total:
                raise LimitExceeded(f"{kind} for the whole run", spent, total, input,
                                    scope="the run's budget")
            self.spent[kind] = spent

    def check_time(self) -> None:
        seconds = self.limits.seconds
        if seconds is not None and self.clock() - self.started > seconds:
            raise LimitExceeded("run time (seconds)", math.floor(self.clock() - self.started), seconds,
                                scope="the run's budget")

    def before_node(self, declared: Mapping[str, Iterable[str]], values: Mapping[str, Any]) -> None:
        self.check_time()
        for kind, (amount, name) in input_amounts(declared, values).items():
            self.check(kind, amount, name)

    def after_node(self, outputs: Mapping[str, Any]) -> None:
        """Measure returned values that know their size (images, latents)."""
        for name, value in outputs.items():
            measure = getattr(value, "limit_amounts", None)
            if callable(measure) and not isinstance(value, type):
                for kind, amount in measure().items():
                    limit = self.limits.per_node.get(kind)
                    if limit is not None and amount > limit:
                        raise LimitExceeded(f"output '{name}': {kind}", amount, limit)
