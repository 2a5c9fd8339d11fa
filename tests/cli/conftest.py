"""Every CLI test runs in its own working folder outside the repository, with no user config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
GRAPHS = ROOT / "graphs"


@pytest.fixture(autouse=True)
def elsewhere(tmp_path, monkeypatch):
    """A fresh working folder (not the repo) and an empty user config dir."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.delenv("LOOM_CONFIG", raising=False)
    monkeypatch.delenv("COLUMNS", raising=False)
    return work


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def write_graph(folder: Path, nodes: dict, params: dict | None = None, name: str = "g.json") -> Path:
    path = folder / name
    path.write_text(json.dumps({"loom": 1, "params": params or {}, "nodes": nodes}))
    return path
