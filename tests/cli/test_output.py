"""Output that behaves: files with the umask's permissions, progress lines in a pipe, numbers
as numbers in --json, Ctrl-C as one line and exit 130."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from io import StringIO

from rich.console import Console

from engine.cli import main
from engine.display import RunDisplay, json_value
from engine.events import NODE_FINISHED, NODE_PROGRESS, NODE_STARTED, Event
from engine.files import UMASK, atomic_write

from .conftest import GRAPHS, ROOT, write_graph


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_written_files_respect_the_umask(elsewhere):
    from PIL import Image

    from nodes.image import write_png_unique

    atomic_write(elsewhere / "a.bin", b"x")
    png = write_png_unique(elsewhere, "img", Image.new("RGB", (2, 2)), None)
    expected = 0o666 & ~UMASK
    assert mode(elsewhere / "a.bin") == expected and mode(png) == expected
    if UMASK == 0o022:
        assert expected == 0o644


def test_a_pipe_gets_a_progress_line_every_few_seconds():
    log = StringIO()
    display = RunDisplay(Console(file=log, force_terminal=False, width=120), line_every=0.0)
    with display:
        display(Event(NODE_STARTED, "r", "sampler", "sample"))
        for step in (1, 2):
            display(Event(NODE_PROGRESS, "r", "sampler", "sample", {"step": step, "total": 20}))
        display(Event(NODE_FINISHED, "r", "sampler", "sample", {"seconds": 1.5}))
    lines = log.getvalue().splitlines()
    assert lines == ["  … sampler (sample) step 1/20", "  … sampler (sample) step 2/20",
                     "✓ ran    sampler (sample) 1.50s"]
    quiet = StringIO()
    slow = RunDisplay(Console(file=quiet, force_terminal=False), line_every=60.0)
    slow(Event(NODE_STARTED, "r", "sampler", "sample"))
    slow(Event(NODE_PROGRESS, "r", "sampler", "sample", {"step": 1, "total": 20}))
    assert quiet.getvalue() == ""   # not before the interval has passed


def test_json_keeps_numbers_and_summarises_the_rest(capsys, elsewhere, cache_dir):
    assert json_value({"a": [1, 2.5, True, None, "x"]}) == {"a": [1, 2.5, True, None, "x"]}
    assert json_value(object()).startswith("<object")
    path = write_graph(elsewhere, {"i": {"type": "int", "inputs": {"value": 3}},
                                   "out": {"type": "show", "inputs": {"value": ["i", "value"]}}})
    assert main(["run", str(path), "--json", "--cache-dir", cache_dir]) == 0
    assert json.loads(capsys.readouterr().out)["outputs"] == {"out": {"value": 3}}


def test_ctrl_c_while_starting_is_one_line_and_exit_130(monkeypatch, capsys):
    import engine.cli as cli

    def interrupted(path):
        raise KeyboardInterrupt   # as if Ctrl-C came while the node libraries were importing

    monkeypatch.setattr(cli, "load_graph", interrupted)
    assert cli.main(["validate", str(GRAPHS / "txt2img.json")]) == 130
    assert capsys.readouterr().err.strip() == "cancelled"


def test_ctrl_c_during_a_run_is_one_line_and_exit_130(elsewhere, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", str(GRAPHS / "txt2img.json"), "--no-cache",
         "--set", "steps=1000"], cwd=elsewhere, env=env, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line)
        if "ran" in line:   # a node finished: we are inside the run
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    # a node that was finishing may still report; then one line says the run was cancelled
    last = rest.strip().splitlines()[-1]
    assert "Traceback" not in rest and last.startswith("cancelled"), rest
    assert sum("cancelled" in line for line in rest.splitlines()) == 1
