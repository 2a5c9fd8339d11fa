"""Finding model files by name and holding each loaded model in memory once.

Folders follow ComfyUI's layout (`models/checkpoints`, `models/loras`, ...), searched
in order: every `--models-dir`, then the folders an extra-paths file lists
(YAML or JSON: `{kind: [folder, ...]}`, relative entries taken from the file's folder).
"""
from __future__ import annotations

import hashlib
import os
import threading
import weakref
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from .errors import LoomError
from .files import atomic_write
from .footprint import device_bytes, dtype_bytes, owned_objects
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
        if isinstance(folders, dict):      # ComfyUI's extra_model_paths.yaml: one section per install
            _add_comfy_section(path, kind, folders, extra)
            continue
        folders = [folders] if isinstance(folders, str) else folders
        if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
            raise LoomError(f"{path}: '{kind}' must be a folder or a list of folders")
        extra.setdefault(kind, []).extend((path.parent / f).resolve() for f in folders)
    return extra


def _add_comfy_section(path: Path, name: str, section: dict, extra: dict[str, list[Path]]) -> None:
    """`{base_path, kind: "folder" or "one folder per line", ...}`, folders relative to base_path
    (itself relative to the file), as ComfyUI reads its extra_model_paths.yaml."""
    base = path.parent / os.path.expanduser(str(section.get("base_path") or ""))
    for kind, folders in section.items():
        if kind in ("base_path", "is_default"):
            continue
        if not isinstance(folders, str):
            raise LoomError(f"{path}: '{name}.{kind}' must be a folder, or folders one per line")
        extra.setdefault(kind, []).extend((base / f.strip()).resolve() for f in folders.splitlines() if f.strip())


_digest_memo: OrderedDict[tuple, str] = OrderedDict()   # file stamps -> digest, newest last
_DIGEST_MEMO_SIZE = 4096


_digest_memo_lock = threading.Lock()


def _remember_digest(stamp: tuple, digest: str) -> None:
    with _digest_memo_lock:
        _digest_memo[stamp] = digest
        _digest_memo.move_to_end(stamp)
        while len(_digest_memo) > _DIGEST_MEMO_SIZE:
            _digest_memo.popitem(last=False)


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
        _remember_digest(stamp, cached)
        return cached
    h = hashlib.blake2b(digest_size=16)
    for p in files:
        h.update(os.fsencode(p.relative_to(path)) if path.is_dir() else b"")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    digest = h.hexdigest()
    _remember_digest(stamp, digest)
    if memo_file is not None:
        _write_atomically(memo_file, digest)
    return digest


def _write_atomically(path: Path, text: str) -> None:
    try:
        atomic_write(path, text.encode())
    except OSError:
        pass  # a memo that cannot be written only costs a re-read next time


def default_budget(device: str) -> int:
    """Bytes of models a device may hold when none is configured: half the machine's RAM for
    the CPU, 80 % of an accelerator's own memory."""
    if device.startswith("cuda"):
        import torch

        index = int(device.partition(":")[2] or 0)
        return int(torch.cuda.get_device_properties(index).total_memory * 0.8)
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass
class _Loaded:
    model: Any
    devices: dict[str, int]      # device -> bytes
    objects: set[int]            # ids of what the model consists of (see footprint.owned_objects)
    report: "LoadedModel | None" = None


@dataclass(frozen=True)
class LoadedModel:
    """One model in memory as users see it (`loom run --models`, GET /v1/models/loaded).

    name     the file or folder it was loaded from, as the graph named it
    kind     what its loader calls it (checkpoint, diffusion_model, text_encoder, vae, ...)
    devices  bytes on each device
    dtypes   bytes in each tensor dtype (a quantized model's packed blocks count as uint8)
    details  what its loader adds, e.g. {"quantization": "GGUF Q4_K"} or {"upcast": "F8_E4M3 -> float16"}
    """

    name: str
    kind: str
    devices: dict[str, int]
    dtypes: dict[str, int]
    details: dict[str, str] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return sum(self.devices.values())

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "bytes": self.bytes, "devices": dict(self.devices),
                "dtypes": dict(self.dtypes), "details": dict(self.details)}


class ModelManager:
    """Loaded models keyed by identity (file content + load settings), so each is in memory once.

    Each device holds models within a byte budget (`budget_bytes`, else `default_budget`):
    loading past it unloads the least recently used models, tells `on_unload` listeners (the
    result cache drops results that reference them) and, on CUDA, returns the freed memory to
    the driver. Two runs asking for the same model at once wait for one load.
    """

    def __init__(self, paths: ModelPaths, budget_bytes: int | None = None):
        self.paths = paths
        self.budget_bytes = budget_bytes
        self._loaded: OrderedDict[tuple, _Loaded] = OrderedDict()
        self._loading: dict[tuple, Future] = {}
        self._objects: set[int] = set()
        self._listeners: list[Callable[[], Callable[[set[int]], None] | None]] = []
        self._lock = threading.Lock()

    def on_unload(self, listener: Callable[[set[int]], None]) -> None:
        """Call `listener(object ids)` after unloading; a bound method is held weakly, so a
        result cache that goes away is not kept alive by the manager it used."""
        with self._lock:
            self._listeners = [ref for ref in self._listeners if ref() is not None]
            self._listeners.append(weakref.WeakMethod(listener) if hasattr(listener, "__self__")
                                   else (lambda: listener))

    def owns(self, object_id: int) -> bool:
        """Whether the object with this id is part of a loaded model."""
        return object_id in self._objects

    def budget(self, device: str) -> int:
        return self.budget_bytes if self.budget_bytes is not None else default_budget(device)

    def bytes(self, device: str | None = None) -> int:
        """Bytes of loaded models, on one device or on all."""
        with self._lock:
            return sum(n for entry in self._loaded.values() for d, n in entry.devices.items()
                       if device is None or d == device)

    def loaded(self) -> list[LoadedModel]:
        """The models in memory now, least recently used first."""
        with self._lock:
            return [entry.report for entry in self._loaded.values() if entry.report is not None]

    def get(self, identity: tuple, load: Callable[[], Any], *, name: str = "", kind: str = "",
            describe: Callable[[Any], dict[str, str]] | None = None) -> Any:
        """The model with this identity, loaded by `load()` unless it is in memory. `name`, `kind`
        (default: the identity's first part) and `describe(model)` (details such as its
        quantization) are what `loaded()` reports for it."""
        with self._lock:
            entry = self._loaded.get(identity)
            if entry is not None:
                self._loaded.move_to_end(identity)
                return entry.model
            pending = self._loading.get(identity)
            loader = pending is None
            if loader:
                pending = self._loading[identity] = Future()
        if not loader:
            return pending.result()     # another run is loading it: share that load
        try:
            model = load()
        except BaseException as exc:
            with self._lock:
                del self._loading[identity]
            pending.set_exception(exc)
            raise
        devices = device_bytes(model)
        report = LoadedModel(name or "", kind or str(identity[0]), devices, dtype_bytes(model),
                             describe(model) if describe is not None else {})
        entry = _Loaded(model, devices, owned_objects(model), report)
        with self._lock:
            del self._loading[identity]
            self._loaded[identity] = entry
            self._objects |= entry.objects
            unloaded = self._over_budget(identity)
        pending.set_result(model)
        self._release(unloaded)
        return model

    def _over_budget(self, keep: tuple) -> list[_Loaded]:
        """Unload least recently used models until every device is within its budget."""
        unloaded = []
        for device in {d for entry in self._loaded.values() for d in entry.devices}:
            budget = self.budget(device)
            used = sum(entry.devices.get(device, 0) for entry in self._loaded.values())
            for identity in list(self._loaded):
                if used <= budget:
                    break
                entry = self._loaded[identity]
                if identity == keep or device not in entry.devices:
                    continue
                del self._loaded[identity]
                used -= entry.devices[device]
                unloaded.append(entry)
        for entry in unloaded:
            self._objects -= entry.objects
        return unloaded

    def _release(self, unloaded: list[_Loaded]) -> None:
        if not unloaded:
            return
        objects = set().union(*(entry.objects for entry in unloaded))
        for ref in list(self._listeners):
            listener = ref()
            if listener is not None:
                listener(objects)
        if any(d.startswith("cuda") for entry in unloaded for d in entry.devices):
            import torch

            unloaded.clear()        # drop the last references before asking torch to free
            torch.cuda.empty_cache()

    def __len__(self) -> int:
        return len(self._loaded)

    def __contains__(self, identity: tuple) -> bool:
        """Whether the model with this identity is loaded now (not evicted)."""
        return identity in self._loaded

    def clear(self) -> None:
        with self._lock:
            unloaded = list(self._loaded.values())
            self._loaded.clear()
            self._objects.clear()
        self._release(unloaded)
