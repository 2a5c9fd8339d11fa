"""Control flow: a switch with lazy branches and a bounded retry loop."""
from __future__ import annotations

from typing import Annotated, Any, NamedTuple

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


@node("retry", category="flow")
def retry(value: Lazy[Any], check: Lazy[Any], vary: Target,
          start: Annotated[int, Field(ge=0, description="first value given to `vary`")] = 0,
          max_tries: Annotated[int, Field(ge=1, le=100), Limit("repeats")] = 3,
          require_pass: bool = False) -> RetryOutputs:
    """Rerun a sub-graph with `vary` set to start, start+1, ... until `check` passes.

    `check` is a bool or anything with a `passed` attribute (e.g. a quality report). Each
    try is cached on its own key, so nodes that do not depend on `vary` run once. With
    `require_pass` the node fails after `max_tries` failed checks; otherwise it returns
    the last try. `checks` lists every try's check value.
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
    return RetryOutputs(value.get(overrides), len(checks), checks)
