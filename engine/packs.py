"""Which installed distribution a node comes from, and the library versions its results depend on.

Both enter cache keys: after a `pip install -U` of a node pack (or of the libraries it
computes with) an old disk-cache entry is never served as the new version's result.
"""
from __future__ import annotations

import functools
import re
from importlib.metadata import Distribution, PackageNotFoundError, distribution, entry_points

from .registry import ENTRY_POINT_GROUP


@functools.lru_cache(maxsize=1)
def _pack_distributions() -> dict[str, Distribution]:
    """Top-level module of each installed node pack -> its distribution, read from the
    `loom.nodes` entry points (cheap, unlike scanning every installed file)."""
    found = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.dist is not None:
            found[ep.value.partition(":")[0].partition(".")[0]] = ep.dist
    return found


def _requirement_name(requirement: str) -> str | None:
    """The distribution a requirement names, or None for extras-only requirements."""
    if "extra ==" in requirement.replace("extra==", "extra =="):
        return None
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1) if match else None


@functools.lru_cache(maxsize=None)
def pack_version(module: str) -> str:
    """`name version` of the node pack distribution that installed `module` ("" for a module
    no installed pack provides, e.g. a node defined in a script or a test)."""
    dist = _pack_distributions().get(module.partition(".")[0])
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else ""


@functools.lru_cache(maxsize=None)
def library_versions(module: str) -> str:
    """`name version` of each installed library the node's distribution requires (not its
    extras), so results computed by torch 2.4 are not served to torch 2.5."""
    dist = _pack_distributions().get(module.partition(".")[0])
    if dist is None:
        return ""
    requires = dist.requires or []
    versions = []
    for requirement in requires:
        name = _requirement_name(requirement)
        if name is None:
            continue
        try:
            versions.append(f"{name} {distribution(name).version}")
        except PackageNotFoundError:
            continue
    return ", ".join(sorted(versions))
