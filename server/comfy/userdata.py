"""The editor's own files under the data folder: its settings and the user's saved workflows.

`DATA_DIR/comfy/settings.json` holds setting id -> value; `DATA_DIR/comfy/userdata/` holds
what the editor saves (workflows/*.json, subgraphs, ...). Every name from a request is
resolved with `engine.paths.contained`, so nothing outside those folders can be read,
written, moved or deleted. Writes are atomic.
"""
from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path
from typing import Any

from engine.files import atomic_write
from engine.paths import UnsafePath, contained

# No template browser over the canvas on first start; the default workflow is Loom's.
DEFAULT_SETTINGS = {"Comfy.TutorialCompleted": True}


class UserFileExists(Exception):
    pass


class UserData:
    def __init__(self, data_dir: Path):
        self.root = Path(data_dir) / "comfy"
        self.files = self.root / "userdata"
        self.settings_file = self.root / "settings.json"
        self._lock = threading.Lock()

    # -- settings -----------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        stored = {}
        if self.settings_file.is_file():
            try:
                stored = json.loads(self.settings_file.read_text())
            except (OSError, json.JSONDecodeError):
                stored = {}
        return {**DEFAULT_SETTINGS, **(stored if isinstance(stored, dict) else {})}

    def update_settings(self, values: dict[str, Any]) -> None:
        with self._lock:
            merged = {**self.settings(), **values}
            atomic_write(self.settings_file, json.dumps(merged, indent=1).encode(), durable=True)

    # -- the shell's own small state (e.g. which history entries were cleared) -----------

    def load_state(self, name: str) -> dict:
        try:
            value = json.loads((self.root / f"{name}.json").read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return value if isinstance(value, dict) else {}

    def save_state(self, name: str, value: dict) -> None:
        atomic_write(self.root / f"{name}.json", json.dumps(value).encode(), durable=True)

    # -- files --------------------------------------------------------------------------

    def path(self, name: str) -> Path:
        """The file `name` under the userdata folder; UnsafePath if it would leave it."""
        self.files.mkdir(parents=True, exist_ok=True)
        path = contained(self.files, name)
        if path == self.files.resolve():
            raise UnsafePath("a file name is needed")
        return path

    def list(self, folder: str, *, recurse: bool, full_info: bool, split: bool) -> list | None:
        """Files under `folder` (None when it does not exist), as the editor lists them."""
        base = self.path(folder)
        if not base.is_dir():
            return None
        found = sorted(base.rglob("*") if recurse else base.iterdir())
        out: list[Any] = []
        for path in found:
            if not path.is_file() or path.name.startswith(".tmp-"):
                continue
            relative = path.relative_to(base).as_posix()
            if full_info:
                out.append(self.info(path, relative))
            elif split:
                out.append([relative, *relative.split("/")])
            else:
                out.append(relative)
        return out

    def info(self, path: Path, relative: str | None = None) -> dict:
        stat = path.stat()
        return {"path": relative or path.relative_to(self.files.resolve()).as_posix(),
                "size": stat.st_size, "modified": stat.st_mtime,
                "created": getattr(stat, "st_birthtime", stat.st_ctime)}

    def write(self, name: str, data: bytes, *, overwrite: bool) -> Path:
        path = self.path(name)
        with self._lock:
            if path.exists() and not overwrite:
                raise UserFileExists(name)
            atomic_write(path, data, durable=True)
        return path

    def delete(self, name: str) -> bool:
        path = self.path(name)
        if not path.is_file():
            return False
        path.unlink()
        return True

    def move(self, source: str, dest: str, *, overwrite: bool) -> Path | None:
        src, dst = self.path(source), self.path(dest)
        if not src.is_file():
            return None
        with self._lock:
            if dst.exists() and not overwrite:
                raise UserFileExists(dest)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(src, dst)
        return dst
