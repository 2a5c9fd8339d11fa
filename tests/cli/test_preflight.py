"""Everything that can be known before a run is reported before it, all at once, with node id
and input, exit code 2: graph problems, unknown params, missing models and input files, devices."""
from __future__ import annotations

import pytest

from engine import Graph, Registry, Settings
from engine.cli import main
from engine.errors import GraphError
from engine.preflight import device_problem, preflight

from .conftest import GRAPHS, ROOT

IP_ADAPTER = str(GRAPHS / "ip_adapter.json")
TXT2IMG = str(GRAPHS / "txt2img.json")


def problems_of(capsys) -> list[str]:
    return [line[4:] for line in capsys.readouterr().err.splitlines() if line.startswith("  • ")]


def test_missing_weights_inputs_and_params_are_reported_together(capsys, cache_dir):
    code = main(["validate", IP_ADAPTER, "--set", "nope=1", "--set", "seed=-1"])
    assert code == 2
    problems = problems_of(capsys)
    expected = [
        "unknown param 'nope'",
        "node 'sampler', input 'seed'",
        "node 'reference', input 'name': no file 'ref.png' in the input folder",
        "node 'load_ip', input 'name': no ipadapter model named 'tiny-ip'",
        "node 'load_ip', input 'clip_vision': no clip_vision model named 'tiny-clip-vision'",
    ]
    for text in expected:
        assert any(text in p for p in problems), (text, problems)
    assert len(problems) == len(expected)
    # run and explain stop at the same problems before loading anything
    assert main(["run", IP_ADAPTER, "--cache-dir", cache_dir]) == 2
    assert main(["explain", IP_ADAPTER, "--cache-dir", cache_dir]) == 2
    assert len(problems_of(capsys)) == 3 + 3


def test_missing_model_lists_what_is_available(capsys):
    assert main(["validate", TXT2IMG, "--set", "model=shapes-tinyy"]) == 2
    message = capsys.readouterr().err
    assert "node 'ckpt', input 'name'" in message and "available: " in message
    assert "shapes-tiny" in message.split("available: ")[1]


def test_an_unavailable_device_is_one_line_before_anything_loads(capsys):
    assert main(["validate", TXT2IMG, "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err
    problem = device_problem("cuda:7")
    import torch

    if torch.cuda.device_count() > 7:
        pytest.skip("a machine with eight GPUs")
    assert problem is not None and "cuda:7" in problem.message
    assert device_problem("cpu") is None


def test_set_takes_text_for_text_inputs_when_json_does_not_fit(capsys):
    graph = Graph.load(TXT2IMG)
    checked = preflight(graph, {"prompt": 123, "seed": 5}, Registry.default(),
                        Settings(models_dirs=[ROOT / "models"]), typed={"prompt": "123", "seed": "5"})
    assert checked.params == {"prompt": "123", "seed": 5}
    assert checked.graph.nodes["pos"].inputs["text"] == "123"
    assert main(["validate", TXT2IMG, "--set", "prompt=123", "--set", "negative=[1, 2]"]) == 0


def test_a_value_that_fits_neither_way_says_how_values_are_read(capsys):
    assert main(["validate", TXT2IMG, "--set", "steps=twenty"]) == 2
    message = capsys.readouterr().err
    assert "node 'sampler', input 'steps'" in message and "read as JSON when they parse" in message


def test_preflight_raises_every_problem_for_python_callers():
    graph = Graph.load(IP_ADAPTER)
    with pytest.raises(GraphError) as raised:
        preflight(graph, {"nope": 1}, Registry.default(), Settings(models_dirs=[ROOT / "models"]))
    assert {p.node for p in raised.value.problems} == {None, "reference", "load_ip"}
