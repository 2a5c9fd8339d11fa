"""Planning: prune to what the outputs need and give every node a cache key.

A key hashes the node's type, version, literal inputs, the keys of its upstream nodes
(with the output name) and its fingerprint. Node ids and JSON key order play no part,
so the same computation gets the same key in any graph. Keys are computed once per
node in topological order: O(nodes + edges), no ancestor walks.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import GraphError, Problem
from .settings import Settings
from .validate import CheckedGraph


@dataclass(frozen=True)
class KeyParts:
    """What a key is made of, kept so `explain` can say which part changed."""

    type: str
    version: int
    literals: dict[str, str]                  # input -> canonical JSON
    links: dict[str, tuple[str, str, str]]    # input -> (upstream node, output, upstream key)
    fingerprint: str | None
    key: str
    settings: str = ""                        # Settings.result_salt() of the run

    def to_dict(self) -> dict:
        return {"type": self.type, "version": self.version, "literals": self.literals,
                "links": {k: list(v) for k, v in self.links.items()},
                "fingerprint": self.fingerprint, "key": self.key, "settings": self.settings}

    @classmethod
    def from_dict(cls, d: dict) -> "KeyParts":
        return cls(d["type"], d["version"], d["literals"],
                   {k: tuple(v) for k, v in d["links"].items()}, d["fingerprint"], d["key"],
                   d.get("settings", ""))


@dataclass
class Plan:
    checked: CheckedGraph
    order: list[str]                          # needed nodes, topological
    literals: dict[str, dict[str, Any]]
    fingerprints: dict[str, str | None]
    nonce: str                                # salts never-cache nodes: unique per run
    settings_salt: str = ""                   # Settings.result_salt(): enters every key
    parts: dict[str, KeyParts] = field(default_factory=dict)

    @property
    def keys(self) -> dict[str, str]:
        return {n: p.key for n, p in self.parts.items()}

    def key(self, node_id: str) -> str:
        return self.parts[node_id].key


def _jsonable(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json")
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    if isinstance(value, bytes):
        return value.hex()
    raise TypeError(f"cannot key a literal of type {type(value).__name__}")


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=_jsonable)


def canonical(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces; 1 and 1.0 stay distinct."""
    return _CANONICAL.encode(value)


def compute_fingerprints(checked: CheckedGraph, order: list[str],
                         settings: Settings) -> dict[str, str | None]:
    """Each fingerprinted node's view of outside state; a failure is a graph problem."""
    fingerprints: dict[str, str | None] = {}
    problems = []
    for node_id in order:
        spec = checked.specs[node_id]
        if spec.fingerprint is None:
            fingerprints[node_id] = None
            continue
        literals = checked.literals[node_id]
        if spec.fingerprint_wants_settings:
            literals = {**literals, "settings": settings}
        try:
            fingerprints[node_id] = str(spec.fingerprint(**literals))
        except Exception as exc:  # noqa: BLE001 - node-pack code reading outside state
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            problems.append(Problem(message, node=node_id, input=getattr(exc, "input", None),
                                    file=checked.graph.source))
    if problems:
        raise GraphError(problems)
    return fingerprints


def assign_keys(plan: Plan) -> Plan:
    checked = plan.checked
    parts: dict[str, KeyParts] = {}
    for node_id in plan.order:
        spec = checked.specs[node_id]
        literals = {name: canonical(v) for name, v in plan.literals[node_id].items()}
        links = {name: (link.node, link.output, parts[link.node].key)
                 for name, link in checked.links[node_id].items()}
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{spec.type}\x00{spec.version}\x00{plan.settings_salt}\x00".encode())
        for name in sorted(literals):
            h.update(f"L{name}={literals[name]}\x00".encode())
        for name in sorted(links):
            _, output, upstream_key = links[name]
            h.update(f"U{name}={upstream_key}.{output}\x00".encode())
        fingerprint = plan.fingerprints.get(node_id)
        if fingerprint is not None:
            h.update(f"F{fingerprint}\x00".encode())
        if not spec.cacheable:
            h.update(f"N{plan.nonce}\x00".encode())
        parts[node_id] = KeyParts(spec.type, spec.version, literals, links, fingerprint,
                                  h.hexdigest(), plan.settings_salt)
    plan.parts = parts
    return plan


def make_plan(checked: CheckedGraph, nonce: str, settings: Settings) -> Plan:
    order = checked.needed()
    plan = Plan(checked, order, checked.literals, compute_fingerprints(checked, order, settings), nonce,
                settings_salt=settings.result_salt())
    return assign_keys(plan)


def variant(plan: Plan, overrides: dict[tuple[str, str], Any]) -> Plan:
    """The same plan with some literal inputs replaced (already validated): new keys downstream."""
    literals = dict(plan.literals)
    for (node_id, name), value in overrides.items():
        literals[node_id] = {**literals[node_id], name: value}
    return assign_keys(replace(plan, literals=literals, parts={}))
