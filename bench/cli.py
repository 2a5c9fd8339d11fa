"""Start-up and run-time figures of the `loom` command (prints them; not a timed test).

    python bench/cli.py [--repeat 5]

1. Wall time of `loom --version`, `loom nodes`, `loom validate graphs/txt2img.json` and
   `loom params graphs/txt2img.json` (best of N fresh processes), and the import time of
   the node catalogue (engine + every built-in node, schemas included).
2. Where a cold `loom run graphs/txt2img.json` spends its time, measured in a fresh
   process the way `loom run` works: imports (the CLI and catalogue, then torch and the
   model libraries), checking the graph, and each node grouped as model load, encode,
   sample, decode and save. Wall and CPU seconds are both printed: CPU time says what the
   work costs when other processes compete for the cores.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TXT2IMG = str(ROOT / "graphs" / "txt2img.json")
COMMANDS = {
    "loom --version": ["--version"],
    "loom nodes": ["nodes"],
    "loom validate graphs/txt2img.json": ["validate", TXT2IMG],
    "loom params graphs/txt2img.json": ["params", TXT2IMG],
}
CATALOGUE = ("import time; t = time.perf_counter(); from engine import Registry; "
             "r = Registry.default(); [s.json_schema() for s in r]; print(time.perf_counter() - t)")

# The phases of a run, by node type (anything else counts as "other nodes").
PHASES = {"load_checkpoint": "model load", "encode_text": "encode", "sample": "sample",
          "vae_decode": "decode", "save_image": "save"}

RUN_SCRIPT = r"""
import json, sys, time
wall, cpu = time.perf_counter, time.process_time
marks = [("start", wall(), cpu())]
import engine.cli
from engine import Registry
registry = Registry.default()
marks.append(("import CLI + catalogue", wall(), cpu()))
import torch, diffusers, transformers   # what the nodes import when they first run
marks.append(("import torch + model libraries", wall(), cpu()))
from engine.cli import build_parser, load_graph, _executor, _preflight
args = build_parser().parse_args(["run", sys.argv[1], "--no-cache", "--out", sys.argv[2]])
executor = _executor(args, use_disk=False)
checked = _preflight(args, load_graph(args.graph), executor.registry, executor.settings)
marks.append(("read + check graph", wall(), cpu()))
times = {}
from engine.events import NODE_FINISHED, NODE_STARTED
def listen(event):
    if event.kind == NODE_STARTED:
        times[event.node] = (event.node_type, wall(), cpu())
    elif event.kind == NODE_FINISHED:
        kind, w, c = times[event.node]
        times[event.node] = (kind, wall() - w, cpu() - c)
result = executor.run(checked.graph, listener=listen, use_cache=False)
marks.append(("run", wall(), cpu()))
print(json.dumps({"marks": marks, "nodes": times}))
"""


def best_times(argv: list[str], repeat: int) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of `repeat` fresh processes."""
    best = (float("inf"), float("inf"))
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       cwd=tempfile.gettempdir())
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        best = min(best, (wall, cpu))
    return best


def startup(repeat: int) -> None:
    loom = [sys.executable, "-m", "engine.cli"]
    print(f"start-up (best of {repeat} fresh processes)")
    print(f"  {'command':<40} {'wall s':>7} {'cpu s':>7}")
    for label, args in COMMANDS.items():
        wall, cpu = best_times(loom + args, repeat)
        print(f"  {label:<40} {wall:7.3f} {cpu:7.3f}")
    samples = [float(subprocess.run([sys.executable, "-c", CATALOGUE], check=True, capture_output=True,
                                    text=True, cwd=tempfile.gettempdir()).stdout)
               for _ in range(repeat)]
    print(f"  {'import the node catalogue (in-process)':<40} {min(samples):7.3f}")


def run_breakdown() -> None:
    with tempfile.TemporaryDirectory() as out:
        done = subprocess.run([sys.executable, "-c", RUN_SCRIPT, TXT2IMG, out], check=True,
                              capture_output=True, text=True, cwd=out,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    report = json.loads(done.stdout.splitlines()[-1])
    marks = report["marks"]
    rows = [(name, w - pw, c - pc) for (name, w, c), (_, pw, pc) in zip(marks[1:], marks)]
    run_row = rows.pop()   # replaced by its nodes
    phases: dict[str, list[float]] = {}
    for node_type, w, c in report["nodes"].values():
        phase = phases.setdefault(PHASES.get(node_type, "other nodes"), [0.0, 0.0])
        phase[0] += w
        phase[1] += c
    node_wall = sum(p[0] for p in phases.values())
    rows += [(f"node: {name}", w, c) for name, (w, c) in phases.items()]
    rows.append(("engine around the nodes", run_row[1] - node_wall,
                 run_row[2] - sum(p[1] for p in phases.values())))
    total = sum(r[1] for r in rows)
    print("\ncold `loom run graphs/txt2img.json --no-cache` (one fresh process)")
    print(f"  {'phase':<34} {'wall s':>7} {'cpu s':>7} {'share':>6}")
    for name, w, c in rows:
        print(f"  {name:<34} {w:7.2f} {c:7.2f} {w / total:6.0%}")
    print(f"  {'total':<34} {total:7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="fresh processes per command (best counts)")
    args = parser.parse_args()
    print(f"load average: {', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    startup(args.repeat)
    run_breakdown()


if __name__ == "__main__":
    main()
