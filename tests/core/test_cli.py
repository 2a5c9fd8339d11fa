"""The `loom` command: run, validate, explain, nodes, cache, and rerunning a graph from a PNG."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from engine.cli import main

ROOT = Path(__file__).resolve().parents[2]
ARITHMETIC = str(ROOT / "graphs" / "arithmetic.json")


@pytest.fixture
def cache_dir(tmp_path):
    return str(tmp_path / "cache")


def run_json(capsys, *args):
    code = main(["run", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


def statuses(report):
    return {n["node"]: n["status"] for n in report["nodes"]}


def test_run_then_rerun_then_edit(capsys, cache_dir):
    code, first = run_json(capsys, ARITHMETIC, "--cache-dir", cache_dir)
    assert code == 0 and first["status"] == "succeeded"
    assert first["outputs"] == {"result": {"value": 14.0}}   # numbers stay numbers
    _, second = run_json(capsys, ARITHMETIC, "--cache-dir", cache_dir)
    assert statuses(second) == {"result": "cached"}
    _, edited = run_json(capsys, ARITHMETIC, "--cache-dir", cache_dir, "--set", "factor=5")
    assert statuses(edited) == {"offset": "cached", "scale": "ran", "result": "ran"}
    _, uncached = run_json(capsys, ARITHMETIC, "--cache-dir", cache_dir, "--no-cache")
    assert set(statuses(uncached).values()) == {"ran"}


def test_a_second_process_reuses_the_disk_cache(cache_dir):
    command = [sys.executable, "-m", "engine.cli", "run", ARITHMETIC, "--cache-dir", cache_dir, "--json"]
    first = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    second = json.loads(subprocess.run(command + ["--set", "x=3"], capture_output=True, text=True,
                                       check=True).stdout)
    assert len(first["nodes"]) == 4
    assert statuses(second) == {"x": "ran", "offset": "ran", "scale": "ran", "result": "ran"}
    third = json.loads(subprocess.run(command + ["--set", "x=3"], capture_output=True, text=True,
                                      check=True).stdout)
    assert statuses(third) == {"result": "cached"}


def test_invalid_graph_exits_2_naming_node_and_input(capsys, tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"loom": 1, "nodes": {
        "a": {"type": "add", "inputs": {"a": "text"}},
        "out": {"type": "show", "inputs": {"value": ["a", "value"]}}}}))
    assert main(["validate", str(path)]) == 2
    message = capsys.readouterr().err
    assert "node 'a'" in message and "input 'a'" in message
    assert main(["run", str(path), "--cache-dir", str(tmp_path)]) == 2


def test_unknown_param_and_bad_json_exit_2(capsys, tmp_path):
    assert main(["run", ARITHMETIC, "--set", "nope=1", "--cache-dir", str(tmp_path)]) == 2
    assert "unknown param 'nope'" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    assert main(["validate", str(broken)]) == 2
    assert "not valid JSON" in capsys.readouterr().err


def test_failing_node_exits_1_with_its_id(capsys, tmp_path):
    path = tmp_path / "fails.json"
    path.write_text(json.dumps({"loom": 1, "nodes": {
        "seed": {"type": "int", "inputs": {"value": 0}},
        "ok": {"type": "bool", "inputs": {"value": False}},
        "gate": {"type": "retry", "inputs": {"value": ["seed", "value"], "check": ["ok", "value"],
                                             "vary": {"node": "seed", "input": "value"},
                                             "max_tries": 2, "require_pass": True}},
        "out": {"type": "show", "inputs": {"value": ["gate", "value"]}}}}))
    assert main(["run", str(path), "--cache-dir", str(tmp_path / "c")]) == 1
    assert "node 'gate' (retry) failed" in capsys.readouterr().err


def test_explain_says_why(capsys, cache_dir):
    main(["run", ARITHMETIC, "--cache-dir", cache_dir, "--quiet"])
    capsys.readouterr()
    assert main(["explain", ARITHMETIC, "--cache-dir", cache_dir, "--set", "x=9", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["x"]["reason"] == "input `value` changed"
    assert report["scale"]["reason"] == "upstream `offset` changed"


def test_nodes_catalogue_as_json(capsys):
    assert main(["nodes", "--json"]) == 0
    types = {entry["type"] for entry in json.loads(capsys.readouterr().out)}
    assert {"int", "add", "show", "switch", "retry"} <= types


def test_cache_info_and_clear(capsys, cache_dir):
    main(["run", ARITHMETIC, "--cache-dir", cache_dir, "--quiet"])
    main(["cache", "info", "--cache-dir", cache_dir])
    assert "4 entries" in capsys.readouterr().out
    main(["cache", "clear", "--cache-dir", cache_dir])
    main(["cache", "info", "--cache-dir", cache_dir])
    assert "0 entries" in capsys.readouterr().out


def test_run_a_png_that_carries_its_graph(capsys, tmp_path):
    info = PngInfo()
    info.add_text("loom", Path(ARITHMETIC).read_text())
    png = tmp_path / "made.png"
    Image.new("RGB", (4, 4)).save(png, pnginfo=info)
    code, report = run_json(capsys, str(png), "--cache-dir", str(tmp_path / "c"))
    assert code == 0 and report["outputs"]["result"]["value"] == 14.0
    plain = tmp_path / "plain.png"
    Image.new("RGB", (4, 4)).save(plain)
    assert main(["run", str(plain)]) == 2
    assert "no installed reader recognises this document" in capsys.readouterr().err
