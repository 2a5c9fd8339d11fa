"""Putting the server together and running it: `serve()` for `loom serve`, `build()` for tests.

One process holds one Executor (warm cache and models), one SQLite run store, one
dispatcher and the web app. A lock file in the data folder keeps a second server off
the same queue (two would re-queue each other's running runs).
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from engine import Executor, Registry, Settings
from engine.errors import LoomError

from . import comfy
from .app import create_app
from .comfy.shell import ComfyShell
from .config import GraphLimits, ServerConfig
from .dispatch import LocalDispatcher, RunDispatcher, make_event
from .events import EventHub
from .retention import Retention
from .service import RunService
from .store import QUEUED, RunStore

if TYPE_CHECKING:
    from .ray_dispatch import RayOptions

log = logging.getLogger("loom.server")


@dataclass
class Server:
    config: ServerConfig
    settings: Settings
    executor: Executor
    store: RunStore
    hub: EventHub
    dispatcher: RunDispatcher
    service: RunService
    app: Any

    def start(self) -> None:
        """Recover runs a crash left behind, prune old ones, then start the worker."""
        retention = Retention(self.config.keep_runs, self.config.keep_days)
        log.info(retention.describe())
        retention.prune(self.store, Path(self.settings.output_dir))
        for run in self.store.recover(self.config.max_attempts):
            log.warning("run %s was interrupted; now %s", run.id, run.status)
            if run.status != QUEUED:
                self.hub.publish(make_event(f"run_{run.status}", run.id, message=(run.error or {})
                                            .get("message", "")))
        self.dispatcher.start()

    def stop(self) -> None:
        self.dispatcher.stop()


def build(config: ServerConfig, settings: Settings, registry: Registry, *,
          ray: RayOptions | None = None) -> Server:
    """The server, its runs dispatched to a local worker thread, or to Ray actors with `ray`."""
    config.data_dir.mkdir(parents=True, exist_ok=True)
    for folder in (settings.output_dir, settings.input_dir):
        Path(folder).mkdir(parents=True, exist_ok=True)
    executor = Executor(registry=registry, settings=settings, limits=config.limits.engine_limits())
    store = RunStore(config.db_path)
    hub = EventHub(config.event_queue_size)
    retention = Retention(config.keep_runs, config.keep_days)

    def finished(run_id: str) -> None:
        hub.run_finished(run_id)
        try:
            retention.prune(store, Path(settings.output_dir))
        except Exception:  # noqa: BLE001 - pruning must never disturb the worker
            log.exception("could not prune old runs")
    if ray is None:
        dispatcher: RunDispatcher = LocalDispatcher(store, executor, output_dir=Path(settings.output_dir),
                                                    publish=hub.publish, finished=finished)
    else:
        from .ray_dispatch import RayDispatcher

        dispatcher = RayDispatcher(store, executor, ray, output_dir=Path(settings.output_dir),
                                   publish=hub.publish, finished=finished,
                                   max_attempts=config.max_attempts)
    service = RunService(config, executor, store, dispatcher, hub)
    server = Server(config, settings, executor, store, hub, dispatcher, service, app=None)
    server.app = create_app(config, service, hub, on_start=server.start, on_stop=server.stop)
    comfy.mount(server.app.fastapi, ComfyShell(service, config.data_dir), config)
    return server


def engine_settings(settings: Settings | None, data_dir: Path, models_dirs: Iterable[Path]) -> Settings:
    """The engine settings the server runs with: folders made absolute, models from the flags."""
    settings = settings if settings is not None else Settings(
        output_dir=data_dir / "outputs", input_dir=data_dir / "inputs")
    return dataclasses.replace(
        settings, output_dir=Path(settings.output_dir).resolve(),
        input_dir=Path(settings.input_dir).resolve(),
        models_dirs=[Path(d).resolve() for d in models_dirs])


def node_registry(modules: Iterable[str] = (), installed: bool = True) -> Registry:
    """Installed node packs (entry points), plus node modules named on the command line."""
    registry = Registry.default() if installed else Registry()
    for name in modules:
        try:
            registry.load_module(name)
        except ImportError as exc:
            raise LoomError(f"cannot import node module {name!r}: {exc}") from None
    return registry


def serve(host: str, port: int, data_dir: Path, models_dirs: list[Path], token: str | None,
          settings: Settings | None = None, *, node_modules: Iterable[str] = (),
          installed_nodes: bool = True, log_level: str = "info", backend: str = "local",
          ray_address: str | None = None, workers: int | None = None, gpus_per_worker: float = 0,
          **options: Any) -> None:
    """Run the server until interrupted. Raises LoomError for an unsafe or impossible setup.

    `backend` "ray" runs graphs on `workers` Ray actors: on the cluster at `ray_address`
    ("auto" or HOST:PORT), or on a Ray started here on loopback, its files in DATA_DIR/ray.
    `options` are further `ServerConfig` fields (allowed_hosts, limits, max_attempts, ...).
    """
    import uvicorn

    # `loom serve` has no logging set up of its own; the server log is where error ids lead.
    logging.basicConfig(level=log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    data_dir = Path(data_dir).resolve()
    config = ServerConfig(host=host, port=port, data_dir=data_dir, token=token or None, **options)
    config.check_bind()
    settings = engine_settings(settings, data_dir, models_dirs)
    registry = node_registry(node_modules, installed_nodes)
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = hold_data_dir(data_dir)
    try:
        ray = None
        if backend == "ray":
            from engine.ray_backend import WorkerSpec

            from .ray_dispatch import RayOptions

            ray = RayOptions(WorkerSpec.here(settings, node_modules, installed_nodes), ray_address,
                             workers, gpus_per_worker, temp_dir=data_dir / "ray")
        elif backend != "local":
            raise LoomError(f"unknown backend {backend!r}: local or ray")
        server = build(config, settings, registry, ray=ray)
        uv = uvicorn.Config(server.app, host=host, port=port, log_level=log_level,
                            proxy_headers=False, server_header=False, date_header=False,
                            lifespan="on", ws="websockets-sansio", timeout_graceful_shutdown=5,
                            ws_max_size=1 << 20)
        log.info("serving %d node types, data in %s", len(list(registry)), data_dir)
        uvicorn.Server(uv).run()
    finally:
        os.close(lock)


def hold_data_dir(data_dir: Path) -> int:
    """An exclusive lock on the data folder for this process's lifetime (freed even on kill -9)."""
    import fcntl

    fd = os.open(data_dir / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LoomError(f"another Loom server is using {data_dir}") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


__all__ = ["serve", "build", "Server", "ServerConfig", "GraphLimits", "engine_settings",
           "node_registry"]
