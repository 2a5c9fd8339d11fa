"""Keep every user-supplied path inside the folder it belongs to.

A name from a graph, a request or an upload is resolved (symlinks included) and
must stay under its base folder: `..`, absolute paths, backslashes, NUL bytes and
links that point outside are refused.
"""
from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote


class UnsafePath(ValueError):
    pass


def contained(base: Path | str, name: str) -> Path:
    """`base/name` resolved, or UnsafePath when it would leave `base`."""
    if not isinstance(name, str) or not name:
        raise UnsafePath("empty path")
    if "\x00" in name or "\\" in name:
        raise UnsafePath(f"path {name!r} contains a NUL byte or a backslash")
    if unquote(name) != name:
        raise UnsafePath(f"path {name!r} is URL-encoded")
    if name.startswith("/") or Path(name).is_absolute() or ":" in Path(name).parts[0]:
        raise UnsafePath(f"path {name!r} is absolute")
    if any(part == ".." for part in Path(name).parts):
        raise UnsafePath(f"path {name!r} climbs out with '..'")
    root = Path(base).resolve()
    target = (root / name).resolve()
    if target != root and root not in target.parents:
        raise UnsafePath(f"path {name!r} resolves outside {root}")
    return target
