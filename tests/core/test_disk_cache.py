"""The disk tier: what one process computes, the next reuses; corruption is a miss, never a crash."""
import dataclasses
import sqlite3
from collections import OrderedDict

import numpy as np
import pytest
import torch
from PIL import Image

from engine import Cache, DiskCache, Executor, MemoryCache
from engine.explain import RunHistory
from engine.serialize import Unpersistable, allow_types, pack, unpack

from .helpers import chain


@dataclasses.dataclass
class Holder:
    tensor: torch.Tensor
    label: str
    extra: dict


@pytest.mark.parametrize("value", [
    torch.arange(12, dtype=torch.float32).reshape(3, 4),
    torch.ones(2, 3, dtype=torch.bfloat16),
    torch.zeros(0, 4, dtype=torch.int64),
    torch.tensor(True),
])
def test_tensors_round_trip_with_dtype_and_shape(value):
    back = unpack(pack({"v": value}))["v"]
    assert back.dtype == value.dtype and back.shape == value.shape and torch.equal(back, value)


def test_arrays_images_dataclasses_and_tuples_round_trip():
    array = np.random.default_rng(0).random((3, 5)).astype(np.float16)
    image = Image.new("RGB", (7, 5), (10, 20, 30))
    palette = Image.new("P", (4, 4))
    holder = Holder(torch.ones(2), "x", {"k": (1, 2)})
    allow_types(Holder)                    # as registering a node with this port type does
    back = unpack(pack({"a": array, "i": image, "p": palette, "h": holder, "t": (1, "b")}))
    assert np.array_equal(back["a"], array) and back["a"].dtype == array.dtype
    assert back["i"].tobytes() == image.tobytes() and back["p"].mode == "P"
    assert back["h"].label == "x" and torch.equal(back["h"].tensor, holder.tensor)
    assert back["h"].extra == {"k": (1, 2)} and back["t"] == (1, "b")


def test_models_and_other_objects_are_not_persisted(tmp_path):
    with pytest.raises(Unpersistable):
        pack({"model": torch.nn.Linear(2, 2)})
    disk = DiskCache(tmp_path)
    assert disk.put("k" * 32, {"model": torch.nn.Linear(2, 2)}) is False
    assert not disk.contains("k" * 32)


def stored_blob(disk, key):
    return sqlite3.connect(disk.folder / "index.sqlite").execute(
        "SELECT blob FROM entries WHERE key = ?", (key,)).fetchone()[0]


def damage_entry(disk, key, damage):
    """Corrupt a stored entry in place, wherever it lives (packed in the index or a file)."""
    blob = stored_blob(disk, key)
    if blob is None:
        path = disk._path(key)
        path.write_bytes(damage(path.read_bytes()))
    else:
        with sqlite3.connect(disk.folder / "index.sqlite") as db:
            db.execute("UPDATE entries SET blob = ? WHERE key = ?", (damage(blob), key))


@pytest.mark.parametrize("value", [list(range(100)), b"x" * 200_000], ids=["packed", "file"])
def test_corrupt_and_truncated_entries_are_dropped(tmp_path, value):
    disk = DiskCache(tmp_path)
    for key, damage in [("a" * 32, lambda b: b[:-3]), ("b" * 32, lambda b: b[:10] + b"X" + b[11:]),
                        ("c" * 32, lambda b: b"garbage")]:
        disk.put(key, {"value": value})
        damage_entry(disk, key, damage)
        assert disk.get(key) is None
        assert not disk.contains(key) and not disk._path(key).exists()


def set_last_use(disk, key, when):
    with sqlite3.connect(disk.folder / "index.sqlite") as db:
        db.execute("UPDATE entries SET used = ? WHERE key = ?", (when, key))


def test_budget_evicts_least_recently_used_down_to_the_low_water_mark(tmp_path):
    disk = DiskCache(tmp_path, budget_bytes=4000)
    for i in range(4):
        disk.put(f"{i:032d}", {"v": b"x" * 900})
        set_last_use(disk, f"{i:032d}", i)          # distinct, ordered use times
    disk.get(f"{0:032d}")                           # touch the oldest: now most recent
    disk.put("f" * 32, {"v": b"x" * 900})
    info = disk.info()
    assert info["bytes"] <= 4000 * 0.8 and info["entries"] == 3      # one pass, to the low-water mark
    assert disk.contains(f"{0:032d}") and disk.contains("f" * 32)
    assert not disk.contains(f"{1:032d}") and not disk.contains(f"{2:032d}")


def test_small_results_are_packed_and_large_ones_are_files(tmp_path):
    disk = DiskCache(tmp_path)
    disk.put("d" * 32, {"value": 1})
    disk.put("e" * 32, {"value": torch.zeros(100_000)})
    assert disk.info()["bytes"] < 100 + 400_000
    assert stored_blob(disk, "d" * 32) is not None and not disk._path("d" * 32).exists()
    files = [p.name for p in (tmp_path / "entries").rglob("*") if p.is_file()]
    assert files == ["e" * 32]                      # no temporary files left behind
    assert disk.get("d" * 32) == {"value": 1} and torch.equal(disk.get("e" * 32)["value"], torch.zeros(100_000))
    assert DiskCache(tmp_path).info()["bytes"] == disk.info()["bytes"]   # a new process agrees


def test_an_int_result_costs_a_few_dozen_bytes(tmp_path):
    disk = DiskCache(tmp_path)
    disk.put("d" * 32, {"value": 12345})
    assert disk.info()["bytes"] < 64


@dataclasses.dataclass
class Unregistered:
    command: str


def test_the_decoder_builds_only_registered_port_types(tmp_path):
    disk = DiskCache(tmp_path)
    assert disk.put("a" * 32, {"value": Unregistered("rm -rf /")})  # written ...
    assert disk.get("a" * 32) is None                                # ... but never rebuilt
    with pytest.raises(ValueError, match="not a port type"):
        unpack(pack({"value": Unregistered("x")}))


def fresh_executor(registry, folder):
    """What a new `loom run` process gets: empty memory, the same folder on disk."""
    return Executor(registry=registry, cache=Cache(MemoryCache(), DiskCache(folder / "results")),
                    history=RunHistory(folder / "history"))


def test_a_new_process_reruns_only_dirty_nodes(registry, tmp_path):
    g = chain(6, registry)
    assert len(fresh_executor(registry, tmp_path).run(g.build()).ran) == 7
    assert fresh_executor(registry, tmp_path).run(g.build()).ran == []
    g.set("n3", "b", 2)
    result = fresh_executor(registry, tmp_path).run(g.build())
    assert result.ran == ["n3", "n4", "n5", "out"]
    assert result.cached == ["n2"]
    assert result.reasons["n3"] == "input `b` changed"


def test_corrupt_upstream_entry_is_recomputed(registry, tmp_path):
    g = chain(4, registry)
    fresh_executor(registry, tmp_path).run(g.build())
    g.set("n3", "b", 7)
    ex = fresh_executor(registry, tmp_path)
    plan = ex.plan(g.build())
    damage_entry(ex.cache.disk, plan.key("n2"), lambda b: b"LOOMC001" + b"\0" * 40)
    result = ex.run(g.build())
    assert result.outputs["out"]["value"] == 10.0
    assert result.ran == ["n2", "n3", "out"] and result.cached == ["n1"]


def test_file_digests_are_remembered_across_processes(tmp_path, monkeypatch):
    from engine import models

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"w" * 1000)
    memo = tmp_path / "digests"
    first = models.file_digest(weights, memo)
    monkeypatch.setattr(models, "_digest_memo", OrderedDict())  # a new process: empty memo
    reads = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda p, *a, **k: reads.append(p) or real_open(p, *a, **k))
    assert models.file_digest(weights, memo) == first
    assert str(weights) not in map(str, reads)          # answered from the memo, not re-read
    monkeypatch.setattr("builtins.open", real_open)
    weights.write_bytes(b"x" * 1000)                     # an edit changes the stamp
    assert models.file_digest(weights, memo) != first


def test_atomic_write_leaves_no_partial_file_when_writing_fails(tmp_path, monkeypatch):
    from engine.files import atomic_write

    target = tmp_path / "out.bin"
    atomic_write(target, b"first")
    monkeypatch.setattr("os.replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        atomic_write(target, b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
