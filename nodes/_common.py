"""Helpers shared by the diffusion node modules (not scanned for nodes: the name starts with _).

Device and dtype from settings, model-name resolution that reports the node input,
and the seeded noise every sampler and test uses.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine.errors import NodeInputError
from engine.settings import Settings

if TYPE_CHECKING:
    import torch

# setting value -> name of the torch dtype (torch itself is imported only when a node runs)
_DTYPES = {"float32": "float32", "fp32": "float32", "float16": "float16",
           "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16"}


def no_grad(fn):
    """`torch.no_grad()` as a decorator that imports torch when `fn` is called, not when its
    module is imported: the node catalogue loads without torch."""
    @functools.wraps(fn)
    def without_grad(*args, **kwargs):
        import torch

        with torch.no_grad():
            return fn(*args, **kwargs)
    return without_grad


def torch_dtype(settings: Settings) -> torch.dtype:
    import torch

    try:
        return getattr(torch, _DTYPES[str(settings.dtype)])
    except KeyError:
        raise NodeInputError(None, f"unknown dtype setting {settings.dtype!r} "
                                   f"(one of {', '.join(_DTYPES)})") from None


def option(settings: Settings, name: str, default: Any = False) -> Any:
    return (settings.options or {}).get(name, default)


def resolve_model(ctx_or_settings: Any, kind: str, name: str, input_name: str = "name") -> Path:
    """The file or folder called `name` under models/<kind>, or NodeInputError naming the input."""
    from engine.models import ModelNotFound, ModelPaths

    paths = getattr(getattr(ctx_or_settings, "models", None), "paths", None)
    if paths is None:
        settings = getattr(ctx_or_settings, "settings", ctx_or_settings)
        paths = ModelPaths(settings.models_dirs, settings.extra_model_paths)
    try:
        return paths.resolve(kind, name)
    except ModelNotFound as exc:
        raise NodeInputError(input_name, str(exc)) from None


def input_file(settings: Settings, name: str, input_name: str, what: str = "file") -> Path:
    """`name` inside the run's input folder (never outside it), or an error naming the input."""
    from engine.paths import UnsafePath, contained

    try:
        path = contained(settings.input_dir, name)
    except UnsafePath as exc:
        raise NodeInputError(input_name, str(exc)) from None
    if not path.is_file():
        raise NodeInputError(input_name, f"no {what} {name!r} in {settings.input_dir}")
    return path


PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def refuse_pickle(settings: Settings, path: Path, input_name: str = "name") -> None:
    """Pickle files can run code when loaded: refused unless the user opted in (and then they
    are read with weights_only)."""
    if path.suffix in PICKLE_SUFFIXES and not settings.allow_pickle:
        raise NodeInputError(input_name, f"{path.name} is a pickle file, which can run code when loaded; "
                                         "convert it to .safetensors or opt in with the allow_pickle "
                                         "setting (it is then read with weights_only)")


def read_state_dict(settings: Settings, path: Path, input_name: str = "name") -> dict:
    """Tensors of a .safetensors file, or of a pickle file when the user allows pickles."""
    import torch
    refuse_pickle(settings, path, input_name)
    if path.suffix in PICKLE_SUFFIXES:
        return torch.load(path, map_location="cpu", weights_only=True)
    from safetensors.torch import load_file

    return load_file(str(path))


def fingerprint_model(settings: Settings, kind: str, name: str) -> str:
    """Content digest of models/<kind>/<name> in the run's configured folders; a missing file
    gets a stable marker so the node itself reports it, naming its input, when it runs."""
    from engine.models import file_digest

    try:
        return file_digest(resolve_model(settings, kind, name), settings.digest_memo_dir)
    except NodeInputError:
        return f"missing:{kind}/{name}"


def seeded_noise(shape: tuple[int, ...], seed: int, offsets: list[int]) -> tuple[torch.Tensor, list[torch.Generator]]:
    """Gaussian noise [B, ...] where item i comes from its own CPU generator seeded seed + offsets[i].

    The generators are returned too: ancestral schedulers draw their step noise from them, so
    an item's whole trajectory depends only on its own seed, never on its batch position.
    """
    import torch
    generators = [torch.Generator("cpu").manual_seed((seed + off) % 2**64) for off in offsets]
    noise = torch.cat([torch.randn((1, *shape[1:]), generator=g, dtype=torch.float32)
                       for g in generators])
    return noise, generators


def _already_on(module: Any, device: str) -> bool:
    """Whether the module lies on `device` ("cuda" meaning the current CUDA device). Modules
    move whole (here and in the model manager), so the first parameter says where all are."""
    import torch

    first = next(module.parameters(), None) if hasattr(module, "parameters") else None
    if first is None:
        return False
    target = torch.device(device)
    if target.type == "cuda" and target.index is None:
        target = torch.device("cuda", torch.cuda.current_device())
    return first.device == target


class on_device:
    """Keep modules on the run's device while in use; with the cpu_offload option they live
    on the CPU and visit the device only for the duration of the block."""

    def __init__(self, ctx: Any, *modules: Any):
        self.device = ctx.settings.device
        self.offload = bool(option(ctx.settings, "cpu_offload")) and self.device != "cpu"
        self.modules = [m for m in modules if m is not None]

    def __enter__(self):
        for m in self.modules:
            if not _already_on(m, self.device):   # a module's .to() walks every parameter, even to stay put
                m.to(self.device)
        return self

    def __exit__(self, *exc):
        if self.offload:
            for m in self.modules:
                m.to("cpu")
        return False
