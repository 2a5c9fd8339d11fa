"""Planning: prune to what the outputs need and give every node a cache key.

A key hashes the node's type, version, literal inputs, the keys of its upstream nodes
(with the output name), its fingerprint, the node pack's version (and, for nodes that pass
objects rather than JSON values, the versions of the libraries the pack requires) and, for
nodes that can read them, the run settings that change results. Node ids and JSON key order
play no part, so the same computation gets the same key in any graph. Keys are computed
once per node in topological order: O(nodes + edges), no ancestor walks; a plan made from
the previous plan of the same executor reuses the keys of nodes whose inputs did not change.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any

from .errors import GraphError, NodeInputError, Problem
from .node import NodeSpec
from .packs import library_versions, pack_version
from .settings import Settings
from .types import accepts_literal
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
    settings: str = ""                        # Settings.result_salt(), for nodes that read settings
    pack: str = ""                            # node pack (and library) versions

    def to_dict(self) -> dict:
        return {"type": self.type, "version": self.version, "literals": self.literals,
                "links": {k: list(v) for k, v in self.links.items()},
                "fingerprint": self.fingerprint, "key": self.key, "settings": self.settings,
                "pack": self.pack}

    @classmethod
    def from_dict(cls, d: dict) -> "KeyParts":
        return cls(d["type"], d["version"], d["literals"],
                   {k: tuple(v) for k, v in d["links"].items()}, d["fingerprint"], d["key"],
                   d.get("settings", ""), d.get("pack", ""))


@dataclass
class Plan:
    checked: CheckedGraph
    order: list[str]                          # needed nodes, topological
    literals: dict[str, dict[str, Any]]
    fingerprints: dict[str, str | None]
    nonce: str                                # salts never-cache nodes: unique per run
    settings: Settings = field(default_factory=Settings)
    parts: dict[str, KeyParts] = field(default_factory=dict)

    @property
    def settings_salt(self) -> str:
        return self.settings.result_salt()

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


def compute_fingerprints(checked: CheckedGraph, order: list[str], literals: dict[str, dict[str, Any]],
                         settings: Settings) -> dict[str, str | None]:
    """Each fingerprinted node's view of outside state; a failure is a graph problem."""
    fingerprints: dict[str, str | None] = {}
    problems = []
    for node_id in order:
        spec = checked.specs[node_id]
        if spec.fingerprint is None:
            fingerprints[node_id] = None
            continue
        node_literals = literals[node_id]
        if spec.fingerprint_wants_settings:
            node_literals = {**node_literals, "settings": settings}
        try:
            fingerprints[node_id] = str(spec.fingerprint(**node_literals))
        except Exception as exc:  # noqa: BLE001 - node-pack code reading outside state
            message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            problems.append(Problem(message, node=node_id, input=getattr(exc, "input", None),
                                    file=checked.graph.source))
    if problems:
        raise GraphError(problems)
    return fingerprints


def _reads_settings(spec: NodeSpec) -> bool:
    """Only a node given the context (or a fingerprint given the settings) can see them, so
    settings enter only such nodes' keys: `--device cuda` does not invalidate arithmetic."""
    return spec.wants_ctx or spec.fingerprint_wants_settings


def _passes_objects(spec: NodeSpec) -> bool:
    return (any(not i.literal for i in spec.inputs.values())
            or not all(accepts_literal(tp) for tp in spec.outputs.values()))


def pack_salt(spec: NodeSpec) -> str:
    """The version of the distribution that registered the node and, for nodes that compute
    with objects (tensors, models), the versions of the libraries it requires."""
    module = spec.fn.__module__
    return pack_version(module) + ("; " + library_versions(module) if _passes_objects(spec) else "")


def _key_parts(spec: NodeSpec, literals: dict[str, str], links: dict[str, tuple[str, str, str]],
               fingerprint: str | None, settings_salt: str, pack: str, nonce: str) -> KeyParts:
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{spec.type}\x00{spec.version}\x00{pack}\x00{settings_salt}\x00".encode())
    for name in sorted(literals):
        h.update(f"L{name}={literals[name]}\x00".encode())
    for name in sorted(links):
        _, output, upstream_key = links[name]
        h.update(f"U{name}={upstream_key}.{output}\x00".encode())
    if fingerprint is not None:
        h.update(f"F{fingerprint}\x00".encode())
    if not spec.cacheable:
        h.update(f"N{nonce}\x00".encode())
    return KeyParts(spec.type, spec.version, literals, links, fingerprint, h.hexdigest(),
                    settings_salt, pack)


def _same_upstream(old: KeyParts, links: dict, parts: dict[str, KeyParts]) -> bool:
    if old.links.keys() != links.keys():
        return False
    for name, link in links.items():
        node, output, key = old.links[name]
        if node != link.node or output != link.output or parts[link.node].key != key:
            return False
    return True


def assign_keys(plan: Plan, previous: Plan | None = None) -> Plan:
    """Key every node in topological order. With `previous` (the last plan of the same graph),
    a node whose literals, fingerprint and upstream keys are the ones it had there keeps its
    key parts without re-encoding or re-hashing, so a rerun costs what changed."""
    checked = plan.checked
    settings_salt = plan.settings_salt
    reuse = previous is not None and previous.settings_salt == settings_salt
    old_parts = previous.parts if reuse else {}
    old_literals = previous.literals if reuse else {}
    salts: dict[int, tuple[str, str]] = {}
    parts: dict[str, KeyParts] = {}
    for node_id in plan.order:
        spec = checked.specs[node_id]
        links = checked.links[node_id]
        fingerprint = plan.fingerprints.get(node_id)
        old = old_parts.get(node_id)
        same_literals = (old is not None and old.type == spec.type and old.version == spec.version
                         and old_literals.get(node_id) is plan.literals[node_id])
        if (same_literals and spec.cacheable and old.fingerprint == fingerprint
                and _same_upstream(old, links, parts)):
            parts[node_id] = old
            continue
        salt = salts.get(id(spec))
        if salt is None:
            salt = salts[id(spec)] = (pack_salt(spec), settings_salt if _reads_settings(spec) else "")
        literals = old.literals if same_literals else {
            name: canonical(v) for name, v in plan.literals[node_id].items()}
        link_parts = {name: (link.node, link.output, parts[link.node].key) for name, link in links.items()}
        parts[node_id] = _key_parts(spec, literals, link_parts, fingerprint, salt[1], salt[0], plan.nonce)
    plan.parts = parts
    return plan


def make_plan(checked: CheckedGraph, nonce: str, settings: Settings, previous: Plan | None = None) -> Plan:
    """Prune, fingerprint and key. `previous`, the last plan this executor made for the same
    graph, lets unchanged nodes keep their keys (and an unchanged structure its pruning)."""
    if previous is not None and previous.checked.order is checked.order and previous.checked.outputs == checked.outputs:
        order = previous.order
    else:
        order = checked.needed()
    plan = Plan(checked, order, checked.literals,
                compute_fingerprints(checked, order, checked.literals, settings), nonce, settings)
    return assign_keys(plan, previous)


def variant(plan: Plan, overrides: dict[tuple[str, str], Any]) -> Plan:
    """The same plan with some literal inputs replaced (already validated): new keys downstream,
    and a new fingerprint for an overridden node that has one (a varied file name is a
    different file)."""
    literals = dict(plan.literals)
    for (node_id, name), value in overrides.items():
        literals[node_id] = {**literals[node_id], name: value}
    overridden = sorted({node_id for node_id, _ in overrides if plan.checked.specs[node_id].fingerprint})
    fingerprints = plan.fingerprints
    if overridden:
        try:
            fresh = compute_fingerprints(plan.checked, overridden, literals, plan.settings)
        except GraphError as exc:
            problem = exc.problems[0]
            raise NodeInputError(None, f"node '{problem.node}': {problem.message}") from None
        fingerprints = {**fingerprints, **fresh}
    return assign_keys(replace(plan, literals=literals, fingerprints=fingerprints, parts={}), plan)
