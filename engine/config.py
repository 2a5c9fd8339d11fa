"""`loom.toml`: defaults for folders, the cache, runs and the server, so flags need not repeat.

Two files are read, the second overriding the first key by key: the user's
(`<user config dir>/loom/loom.toml`, e.g. `~/.config/loom/loom.toml`) and the one in the
working folder (`./loom.toml`). `$LOOM_CONFIG` names a single file to use instead.
Relative paths in a file are taken from that file's folder. Command-line flags win over both.

    [models]
    dirs = ["~/ComfyUI/models"]          # searched before the project's models/ folder
    extra_paths = "extra_model_paths.yaml"

    [cache]
    dir = "~/.cache/loom"
    memory_gb = 4
    disk_gb = 8

    [run]
    device = "cuda"
    dtype = "float16"
    out = "output"
    input_dir = "input"

    [server]
    host = "127.0.0.1"
    port = 8188
    data_dir = "~/loom-data"
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import LoomError

CONFIG_NAME = "loom.toml"


class ConfigError(LoomError):
    """A config file that cannot be read or names an unknown key; says which file and key."""


@dataclass
class ModelsConfig:
    dirs: list[Path] = field(default_factory=list)
    extra_paths: Path | None = None


@dataclass
class CacheConfig:
    dir: Path | None = None
    memory_gb: float | None = None
    disk_gb: float | None = None


@dataclass
class RunConfig:
    device: str | None = None
    dtype: str | None = None
    out: Path | None = None
    input_dir: Path | None = None


@dataclass
class ServerSection:
    host: str | None = None
    port: int | None = None
    data_dir: Path | None = None


@dataclass
class Config:
    models: ModelsConfig = field(default_factory=ModelsConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    run: RunConfig = field(default_factory=RunConfig)
    server: ServerSection = field(default_factory=ServerSection)
    files: list[Path] = field(default_factory=list)   # the files these values came from


def user_config_dir() -> Path:
    from platformdirs import user_config_path

    return user_config_path("loom", appauthor=False)


def user_data_dir() -> Path:
    from platformdirs import user_data_path

    return user_data_path("loom", appauthor=False)


def config_files(cwd: Path | None = None) -> list[Path]:
    """The config files in effect, lowest precedence first."""
    if os.environ.get("LOOM_CONFIG"):
        return [Path(os.environ["LOOM_CONFIG"]).expanduser()]
    candidates = [user_config_dir() / CONFIG_NAME, (cwd or Path.cwd()) / CONFIG_NAME]
    unique = []
    for path in candidates:
        if path.is_file() and path.resolve() not in [p.resolve() for p in unique]:
            unique.append(path)
    return unique


def load_config(cwd: Path | None = None) -> Config:
    """The merged configuration (empty when no file exists)."""
    config = Config()
    for path in config_files(cwd):
        _merge(config, _read(path), path)
        config.files.append(path)
    return config


def _read(path: Path) -> dict:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


_PATH_KEYS = {"dirs", "extra_paths", "dir", "out", "input_dir", "data_dir"}


def _merge(config: Config, data: dict, path: Path) -> None:
    sections = {f.name: f for f in fields(Config) if f.name != "files"}
    for section, values in data.items():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(sections)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: [{section}] must be a table of keys")
        target = getattr(config, section)
        known = {f.name: f for f in fields(target)}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"{path}: unknown key '{key}' in [{section}] "
                                  f"(known: {', '.join(known)})")
            setattr(target, key, _convert(value, known[key].type, f"{section}.{key}", path,
                                          is_path=key in _PATH_KEYS))


def _convert(value: Any, declared: str, where: str, path: Path, is_path: bool) -> Any:
    def fail(expected: str) -> ConfigError:
        return ConfigError(f"{path}: {where} must be {expected}, got {value!r}")

    def as_path(item: Any) -> Path:
        if not isinstance(item, str) or not item:
            raise fail("a folder or file path (text)")
        return (path.parent / Path(item).expanduser()).resolve()

    if is_path:
        if declared.startswith("list"):
            if not isinstance(value, list):
                raise fail("a list of folders")
            return [as_path(v) for v in value]
        return as_path(value)
    if "int" in declared:
        if not isinstance(value, int) or isinstance(value, bool):
            raise fail("a whole number")
        return value
    if "float" in declared:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise fail("a non-negative number")
        return float(value)
    if not isinstance(value, str):
        raise fail("text")
    return value
