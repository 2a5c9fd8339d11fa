"""`loom batch` and `engine.batch`: items from sweeps and params files, the manifest, resuming
after a kill, failed items listed and retried, the shared executor of the local backend."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import Executor, Graph, GraphError, Registry, Settings
from engine.batch import LocalBackend, Manifest, batch_items, item_key, run_batch, sweep_values
from engine.cli import main

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def item_graph(journal: Path | None = None, fail_file: Path | None = None, seconds: float = 0.0) -> dict:
    return {"loom": 1, "params": {"seed": {"node": "item", "input": "seed"}},
            "nodes": {"item": {"type": "test.batch_item", "inputs": {
                "seed": 0, "seconds": seconds, "journal": str(journal or ""),
                "fail_seeds_file": str(fail_file or "")}}}}


@pytest.fixture
def registry():
    registry = Registry()
    registry.load_module("loom_batch_nodes")
    return registry


def local_backend(registry, tmp_path) -> LocalBackend:
    settings = Settings(output_dir=tmp_path / "unused", input_dir=tmp_path, models_dirs=[tmp_path])
    return LocalBackend(Executor(registry=registry, settings=settings))


# -- items ----------------------------------------------------------------------------------

def test_sweeps_read_ranges_lists_files_and_json(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n\n a blue square \n")
    assert sweep_values("seed=3..6") == ("seed", [3, 4, 5, 6])
    assert sweep_values("cfg=4,5.5,7") == ("cfg", [4, 5.5, 7])
    assert sweep_values(f"prompt=@{prompts}") == ("prompt", ["a red circle", "a blue square"])
    assert sweep_values("sampler=euler") == ("sampler", ["euler"])
    assert sweep_values("size=[[64,64],[96,64]]") == ("size", [[64, 64], [96, 64]])


@pytest.mark.parametrize("spec, message", [("seed", "expects name=values"), ("seed=9..2", "empty range"),
                                           ("prompt=@/no/such/file", "cannot read")])
def test_bad_sweeps_say_what_is_wrong(spec, message):
    with pytest.raises(GraphError, match=message):
        sweep_values(spec)


def test_items_combine_params_lines_with_sweeps(tmp_path):
    params = tmp_path / "params.jsonl"
    params.write_text('{"prompt": "a"}\n\n{"prompt": "b", "cfg": 2}\n')
    items = batch_items(params, ["seed=0..1"])
    assert items == [{"prompt": "a", "seed": 0}, {"prompt": "a", "seed": 1},
                     {"prompt": "b", "cfg": 2, "seed": 0}, {"prompt": "b", "cfg": 2, "seed": 1}]


def test_a_bad_params_line_is_named(tmp_path):
    params = tmp_path / "params.jsonl"
    params.write_text('{"seed": 1}\n[1, 2]\n')
    with pytest.raises(GraphError, match="line 2: expected an object"):
        batch_items(params)


@given(st.integers(-50, 50), st.integers(0, 60))
def test_a_range_sweep_is_every_integer_inclusive(low, width):
    name, values = sweep_values(f"seed={low}..{low + width}")
    assert values == list(range(low, low + width + 1))


@given(st.dictionaries(st.text(min_size=1, max_size=5), st.integers() | st.text(max_size=5), max_size=4))
def test_item_keys_ignore_key_order_and_tell_params_apart(params):
    graph = Graph.from_dict(item_graph())
    reordered = dict(reversed(list(params.items())))
    assert item_key(graph, params) == item_key(graph, reordered)
    assert item_key(graph, params) != item_key(graph, {**params, "\x00extra": 1})


def test_manifest_skips_a_torn_line_and_appends_after_it(tmp_path):
    manifest = Manifest(tmp_path / "manifest.jsonl")
    manifest.append({"key": "a", "status": "succeeded"})
    with open(manifest.path, "a") as f:
        f.write('{"key": "b", "stat')          # killed mid-write
    manifest.append({"key": "c", "status": "failed"})
    assert {k: r["status"] for k, r in manifest.latest().items()} == {"a": "succeeded", "c": "failed"}


# -- running --------------------------------------------------------------------------------

def test_local_batch_records_outputs_and_retries_only_failed_items(registry, tmp_path):
    journal, fail_file, out = tmp_path / "journal", tmp_path / "fail.json", tmp_path / "out"
    fail_file.write_text("[1, 3]")
    graph = Graph.from_dict(item_graph(journal, fail_file))
    items = [{"seed": s} for s in range(5)]
    report = run_batch(graph, items, out, local_backend(registry, tmp_path))
    assert (report.succeeded, report.images) == (3, 3)
    assert [(r["item"], r["error"]["node"]) for r in report.failed] == [(1, "item"), (3, "item")]
    assert "seed 1 is on the fail list" in report.failed[0]["error"]["message"]
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    first = records[0]
    assert first["status"] == "succeeded" and first["params"] == {"seed": 0}
    assert first["files"] == ["00000-item-0.png"] and (out / "00000-item-0.png").read_bytes()[:4] == b"\x89PNG"
    assert first["outputs"] == {"item": {"value": "00000-item-0.png"}}

    fail_file.write_text("[]")
    again = run_batch(graph, items, out, local_backend(registry, tmp_path))
    assert (again.skipped, again.succeeded, again.failed) == (3, 2, [])
    assert sorted(journal.read_text().split()) == ["0", "1", "2", "3", "4"]


def test_local_batch_shares_one_executor_so_models_load_once(tmp_path):
    sys.path.insert(0, str(HERE.parent / "ray"))
    registry = Registry()
    registry.load_module("loom_ray_nodes")
    registry.load_module("nodes.primitives")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "m.safetensors").write_bytes(b"weights")
    settings = Settings(output_dir=tmp_path / "o", input_dir=tmp_path, models_dirs=[tmp_path])
    graph = Graph.from_dict({"loom": 1, "params": {"seconds": {"node": "use", "input": "seconds"}}, "nodes": {
        "load": {"type": "test.load_model", "inputs": {"name": "m"}},
        "use": {"type": "test.use_model", "inputs": {"model": ["load", "value"], "seconds": 0.0}},
        "out": {"type": "show", "inputs": {"value": ["use", "value"]}}}})
    report = run_batch(graph, [{"seconds": i / 1000} for i in range(6)], tmp_path / "out",
                       LocalBackend(Executor(registry=registry, settings=settings)))
    assert (report.succeeded, report.model_loads) == (6, 1)


# -- the command ----------------------------------------------------------------------------

def batch_command(graph_file: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "engine.cli", "batch", str(graph_file), "--out", str(out),
            "--nodes", "loom_batch_nodes", "--cache-dir", str(out.parent / "cache"), *extra]


def test_a_killed_batch_resumes_without_repeating_finished_items(tmp_path):
    journal, out = tmp_path / "journal", tmp_path / "out"
    graph_file = tmp_path / "graph.json"
    graph_file.write_text(json.dumps(item_graph(journal, seconds=0.15)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])}
    command = batch_command(graph_file, out, "--sweep", "seed=0..29")
    first = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while not manifest.exists() or len(manifest.read_text().splitlines()) < 8:
        assert first.poll() is None, first.stderr.read().decode()
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    done_before = {json.loads(line)["params"]["seed"] for line in manifest.read_text().splitlines()
                   if line.strip().endswith("}")}
    assert 8 <= len(done_before) < 30

    second = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr
    assert f"{len(done_before)} already done earlier" in second.stderr
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert sorted(r["params"]["seed"] for r in records) == list(range(30))
    assert all(r["status"] == "succeeded" for r in records)
    completions = journal.read_text().split()
    assert all(completions.count(str(seed)) == 1 for seed in done_before), "a finished item ran again"
    assert len(list(out.glob("*-item-*.png"))) == 30


def test_the_command_lists_failed_items_and_exits_1(tmp_path, capsys, monkeypatch):
    fail_file, out = tmp_path / "fail.json", tmp_path / "out"
    fail_file.write_text("[2]")
    graph_file = tmp_path / "graph.json"
    graph_file.write_text(json.dumps(item_graph(fail_file=fail_file)))
    monkeypatch.chdir(tmp_path)
    code = main(["batch", str(graph_file), "--sweep", "seed=0..3", "--out", str(out),
                 "--nodes", "loom_batch_nodes", "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 1
    assert "3 of 4 done" in err and "1 failed" in err
    assert "seed 2 is on the fail list" in err and "{'seed': 2}" in err

    fail_file.write_text("[]")
    assert main(["batch", str(graph_file), "--sweep", "seed=0..3", "--out", str(out),
                 "--nodes", "loom_batch_nodes", "--cache-dir", str(tmp_path / "cache")]) == 0
    assert "4 of 4 done (3 already done earlier)" in capsys.readouterr().err


def test_a_batch_without_items_is_refused(tmp_path, capsys):
    graph_file = tmp_path / "graph.json"
    graph_file.write_text(json.dumps(item_graph()))
    assert main(["batch", str(graph_file), "--nodes", "loom_batch_nodes"]) == 2
    assert "--params" in capsys.readouterr().err


def test_extra_node_modules_do_not_leak_into_the_installed_catalogue(tmp_path):
    from engine.cli import _registry

    before = {spec.type for spec in _registry()}
    graph_file = tmp_path / "graph.json"
    graph_file.write_text(json.dumps(item_graph()))
    assert main(["batch", str(graph_file), "--nodes", "loom_batch_nodes", "--sweep", "seed=0..1",
                 "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]) == 0
    assert {spec.type for spec in _registry()} == before
