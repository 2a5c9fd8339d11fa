"""Which installed distribution a node comes from, and the library versions its results depend on.

Both enter cache keys: after a `pip install -U` of a node pack (or of the libraries it
computes with) an old disk-cache entry is never served as the new version's result.
"""
from __future__ import annotations

import functools
import re
from importlib.metadata import PackageNotFoundError, distribution, packages_distributions


@functools.lru_cache(maxsize=1)
def _distributions_by_module() -> dict[str, list[str]]:
    return packages_distributions()


def _requirement_name(requirement: str) -> str | None:
    """The distribution a requirement names, or None for extras-only requirements."""
    if "extra ==" in requirement.replace("extra==", "extra =="):
        return None
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    return match.group(1) if match else None


@functools.lru_cache(maxsize=None)
def pack_version(module: str) -> str:
    """`name version` of the distribution that installed `module` ("" when it is not installed,
    e.g. a node defined in a script)."""
    names = _distributions_by_module().get(module.partition(".")[0], [])
    if not names:
        return ""
    try:
        dist = distribution(names[0])
    except PackageNotFoundError:
        return ""
    return f"{dist.metadata['Name']} {dist.version}"


@functools.lru_cache(maxsize=None)
def library_versions(module: str) -> str:
    """`name version` of each installed library the node's distribution requires (not its
    extras), so results computed by torch 2.4 are not served to torch 2.5."""
    names = _distributions_by_module().get(module.partition(".")[0], [])
    if not names:
        return ""
    try:
        requires = distribution(names[0]).requires or []
    except PackageNotFoundError:
        return ""
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
