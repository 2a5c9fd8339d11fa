"""How many bytes a value holds, for the result cache and the model manager's budgets.

Tensors are counted by their storage (a view of a batch holds the whole batch), each
storage once however many values share it. Objects the model manager owns (loaded
modules, tokenizers) are not counted here at all: they are named in `models`, so the
cache can let go of every result that references a model the manager unloads.
The walk is iterative: a deeply nested value cannot exhaust the stack.
"""
from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass
class Footprint:
    plain: int = 0                                          # bytes outside tensor storages
    storages: dict[int, int] = field(default_factory=dict)  # storage id -> its bytes
    models: set[int] = field(default_factory=set)           # ids of model-manager objects met

    @property
    def bytes(self) -> int:
        return self.plain + sum(self.storages.values())


_SCALARS = frozenset({int, float, bool, str, type(None)})


def is_module(value: Any) -> bool:
    """A torch module (diffusers, transformers and spandrel models are ones)."""
    return callable(getattr(value, "parameters", None)) and callable(getattr(value, "buffers", None)) \
        and callable(getattr(value, "state_dict", None))


def _is_tensor(value: Any) -> bool:
    """A torch tensor, subclasses defined elsewhere included (diffusers' GGUFParameter holds its
    quantized blocks in an ordinary storage); without torch imported there are none."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def storage_of(tensor: Any) -> tuple[int, int]:
    """(identity, bytes) of the memory a tensor lives in."""
    storage = tensor.untyped_storage()
    pointer = storage.data_ptr()
    return (pointer if pointer else id(storage)), storage.nbytes()


def _children(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield v
    elif isinstance(value, (list, tuple, set, frozenset)):
        yield from value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield getattr(value, f.name)
    elif hasattr(value, "__dict__") and not isinstance(value, type):
        yield from vars(value).values()


def footprint(value: Any, owned: Callable[[int], bool] = lambda _: False) -> Footprint:
    """What `value` holds; `owned(id)` says which objects belong to the model manager."""
    fp = Footprint()
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind in _SCALARS:                 # most results: numbers and short text
            fp.plain += len(item) + 49 if kind is str else sys.getsizeof(item)
            continue
        if id(item) in seen:
            continue
        seen.add(id(item))
        if owned(id(item)):
            fp.models.add(id(item))
        elif _is_tensor(item):
            key, nbytes = storage_of(item)
            fp.storages[key] = nbytes
        elif is_module(item):
            stack.extend((*item.parameters(), *item.buffers()))
        elif hasattr(item, "nbytes") and isinstance(getattr(item, "nbytes"), int):
            fp.plain += item.nbytes                           # numpy arrays
        elif type(item).__module__.startswith("PIL") and hasattr(item, "getbands"):
            width, height = item.size
            fp.plain += width * height * len(item.getbands())
        elif isinstance(item, (str, bytes, bytearray)):
            fp.plain += len(item) + 49
        else:
            fp.plain += sys.getsizeof(item)
            stack.extend(_children(item))
    return fp


def owned_objects(model: Any) -> set[int]:
    """Ids of the objects a loaded model consists of (itself, its modules, tokenizers and the
    containers holding them), without descending into modules or plain values."""
    ids: set[int] = set()
    stack = [model]
    while stack:
        item = stack.pop()
        if id(item) in ids or isinstance(item, (str, bytes, int, float, bool, type(None))):
            continue
        ids.add(id(item))
        if not is_module(item) and not _is_tensor(item):
            stack.extend(_children(item))
    return ids


def _model_storages(model: Any) -> dict[int, tuple[str, str, int]]:
    """storage -> (device, dtype, bytes) for every tensor storage a loaded model holds."""
    storages: dict[int, tuple[str, str, int]] = {}
    seen: set[int] = set()
    stack = [model]
    while stack:
        item = stack.pop()
        if id(item) in seen or isinstance(item, (str, bytes, int, float, bool, type(None))):
            continue
        seen.add(id(item))
        if _is_tensor(item):
            key, nbytes = storage_of(item)
            storages[key] = (str(item.device), str(item.dtype).removeprefix("torch."), nbytes)
        elif is_module(item):
            stack.extend((*item.parameters(), *item.buffers()))
        else:
            stack.extend(_children(item))
    return storages


def _totals(pairs) -> dict[str, int]:
    totals: dict[str, int] = {}
    for key, nbytes in pairs:
        totals[key] = totals.get(key, 0) + nbytes
    return totals


def device_bytes(model: Any) -> dict[str, int]:
    """Bytes a loaded model holds on each device ("cpu", "cuda:0", ...), each storage once."""
    return _totals((device, n) for device, _, n in _model_storages(model).values())


def dtype_bytes(model: Any) -> dict[str, int]:
    """Bytes a loaded model holds in each tensor dtype ("float16", "uint8" for packed quantized
    blocks, ...), each storage once."""
    return _totals((dtype, n) for _, dtype, n in _model_storages(model).values())
