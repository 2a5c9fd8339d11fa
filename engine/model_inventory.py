"""What the models folders hold, what Loom recorded about each model, and whether it still holds.

Each kind folder (`models/checkpoints`, `models/loras`, ...) keeps a small record file,
`.loom-models.json`, written when Loom installs a model: its source (hub repository and
commit, or URL), and for every weight file its size and SHA-256. `verify` re-hashes
against that record, so a file edited, replaced or cut short since it was installed is
reported by name.
"""
from __future__ import annotations

import json
import shutil
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from .errors import LoomError
from .files import atomic_write
from .hub_files import WEIGHT_SUFFIXES
from .model_files import BadModelFile, check_model_file, file_format, sha256_of
from .models import ModelNotFound, ModelPaths

RECORD_FILE = ".loom-models.json"
FamilyDetector = Callable[[Path, str], "str | None"]
_record_lock = threading.Lock()


@dataclass
class ModelEntry:
    name: str
    kind: str
    path: Path
    size: int
    format: str                     # diffusers, safetensors, gguf, pickle, unknown
    family: str | None = None
    sha256: str | None = None       # on record, single files only
    source: str | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        return data


@dataclass
class Verdict:
    entry: ModelEntry
    status: str                     # ok, changed, truncated, missing, unrecorded
    problems: list[str] = field(default_factory=list)


def weight_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*")
                  if p.is_file() and p.suffix in WEIGHT_SUFFIXES and not _hidden(p, path))


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def read_records(folder: Path) -> dict[str, dict]:
    try:
        data = json.loads((folder / RECORD_FILE).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as exc:
        raise LoomError(f"{folder / RECORD_FILE}: unreadable model record ({exc})") from None
    return data if isinstance(data, dict) else {}


def record_install(path: Path, source: str) -> dict:
    """Hash `path`'s weight files and remember them, with where they came from."""
    files = {str(p.relative_to(path)) if path.is_dir() else "": {
        "size": p.stat().st_size, "sha256": sha256_of(p)} for p in weight_files(path)}
    entry = {"source": source, "files": files}
    with _record_lock:
        records = read_records(path.parent)
        records[path.name] = entry
        atomic_write(path.parent / RECORD_FILE,
                     (json.dumps(records, indent=1, sort_keys=True) + "\n").encode())
    return entry


def forget(path: Path) -> None:
    with _record_lock:
        records = read_records(path.parent)
        if records.pop(path.name, None) is not None:
            atomic_write(path.parent / RECORD_FILE,
                         (json.dumps(records, indent=1, sort_keys=True) + "\n").encode())


class Inventory:
    def __init__(self, paths: ModelPaths, detect_family: FamilyDetector | None = None):
        self.paths = paths
        self.detect_family = detect_family

    def entries(self, kind: str | None = None) -> list[ModelEntry]:
        kinds = [kind] if kind else self.paths.kinds()
        found: list[ModelEntry] = []
        seen: set[Path] = set()
        for k in kinds:
            for folder in self.paths.folders(k):
                if not folder.is_dir():
                    continue
                records = read_records(folder)
                for name in self.paths.list_folder(folder):
                    path = (folder / name).resolve()
                    if path in seen:
                        continue
                    seen.add(path)
                    found.append(self._entry(k, folder / name, records.get(name)))
        return found

    def _entry(self, kind: str, path: Path, record: dict | None) -> ModelEntry:
        files = weight_files(path)
        size = sum(p.stat().st_size for p in files) if path.is_dir() else path.stat().st_size
        fmt = "diffusers" if path.is_dir() else file_format(path)
        sha = (record or {}).get("files", {}).get("", {}).get("sha256") if path.is_file() else None
        family = self.detect_family(path, kind) if self.detect_family else None
        return ModelEntry(name=path.name, kind=kind, path=path, size=size, format=fmt,
                          family=family, sha256=sha, source=(record or {}).get("source"))

    def find(self, name: str) -> list[ModelEntry]:
        """Entries called `name` (`kind/name` to pick one kind); suffix optional."""
        kind, _, bare = name.rpartition("/")
        matches = [e for e in self.entries(kind or None)
                   if e.name == bare or e.path.stem == bare]
        if not matches:
            known = ", ".join(sorted(f"{e.kind}/{e.name}" for e in self.entries())) or "none"
            raise ModelNotFound(f"no model named {name!r} (installed: {known})")
        return matches

    def verify(self, entry: ModelEntry) -> Verdict:
        if not entry.path.exists():
            return Verdict(entry, "missing", [f"{entry.path} no longer exists"])
        record = read_records(entry.path.parent).get(entry.name)
        problems: list[str] = []
        status = "ok"
        for file in weight_files(entry.path):
            label = str(file.relative_to(entry.path)) if entry.path.is_dir() else ""
            try:
                check_model_file(file, allow_pickle=True)
            except BadModelFile as exc:
                problems.append(str(exc))
                status = "truncated"
                continue
            expected = (record or {}).get("files", {}).get(label)
            if expected is None:
                continue
            if file.stat().st_size != expected["size"]:
                problems.append(f"{file.name}: {file.stat().st_size} bytes, "
                                f"{expected['size']} on record")
                status = "truncated" if file.stat().st_size < expected["size"] else "changed"
            elif sha256_of(file) != expected["sha256"]:
                problems.append(f"{file.name}: content differs from the SHA-256 on record")
                status = "changed" if status == "ok" else status
        if record is None and status == "ok":
            status = "unrecorded"
        return Verdict(entry, status, problems)

    def remove(self, entry: ModelEntry) -> None:
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink()
        forget(entry.path)
