"""Scale-out benchmark: the server on the Ray backend with 1 and 2 worker actors.

    python bench/scale.py [--runs 8] [--steps 10] [--step-seconds 0.2] [--txt2img-runs 6]

Starts a local Ray in this process (loopback, two logical GPUs, one per worker) and, for each
setting, a server in this process on it; runs go through the HTTP API. Prints one JSON object:

- ray_start_s, workers_ready_s: starting Ray, and starting two worker actors on it
- waiting: runs/s with 1 and 2 workers, and their ratio, for runs dominated by a node that
  waits (sleeps in steps, so the machine's cores do not cap it; target ratio >= 1.8)
- txt2img: the same for graphs/txt2img.json on the shipped shapes-tiny model, each worker
  warmed up first (CPU-bound: on a 2-core machine expect little gain)
- affinity: model loads per run for 10 runs alternating two checkpoints over 2 workers,
  with the dispatcher's model affinity on and off

The waiting and affinity runs use the test suite's node packs (`tests/server`, `tests/ray`).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for folder in (REPO, REPO / "tests" / "server", REPO / "tests" / "ray"):
    sys.path.insert(0, str(folder))

from fastapi.testclient import TestClient  # noqa: E402

from engine import Graph, Settings  # noqa: E402
from engine.ray_backend import WorkerSpec, connect, import_ray  # noqa: E402
from server.main import ServerConfig, build, node_registry  # noqa: E402
from server.ray_dispatch import RayOptions  # noqa: E402

TEST_NODES = ("nodes.primitives", "loom_test_nodes", "loom_ray_nodes")
FINAL = {"succeeded", "failed", "cancelled"}


class BenchServer:
    """A server on the connected Ray, in this process, for one setting."""

    def __init__(self, base: Path, *, workers: int, installed: bool, affinity: bool = True,
                 models_dir: Path | None = None):
        data = Path(tempfile.mkdtemp(dir=base))
        modules = () if installed else TEST_NODES
        settings = Settings(output_dir=data / "outputs", input_dir=data / "inputs",
                            models_dirs=[models_dir or REPO / "models"])
        options = RayOptions(WorkerSpec.here(settings, modules, installed_nodes=installed),
                             workers=workers, gpus_per_worker=1, affinity=affinity)
        self.server = build(ServerConfig(data_dir=data, allowed_hosts=("testserver",)), settings,
                            node_registry(modules, installed=installed), ray=options)
        self.client = TestClient(self.server.app)

    def __enter__(self) -> "BenchServer":
        self.client.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.client.__exit__(*exc)

    def run_all(self, docs: list[dict]) -> tuple[float, list[dict]]:
        """Submit every graph at once; seconds until the last finished, and the records."""
        store = self.server.store
        done_before = sum(store.counts()[status] for status in FINAL)
        started = time.perf_counter()
        ids = [self.client.post("/v1/runs", json={"graph": doc}).json()["id"] for doc in docs]
        # Poll the store, not the API, so the benchmark's own requests do not compete with
        # the dispatcher for this process.
        while sum(store.counts()[status] for status in FINAL) - done_before < len(ids):
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        records = [self.server.store.get(run_id) for run_id in ids]
        failed = [r.error for r in records if r.status != "succeeded"]
        if failed:
            raise SystemExit(f"{len(failed)} run(s) failed, e.g. {failed[0]}")
        return elapsed, [r.result for r in records]


def waiting_graph(steps: int, seconds: float) -> dict:
    return {"loom": 1, "nodes": {
        "wait": {"type": "test.steps", "inputs": {"steps": steps, "seconds_per_step": seconds}},
        "out": {"type": "show", "inputs": {"value": ["wait", "value"]}}}}


def model_graph(name: str) -> dict:
    return {"loom": 1, "nodes": {
        "load": {"type": "test.load_model", "inputs": {"name": name, "load_seconds": 0.5}},
        "use": {"type": "test.use_model", "inputs": {"model": ["load", "value"]}},
        "out": {"type": "show", "inputs": {"value": ["use", "value"]}}}}


def txt2img_graph(seed: int) -> dict:
    return Graph.load(REPO / "graphs" / "txt2img.json").with_params({"seed": seed}).to_dict()


def throughput(base: Path, docs_for, runs: int, *, installed: bool, warm_up: bool) -> dict:
    figures = {}
    for workers in (1, 2):
        with BenchServer(base, workers=workers, installed=installed) as bench:
            if warm_up:     # each worker loads its models before the clock starts
                bench.run_all(docs_for(workers, offset=10_000))
            seconds, _ = bench.run_all(docs_for(runs, offset=0))
        figures[f"runs_per_s_{workers}_worker{'s' if workers > 1 else ''}"] = round(runs / seconds, 3)
    figures["ratio"] = round(figures["runs_per_s_2_workers"] / figures["runs_per_s_1_worker"], 2)
    return figures


def affinity(base: Path) -> dict:
    models = base / "models"
    (models / "checkpoints").mkdir(parents=True, exist_ok=True)
    for name in ("alpha", "beta"):
        (models / "checkpoints" / f"{name}.safetensors").write_bytes(name.encode() * 1000)
    docs = [model_graph(["alpha", "beta"][i % 2]) for i in range(10)]
    figures = {}
    for on in (True, False):
        with BenchServer(base, workers=2, installed=False, affinity=on, models_dir=models) as bench:
            _, results = bench.run_all(docs)
        figures["model_loads_per_run_" + ("with" if on else "without")] = \
            sum(r["model_loads"] for r in results) / len(results)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="waiting runs per setting")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--step-seconds", type=float, default=0.2)
    parser.add_argument("--txt2img-runs", type=int, default=6)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    base = Path(tempfile.mkdtemp(prefix="loom-bench-"))
    report: dict = {}

    started = time.perf_counter()
    connect(temp_dir=Path(tempfile.mkdtemp(prefix="loom-rb-")), num_cpus=2, num_gpus=2)
    report["ray_start_s"] = round(time.perf_counter() - started, 2)
    started = time.perf_counter()
    with BenchServer(base, workers=2, installed=False):
        report["workers_ready_s"] = round(time.perf_counter() - started, 2)

    report["waiting"] = throughput(
        base, lambda n, offset: [waiting_graph(args.steps, args.step_seconds) for _ in range(n)],
        args.runs, installed=False, warm_up=False)
    report["waiting"]["seconds_per_run"] = args.steps * args.step_seconds
    report["affinity"] = affinity(base)
    report["txt2img"] = throughput(
        base, lambda n, offset: [txt2img_graph(offset + i) for i in range(n)],
        args.txt2img_runs, installed=True, warm_up=True)
    import_ray().shutdown()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
