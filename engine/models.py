"""Finding model files by name and holding each loaded model in memory once.

Folders follow ComfyUI's layout (`models/checkpoints`, `models/loras`, ...), searched
in order: every `--models-dir`, then the folders an extra-paths file lists
(YAML or JSON: `{kind: [folder, ...]}`, relative entries taken from the file's folder).
"""
from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import LoomError
from .files import atomic_write
from .paths import UnsafePath, contained

MODEL_SUFFIXES = (".safetensors", ".sft", ".gguf", ".ckpt", ".pt", ".pth", ".bin")


class ModelNotFound(LoomError):
    pass


class ModelPaths:
    def __init__(self, models_dirs: Iterable[Path], extra_paths_file: Path | None = None):
        self.models_dirs = [Path(d) for d in models_dirs]
        self.extra: dict[str, list[Path]] = {}
        if extra_paths_file is not None:
            self.extra = _read_extra_paths(Path(extra_paths_file))

    def folders(self, kind: str) -> list[Path]:
        return [d / kind for d in self.models_dirs] + self.extra.get(kind, [])

    def resolve(self, kind: str, name: str) -> Path:
        """The file or diffusers folder called `name` (suffix optional) under a `kind` folder.
        Names as workflows from other tools write them also resolve: sub-folders separated by
        `\\`, and a file name (`sd15.safetensors`) for a diffusers folder of that stem."""
        searched = []
        name = name.replace("\\", "/")
        stem, suffix = os.path.splitext(name)
        as_folder = [stem] if suffix in MODEL_SUFFIXES else []
        for folder in self.folders(kind):
            searched.append(str(folder))
            if not folder.is_dir():
                continue
            for candidate in [name, *(name + s for s in MODEL_SUFFIXES), *as_folder]:
                try:
                    path = contained(folder, candidate)
                except UnsafePath as exc:
                    raise ModelNotFound(f"model name {name!r} refused: {exc}") from None
                if path.is_dir() if candidate in as_folder else path.exists():
                    return path
        available = ", ".join(self.list(kind)) or "none"
        raise ModelNotFound(f"no {kind} model named {name!r} (searched {', '.join(searched)}; "
                            f"available: {available})")

    def list(self, kind: str) -> list[str]:
        names: set[str] = set()
        for folder in self.folders(kind):
            if folder.is_dir():
                names.update(self.list_folder(folder))
        return sorted(names)

    @staticmethod
    def list_folder(folder: Path) -> list[str]:
        """Model files and diffusers folders in one kind folder; hidden names (records,
        downloads in progress) are not models."""
        return sorted(entry.name for entry in folder.iterdir()
                      if not entry.name.startswith(".")
                      and (entry.is_dir() or entry.suffix in MODEL_SUFFIXES))

    def kinds(self) -> list[str]:
        found = set(self.extra)
        for d in self.models_dirs:
            if d.is_dir():
                found.update(p.name for p in d.iterdir() if p.is_dir())
        return sorted(found)


def _read_extra_paths(path: Path) -> dict[str, list[Path]]:
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise LoomError(f"{path}: cannot read extra model paths: {exc}") from None
    if not isinstance(data, dict):
        raise LoomError(f"{path}: expected a mapping of model kind to folders")
    extra: dict[str, list[Path]] = {}
    for kind, folders in data.items():
        folders = [folders] if isinstance(folders, str) else folders
        if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
            raise LoomError(f"{path}: '{kind}' must be a folder or a list of folders")
        extra[kind] = [(path.parent / f).resolve() for f in folders]
    return extra


_digest_memo: dict[tuple, str] = {}


def file_digest(path: Path | str, memo_dir: Path | None = None) -> str:
    """Content hash of a file or folder (all files in it), memoised by path, size and mtime.

    With `memo_dir` the memo outlives the process, so a new `loom run` does not re-read a
    multi-gigabyte checkpoint that has not changed.
    """
    path = Path(path).resolve()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    stamp = tuple((str(p), st.st_size, st.st_mtime_ns, st.st_ino) for p in files for st in [p.stat()])
    cached = _digest_memo.get(stamp)
    memo_file = None
    if memo_dir is not None:
        memo_file = Path(memo_dir) / hashlib.blake2b(repr(stamp).encode(), digest_size=16).hexdigest()
        if cached is None and memo_file.is_file():
            cached = memo_file.read_text().strip() or None
    if cached is not None:
        _digest_memo[stamp] = cached
        return cached
    h = hashlib.blake2b(digest_size=16)
    for p in files:
        h.update(os.fsencode(p.relative_to(path)) if path.is_dir() else b"")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    _digest_memo[stamp] = digest
    if memo_file is not None:
        _write_atomically(memo_file, digest)
    return digest


def _write_atomically(path: Path, text: str) -> None:
    try:
        atomic_write(path, text.encode())
    except OSError:
        pass  # a memo that cannot be written only costs a re-read next time


class ModelManager:
    """Loaded models keyed by identity (file content + load settings), so each is in memory once."""

    def __init__(self, paths: ModelPaths, capacity: int = 8):
        self.paths = paths
        self.capacity = capacity
        self._loaded: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, identity: tuple, load: Callable[[], Any]) -> Any:
        with self._lock:
            if identity in self._loaded:
                self._loaded.move_to_end(identity)
                return self._loaded[identity]
        model = load()
        with self._lock:
            self._loaded[identity] = model
            while len(self._loaded) > self.capacity:
                self._loaded.popitem(last=False)
        return model

    def __len__(self) -> int:
        return len(self._loaded)

    def __contains__(self, identity: tuple) -> bool:
        """Whether the model with this identity is loaded now (not evicted)."""
        return identity in self._loaded

    def clear(self) -> None:
        with self._lock:
            self._loaded.clear()
