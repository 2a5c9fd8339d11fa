"""Control flow: a switch with lazy branches and a bounded retry loop."""
from __future__ import annotations

from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, Field

from engine import Lazy, NodeInputError, node
from engine.limits import Limit


@node("switch", category="flow")
def switch(condition: bool, on_true: Lazy[Any], on_false: Lazy[Any]) -> Any:
    """Pass one branch through; only the chosen branch is computed."""
    return on_true.get() if condition else on_false.get()


class Target(BaseModel):
    """An input of another node, named in a graph as {"node": id, "input": name}."""

    node: str
    input: str


class RetryOutputs(NamedTuple):
    value: Any
    tries: int
    checks: list


def _passed(check: Any) -> bool:
    return bool(getattr(check, "passed", check))


def _misses(check: Any) -> int:
    """How badly a failed check failed: the number of reasons a report gives (a bare False is one)."""
    return len(getattr(check, "reasons", None) or [None])


@node("retry", category="flow")
def retry(value: Lazy[Any], check: Lazy[Any], vary: Target,
          start: Annotated[int, Field(ge=0, description="first value given to `vary`")] = 0,
          max_tries: Annotated[int, Field(ge=1, le=100), Limit("repeats")] = 3,
          require_pass: bool = False,
          keep: Annotated[Literal["last", "best"], Field(description="when no try passes: the last try, or "
                                                       "the one whose check gave the fewest reasons")] = "last",
          ) -> RetryOutputs:
    """Rerun a sub-graph with `vary` set to start, start+1, ... until `check` passes.

    `check` is a bool or anything with a `passed` attribute (e.g. a quality report). Each
    try is cached on its own key, so nodes that do not depend on `vary` run once. With
    `require_pass` the node fails after `max_tries` failed checks; otherwise it returns the
    last try, or with keep "best" the try that missed the fewest thresholds (the earliest of
    equals). `checks` lists every try's check value.
    """
    checks = []
    for attempt in range(max_tries):
        overrides = {(vary.node, vary.input): start + attempt}
        outcome = check.get(overrides)
        checks.append(outcome)
        if _passed(outcome):
            break
    else:
        if require_pass:
            raise NodeInputError("check", f"no try passed in {max_tries} tries "
                                          f"({vary.node}.{vary.input} = {start}..{start + max_tries - 1})")
        if keep == "best":
            best = min(range(max_tries), key=lambda attempt: _misses(checks[attempt]))
            overrides = {(vary.node, vary.input): start + best}
    return RetryOutputs(value.get(overrides), len(checks), checks)
