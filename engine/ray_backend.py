"""Running graphs on Ray: long-lived worker actors, each holding its own warm Executor.

The server's Ray dispatcher and `loom batch --backend ray` both drive these workers. A
worker runs one graph at a time and streams back, in order, the engine's events and then
the run's outcome: statuses, timings, output values, the bytes of every file the run
wrote (so the caller writes them where it keeps outputs, and a cluster needs no shared
filesystem), how many models the run had to load, and the model fingerprints the worker
holds now (what model affinity matches runs against).

Ray is an optional dependency (`pip install "loom[ray]"`), imported only when used.
Actor tasks are at-most-once here: Ray never retries them, because a lost reply must not
become a second run; the caller decides what an interrupted run becomes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .context import CancelToken
from .errors import GraphError, LoomError
from .events import NODE_FAILED, NODE_FINISHED, NODE_STARTED, Event
from .executor import Executor
from .graph import Graph
from .limits import Limits
from .models import ModelManager, ModelPaths
from .registry import Registry
from .settings import Settings

log = logging.getLogger(__name__)

# Keep Ray on this machine's loopback interface and out of the home folder (no auth token file).
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled"}
# Ray puts unix sockets under its temp dir; their paths must stay under ~107 bytes.
MAX_TEMP_DIR_CHARS = 40
_JSON_SCALARS = (type(None), bool, int, float, str)


def import_ray():
    """Ray, imported with the loopback settings in place (Ray reads them once, on import)."""
    for name, value in LOOPBACK_ENV.items():
        os.environ.setdefault(name, value)
    try:
        import ray
    except ImportError:
        raise LoomError('the Ray backend needs Ray: pip install "loom[ray]"') from None
    return ray


def connect(address: str | None = None, *, temp_dir: Path | None = None,
            num_cpus: float | None = None, num_gpus: float | None = None,
            namespace: str = "loom") -> bool:
    """Join the Ray cluster at `address` ("auto" or HOST:PORT), or start a local one bound to
    loopback with its dashboard off. True when this call started Ray (the caller shuts it down);
    False when this process was already connected."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    common = dict(namespace=namespace, include_dashboard=False, configure_logging=False,
                  log_to_driver=False)
    if address:
        ray.init(address=address, **common)
        return True
    ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _temp_dir=_short_temp_dir(temp_dir),
             _node_ip_address="127.0.0.1", **common)
    node_ip = ray.util.get_node_ip_address()
    if node_ip != "127.0.0.1":   # Ray was imported before `import_ray` could set it up
        ray.shutdown()
        raise LoomError(f"the local Ray would listen on {node_ip}, not only on loopback: import "
                        f"Ray through engine.ray_backend.import_ray(), or set "
                        f"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before Ray is imported")
    return True


def _short_temp_dir(wanted: Path | None) -> str | None:
    if wanted is None:
        return None
    wanted = Path(wanted).resolve()
    if len(str(wanted)) <= MAX_TEMP_DIR_CHARS:
        wanted.mkdir(parents=True, exist_ok=True)
        return str(wanted)
    short = tempfile.mkdtemp(prefix="loom-ray-")
    log.info("Ray's temp dir would be too long under %s (socket paths); using %s", wanted, short)
    return short


def add_backend_arguments(parser) -> None:
    """The flags that choose where runs execute (`loom serve`, `python -m server`, `loom batch`)."""
    parser.add_argument("--backend", choices=["local", "ray"], default="local",
                        help="local: one worker thread (default); ray: Ray worker actors")
    parser.add_argument("--ray-address", help="join this Ray cluster ('auto' or HOST:PORT); "
                                              "default: start a Ray on this machine, loopback only")
    parser.add_argument("--workers", type=int, help="Ray worker actors (default: one per GPU "
                                                    "with --gpus-per-worker, else 1)")
    parser.add_argument("--gpus-per-worker", type=float, default=0,
                        help="GPUs each Ray worker reserves (1: one worker per GPU)")


def backend_arguments(args) -> dict:
    """Keyword arguments (backend, ray_address, workers, gpus_per_worker) from those flags."""
    if args.workers is not None and args.workers < 1:
        raise LoomError("--workers must be at least 1")
    return {"backend": args.backend, "ray_address": args.ray_address, "workers": args.workers,
            "gpus_per_worker": args.gpus_per_worker}


# -- the worker --------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerSpec:
    """What every worker is built from: the same settings and node packs as the caller."""

    settings: Settings
    node_modules: tuple[str, ...] = ()
    installed_nodes: bool = True
    python_path: tuple[str, ...] = ()      # where the caller found `node_modules`
    limits: Limits | None = None           # the caller's per-node and per-run limits

    @classmethod
    def here(cls, settings: Settings, node_modules: Iterable[str] = (),
             installed_nodes: bool = True) -> "WorkerSpec":
        """Folders made absolute, and this process's import path, so workers find the same packs."""
        settings = dataclasses.replace(
            settings, output_dir=Path(settings.output_dir).resolve(),
            input_dir=Path(settings.input_dir).resolve(),
            models_dirs=[Path(d).resolve() for d in settings.models_dirs],
            extra_model_paths=(Path(settings.extra_model_paths).resolve()
                               if settings.extra_model_paths else None))
        path = tuple(p for p in sys.path if p and os.path.isdir(p))
        return cls(settings, tuple(node_modules), installed_nodes, path)


@dataclass(frozen=True)
class RemoteFile:
    """An output value that named a file the run wrote; its bytes travel in `files`."""

    name: str


class TrackedModels(ModelManager):
    """A model manager that counts loads and remembers which fingerprinted node asked for each
    model, so a worker can say which model fingerprints it holds warm."""

    def __init__(self, paths: ModelPaths, budget_bytes: int | None = None):
        super().__init__(paths, budget_bytes)
        self.loads = 0
        self.asking: list[str | None] = []           # fingerprints of the nodes running now
        self._owners: dict[tuple, set[str]] = {}

    def get(self, identity: tuple, load: Callable[[], Any]) -> Any:
        def counted() -> Any:
            self.loads += 1
            return load()

        model = super().get(identity, counted)
        fingerprint = self.asking[-1] if self.asking else None
        if fingerprint is not None:
            self._owners.setdefault(identity, set()).add(fingerprint)
        return model

    def holding(self) -> set[str]:
        self._owners = {i: f for i, f in self._owners.items() if i in self}
        return set().union(*self._owners.values()) if self._owners else set()


_DONE = object()


class Worker:
    """The actor's body (plain Python, so it is testable without Ray): one Executor, one run
    at a time; `cancel` may arrive from another thread while `run` streams."""

    def __init__(self, spec: WorkerSpec | None = None, name: str = "worker", *,
                 executor: Executor | None = None):
        """Built from `spec` (an actor: its own Executor), or around a caller's fresh `executor`
        (a local batch: its caches and folders), whose model manager then counts loads."""
        if executor is None:
            executor = self._executor(spec)
        if not isinstance(executor.models, TrackedModels):
            executor.models = TrackedModels(executor.models.paths, executor.models.budget_bytes)
            executor.cache.memory.bind_models(executor.models)
        self.name = name
        self.executor = executor
        self.settings = executor.settings
        self.models: TrackedModels = executor.models
        self.scratch = Path(tempfile.mkdtemp(prefix="loom-worker-"))
        self._lock = threading.Lock()
        self._tokens: dict[str, CancelToken] = {}
        self._cancel_early: set[str] = set()

    @staticmethod
    def _executor(spec: WorkerSpec) -> Executor:
        for entry in reversed(spec.python_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        registry = Registry.default() if spec.installed_nodes else Registry()
        for module in spec.node_modules:
            registry.load_module(module)
        models = TrackedModels(ModelPaths(spec.settings.models_dirs, spec.settings.extra_model_paths))
        return Executor(registry=registry, settings=spec.settings, models=models, limits=spec.limits)

    def ping(self) -> dict:
        return {"name": self.name, "pid": os.getpid(), "holding": sorted(self.models.holding())}

    def cancel(self, run_id: str) -> bool:
        with self._lock:
            token = self._tokens.get(run_id)
            if token is None:
                self._cancel_early.add(run_id)   # the run's task has not started yet
                return False
        token.cancel()
        return True

    def run(self, run_id: str, graph: dict, params: dict | None) -> Iterator[dict]:
        """Yields {"events": [event dicts]} as the run goes, then {"outcome": {...}} once."""
        token = CancelToken()
        with self._lock:
            self._tokens[run_id] = token
            if run_id in self._cancel_early:
                self._cancel_early.discard(run_id)
                token.cancel()
        pending: queue.SimpleQueue = queue.SimpleQueue()
        outcome: dict = {}

        def work() -> None:
            try:
                outcome.update(self._execute(run_id, graph, params or {}, token, pending.put))
            finally:
                pending.put(_DONE)

        threading.Thread(target=work, name=f"loom-run-{run_id}", daemon=True).start()
        try:
            finished = False
            while not finished:
                batch = [pending.get()]
                while True:    # whatever else is waiting goes in the same message
                    try:
                        batch.append(pending.get_nowait())
                    except queue.Empty:
                        break
                finished = batch[-1] is _DONE
                events = [e for e in batch if e is not _DONE]
                if events:
                    yield {"events": events}
            yield {"outcome": outcome}
        finally:
            with self._lock:
                self._tokens.pop(run_id, None)

    def _execute(self, run_id: str, graph_doc: dict, params: dict, token: CancelToken,
                 emit: Callable[[dict], None]) -> dict:
        loads_before = self.models.loads
        out_dir = self.scratch / uuid.uuid4().hex
        started = time.perf_counter()
        base = {"worker": self.name, "ran": [], "cached": [], "timings": {}, "outputs": {},
                "files": {}}
        try:
            graph = Graph.from_dict(graph_doc).named_by_shape()
            fingerprints = self.executor.plan(graph, params).fingerprints
            # Saves land in a fresh folder per run: its files are this run's, and a save node
            # is never answered from the cache with another run's file (its key sees the folder).
            self.executor.settings = dataclasses.replace(self.settings, output_dir=out_dir)
            result = self.executor.run(graph, params, cancel=token, run_id=run_id, check=False,
                                       listener=self._listener(fingerprints, emit))
            outputs, files = portable_outputs(result.outputs, out_dir)
            error = None
            if result.error is not None:
                error = (result.error.to_dict() if hasattr(result.error, "to_dict")
                         else {"error": result.status, "message": str(result.error)})
            outcome = {**base, "status": result.status, "ran": result.ran, "cached": result.cached,
                       "timings": result.timings, "outputs": outputs, "files": files, "error": error}
        except GraphError as exc:
            outcome = {**base, "status": "failed", "error": exc.to_dict()}
        except Exception as exc:  # noqa: BLE001 - reported to the caller; the worker lives on
            outcome = {**base, "status": "failed",
                       "error": {"error": "internal", "message": f"{type(exc).__name__}: {exc}",
                                 "traceback": traceback.format_exc()}}
        finally:
            self.executor.settings = self.settings
            self.models.asking.clear()
            shutil.rmtree(out_dir, ignore_errors=True)
        outcome.update(model_loads=self.models.loads - loads_before,
                       holding=sorted(self.models.holding()),
                       seconds=time.perf_counter() - started)
        return outcome

    def _listener(self, fingerprints: dict[str, str | None], emit: Callable[[dict], None]):
        asking = self.models.asking

        def listener(event: Event) -> None:
            # Node events nest (a lazy input runs its nodes inside the asking node): a stack.
            if event.kind == NODE_STARTED:
                asking.append(fingerprints.get(event.node))
            elif event.kind in (NODE_FINISHED, NODE_FAILED) and asking:
                asking.pop()
            emit(event.to_dict())
        return listener


def portable_outputs(outputs: dict[str, dict[str, Any]], out_dir: Path) -> tuple[dict, dict[str, bytes]]:
    """Output values that can cross to another machine: files the run wrote become
    `RemoteFile`s with their bytes, JSON-like values stay, anything else (tensors, models)
    becomes its short description."""
    from .display import summarise

    root = out_dir.resolve()
    files: dict[str, bytes] = {}

    def written(value: Any) -> RemoteFile | None:
        if not isinstance(value, (str, os.PathLike)) or len(str(value)) > 4096:
            return None
        try:
            path = Path(value).resolve()
        except (OSError, ValueError):
            return None
        if root in path.parents and path.is_file():
            name = path.relative_to(root).as_posix()
            files[name] = path.read_bytes()
            return RemoteFile(name)
        return None

    def convert(value: Any, depth: int = 0) -> Any:
        remote = written(value)
        if remote is not None:
            return remote
        if isinstance(value, _JSON_SCALARS):
            return value
        if isinstance(value, (list, tuple)) and depth < 4:
            return [convert(v, depth + 1) for v in value]
        if isinstance(value, dict) and depth < 4 and all(isinstance(k, str) for k in value):
            return {k: convert(v, depth + 1) for k, v in value.items()}
        return summarise(value)

    return {n: {k: convert(v) for k, v in o.items()} for n, o in outputs.items()}, files


def with_local_files(value: Any, place: Callable[[str], Any]) -> Any:
    """`value` with every RemoteFile replaced by `place(name)` (where the caller stored it)."""
    if isinstance(value, RemoteFile):
        return place(value.name)
    if isinstance(value, list):
        return [with_local_files(v, place) for v in value]
    if isinstance(value, dict):
        return {k: with_local_files(v, place) for k, v in value.items()}
    return value


# -- actors ------------------------------------------------------------------------------------

@dataclass
class WorkerPool:
    """N worker actors on the connected cluster. An actor that dies is restarted by Ray (its
    models load again); its task is not retried."""

    spec: WorkerSpec
    workers: int | None = 1          # None: one per GPU of the cluster (with gpus_per_worker)
    gpus_per_worker: float = 0
    name_prefix: str = "loom-worker"
    actors: list = field(default_factory=list)

    def start(self) -> "WorkerPool":
        ray = import_ray()
        if self.workers is None:
            self.workers = workers_for_gpus(self.gpus_per_worker)
        actor_class = ray.remote(Worker)
        self.actors = [
            actor_class.options(num_cpus=0, num_gpus=self.gpus_per_worker, max_restarts=-1,
                                max_task_retries=0, max_concurrency=4,
                                name=f"{self.name_prefix}-{i}").remote(self.spec, f"{self.name_prefix}-{i}")
            for i in range(self.workers)]
        ray.get([a.ping.remote() for a in self.actors])   # fail here, not on the first run
        return self

    def run(self, index: int, run_id: str, graph: dict, params: dict | None):
        """The streaming reply of actor `index`: {"events": [...]} messages, then {"outcome": ...}."""
        return self.actors[index].run.options(num_returns="streaming").remote(run_id, graph, params)

    def cancel(self, index: int, run_id: str) -> None:
        self.actors[index].cancel.remote(run_id)

    def ready(self, index: int, timeout: float = 5.0) -> bool:
        """Whether actor `index` answers within `timeout` (False while Ray restarts it)."""
        ray = import_ray()
        try:
            ray.get(self.actors[index].ping.remote(), timeout=timeout)
            return True
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError,
                ray.exceptions.GetTimeoutError):
            return False

    def kill(self) -> None:
        ray = import_ray()
        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
        self.actors = []


def workers_for_gpus(gpus_per_worker: float) -> int:
    """One worker per `gpus_per_worker` GPUs of the connected cluster (1 without GPUs asked)."""
    if gpus_per_worker <= 0:
        return 1
    gpus = import_ray().cluster_resources().get("GPU", 0)
    if gpus < gpus_per_worker:
        raise LoomError(f"the Ray cluster has {gpus:g} GPU(s); a worker needs {gpus_per_worker:g}")
    return int(gpus // gpus_per_worker)


def stream(reply) -> Iterator[dict]:
    """The messages of a streaming reply; raises WorkerLost if the actor died on the way."""
    ray = import_ray()
    try:
        for ref in reply:
            yield ray.get(ref)
    except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
        raise WorkerLost(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


class WorkerLost(LoomError):
    """The worker died (killed, out of memory, machine lost) before the run's outcome arrived."""
