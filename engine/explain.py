"""Why a node ran or came from the cache, in words a person can check.

The history remembers, per graph, the key parts each node had on its last run; a
reason compares this run's parts with those and names what changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path

from .files import atomic_write
from .plan import KeyParts

log = logging.getLogger(__name__)

CACHED = "cached"
RAN = "ran"
WILL_RUN = "will run"
NOT_NEEDED = "not needed"


class RunHistory:
    """Last key parts of each node, per graph name; kept on disk when given a folder.

    Safe from any thread; memory holds the most recently used `keep` graphs (older ones are
    read back from the folder when asked for again)."""

    def __init__(self, folder: Path | str | None = None, keep: int = 256):
        self.folder = Path(folder) if folder is not None else None
        self.keep = keep
        self._graphs: OrderedDict[str, dict[str, KeyParts]] = OrderedDict()
        self._lock = threading.RLock()

    def _file(self, graph_name: str) -> Path | None:
        if self.folder is None:
            return None
        digest = hashlib.blake2b(graph_name.encode(), digest_size=12).hexdigest()
        return self.folder / f"{digest}.json"

    def last(self, graph_name: str) -> dict[str, KeyParts]:
        with self._lock:
            if graph_name not in self._graphs:
                self._remember(graph_name, self._read(graph_name))
            self._graphs.move_to_end(graph_name)
            return self._graphs[graph_name]

    def _remember(self, graph_name: str, parts: dict[str, KeyParts]) -> None:
        self._graphs[graph_name] = parts
        self._graphs.move_to_end(graph_name)
        while len(self._graphs) > self.keep:
            self._graphs.popitem(last=False)

    def record(self, graph_name: str, parts: dict[str, KeyParts]) -> None:
        with self._lock:
            merged = {**self.last(graph_name), **parts}
            self._remember(graph_name, merged)
            path = self._file(graph_name)
            if path is None:
                return
            document = {"graph": graph_name, "nodes": {n: p.to_dict() for n, p in merged.items()}}
            try:
                atomic_write(path, json.dumps(document).encode())
            except OSError as exc:
                log.warning("cannot write run history %s: %s", path, exc)

    def _read(self, graph_name: str) -> dict[str, KeyParts]:
        path = self._file(graph_name)
        if path is None or not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
            return {n: KeyParts.from_dict(p) for n, p in data["nodes"].items()}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable run history %s: %s", path, exc)
            return {}

    def clear(self) -> None:
        with self._lock:
            self._graphs.clear()
        if self.folder is not None and self.folder.is_dir():
            for path in self.folder.glob("*.json"):
                path.unlink(missing_ok=True)


NOT_STORED = ("loaded models are not cached between runs: reloaded from the fingerprinted file "
              "(the value cannot be stored on disk)")


def why_not_cached(parts: KeyParts, previous: KeyParts | None, *, cacheable: bool,
                   use_cache: bool, evicted: bool, unstorable: bool = False) -> str:
    """The reason a node has to run (its key was not in the cache)."""
    if not cacheable:
        return "never cached: the node declares outside randomness or side effects"
    if not use_cache:
        return "cache disabled (--no-cache)"
    if previous is None:
        return "first run: no earlier result for this node"
    if previous.key == parts.key:
        if unstorable and not evicted:
            return NOT_STORED
        return "not in cache: evicted" if evicted else "not in cache: evicted or cleared"
    changes = []
    if previous.type != parts.type:
        changes.append(f"node type changed from '{previous.type}'")
    elif previous.version != parts.version:
        changes.append(f"node version changed from {previous.version} to {parts.version}")
    for name in sorted(set(parts.literals) | set(previous.literals)):
        if parts.literals.get(name) != previous.literals.get(name) and name not in parts.links:
            changes.append(f"input `{name}` changed")
    for name in sorted(set(parts.links) | set(previous.links)):
        now, before = parts.links.get(name), previous.links.get(name)
        if now == before:
            continue
        if now is None:
            changes.append(f"input `{name}` is no longer linked")
        elif before is None:
            changes.append(f"input `{name}` is now linked to `{now[0]}`")
        elif now[0] != before[0] or now[1] != before[1]:
            changes.append(f"input `{name}` now comes from `{now[0]}.{now[1]}`")
        else:
            changes.append(f"upstream `{now[0]}` changed")
    if parts.fingerprint != previous.fingerprint:
        changes.append("fingerprint changed (outside state such as a file)")
    if parts.settings != previous.settings:
        changes.append("run settings changed (device, dtype or options)")
    if parts.pack != previous.pack:
        changes.append("node pack or library versions changed (an upgrade)")
    return "; ".join(changes) or "not in cache: no earlier result for these inputs"


def why_cached(previous: KeyParts | None, parts: KeyParts) -> str:
    if previous is not None and previous.key == parts.key:
        return "cached: inputs unchanged since the last run"
    return "cached: an earlier run computed the same inputs"
