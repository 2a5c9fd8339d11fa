"""`loom nodes` reads well at 80 columns, `loom nodes TYPE` shows one node in full, `loom params`
lists what `--set` can change, and `--help` explains every flag."""
from __future__ import annotations

import json
import os
import pty
import subprocess
import sys

from engine import Registry
from engine.cli import build_parser, main

from .conftest import GRAPHS, ROOT


def test_nodes_at_80_columns_keep_every_type_whole(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["nodes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    registry = Registry.default()
    assert len(lines) == len(list(registry))
    for line, spec in zip(lines, registry):
        assert len(line) <= 80, line
        assert line.split()[0] == spec.type and line.split()[1] == spec.category


def test_nodes_in_a_pseudo_terminal_fit_its_width():
    leader, follower = pty.openpty()
    import fcntl
    import struct
    import termios

    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.Popen([sys.executable, "-m", "engine.cli", "nodes"], stdout=follower,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:   # the terminal closed with the process
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
    lines = b"".join(chunks).decode().splitlines()
    listed = subprocess.run([sys.executable, "-m", "engine.cli", "nodes", "--json"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    types = {entry["type"] for entry in json.loads(listed)}   # the same installed packs
    assert {line.split()[0] for line in lines if line.strip()} == types
    assert max(len(line) for line in lines) <= 80


def test_one_node_in_full(capsys):
    assert main(["nodes", "sample"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("sample (sampling, version 1)")
    assert "seed: int; default 0; >= 0, < 2**64" in text
    assert "model: DiffusionModel; required; link only" in text
    assert "outputs:\n  latent: Latent" in text
    assert main(["nodes", "sampel"]) == 2
    assert "did you mean sample" in capsys.readouterr().err


def test_params_lists_name_target_type_value_and_range(capsys):
    assert main(["params", str(GRAPHS / "txt2img.json"), "--json"]) == 0
    rows = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert rows["seed"] == {"name": "seed", "target": "sampler.seed", "type": "int",
                            "value": rows["seed"]["value"], "allowed": ">= 0, < 2**64"}
    assert rows["model"]["allowed"].endswith("a model in models/checkpoints")
    assert rows["steps"]["value"] == json.loads((GRAPHS / "txt2img.json").read_text())[
        "nodes"]["sampler"]["inputs"]["steps"]
    assert main(["params", str(GRAPHS / "txt2img.json")]) == 0
    text = capsys.readouterr().out
    assert "seed       sampler.seed = " in text and "int; >= 0, < 2**64" in text


def test_every_flag_has_a_sentence_and_set_has_examples():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name, command in commands.items():
        for action in command._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and len(action.help) > 10, (name, action.option_strings)
    run_help = commands["run"].format_help()
    assert "--set seed=7" in run_help and "prompt=" in run_help


def test_version_answers_without_a_command(capsys):
    try:
        main(["--version"])
    except SystemExit as exit:
        assert exit.code == 0
    assert capsys.readouterr().out.startswith("loom ")
