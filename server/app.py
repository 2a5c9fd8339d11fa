"""The HTTP and websocket API: translates requests into `RunService` calls, nothing more.

Endpoints (all JSON; every one but /healthz needs the token when one is set):

    POST /v1/runs                      queue a graph run (422 with every problem if invalid)
    GET  /v1/runs                      list runs, newest first (filter by status, page)
    GET  /v1/runs/{id}                 one run: status, ran/cached nodes, timings, outputs, error
    POST /v1/runs/{id}/cancel          cancel (a running sampler stops within one step)
    GET  /v1/runs/{id}/outputs/{name}  download an output file of that run
    WS   /v1/events[?run=ID]           the engine's events as they happen
    GET  /v1/nodes                     node catalogue with JSON Schemas
    GET  /v1/models                    models folder contents: kind, family, size, format
    GET  /v1/models/loaded             models in memory: kind, device, dtype or quantization, bytes
    POST /v1/models/pull               download a model (token required even on loopback)
    GET  /v1/models/pulls/{id}         a pull's progress or result
    POST /v1/uploads                   upload an image for load-image nodes
    GET  /healthz                      liveness, no token needed
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from typing import Annotated, Any

from fastapi import FastAPI, File, Header, Query, Request, UploadFile, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse

from engine import GraphError
from engine.paths import UnsafePath

from .config import ServerConfig
from .errors import new_error_id
from .events import EventHub, relay, send_or_close
from .files import UploadRejected, output_content_type
from .model_pulls import AlreadyPulling, ModelPulls, NoModelsFolder
from .schemas import (ErrorView, Health, LoadedModels, ModelList, NodeCatalogue, Problems, PullRequest,
                      PullStatus, RunList, RunSummary, RunView, SubmitRequest, Submitted, Uploaded)
from .security import WS_BEARER_PREFIX, Guard
from .service import RunService, problems_of
from .store import FINAL, STATUSES, IdempotencyConflict

log = logging.getLogger(__name__)

IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,200}$")
API_VERSION = "1"


def error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def create_app(config: ServerConfig, service: RunService, hub: EventHub,
               on_start=None, on_stop=None) -> Any:
    """The ASGI app: FastAPI routes wrapped in the security guard.

    `on_start`/`on_stop` run in the app's lifespan (recover the queue, start the worker).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        hub.attach(asyncio.get_running_loop())
        if on_start is not None:
            await run_in_threadpool(on_start)
        try:
            yield
        finally:
            if on_stop is not None:
                await run_in_threadpool(on_stop)

    app = FastAPI(title="Loom", version=API_VERSION, lifespan=lifespan,
                  docs_url=None, redoc_url=None,
                  description="Run Loom node graphs over HTTP: a durable queue, events, outputs.")

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        error_id = new_error_id()
        log.error("%s: %s %s failed", error_id, request.method, request.url.path, exc_info=exc)
        return error(500, "internal", f"the server failed on this request (error {error_id}; "
                                      f"the server log has the details)", id=error_id)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError):
        problems = [{"message": e.get("msg", "invalid"),
                     "input": ".".join(str(p) for p in e.get("loc", ()))} for e in exc.errors()]
        return JSONResponse({"error": "invalid_request", "problems": problems}, status_code=422)

    # -- runs ---------------------------------------------------------------------------

    @app.post("/v1/runs", status_code=202, response_model=Submitted | RunView,
              responses={200: {"model": RunView, "description": "finished (wait=true), or a "
                                                                "replayed Idempotency-Key"},
                         409: {"model": ErrorView}, 422: {"model": Problems}})
    async def submit_run(
        body: SubmitRequest,
        wait: Annotated[bool, Query(description="answer when the run has finished")] = False,
        timeout: Annotated[float | None, Query(gt=0, description="seconds to wait at most")] = None,
        idempotency_key: Annotated[str | None, Header(description="a retried POST with the same "
                                                                   "key returns the first run")] = None,
    ):
        """Queue a run of `graph` with `params`. Invalid graphs are refused at once (422)."""
        if idempotency_key is not None and not IDEMPOTENCY_KEY.match(idempotency_key):
            return error(400, "bad_idempotency_key", "Idempotency-Key must be 1-200 visible ASCII characters")
        try:
            run, created = await run_in_threadpool(service.submit, body.graph, body.params,
                                                   idempotency_key)
        except GraphError as exc:
            return JSONResponse({"error": "invalid_graph", "problems": problems_of(exc)},
                                status_code=422)
        except IdempotencyConflict as exc:
            return error(409, "idempotency_conflict", str(exc), run=exc.run_id)
        headers = {"Location": f"/v1/runs/{run.id}"}
        if not created:
            headers["Idempotent-Replayed"] = "true"
        if not wait:
            if created:
                return JSONResponse(Submitted(id=run.id, status=run.status).model_dump(),
                                    status_code=202, headers=headers)
            return JSONResponse(RunView.of(run, with_graph=False).body(), headers=headers)
        limit = min(timeout or config.wait_timeout, config.wait_timeout)
        run = await wait_for_run(run.id, limit)
        status = 200 if run.status in FINAL else 202
        return JSONResponse(RunView.of(run, with_graph=False).body(), status_code=status,
                            headers=headers)

    async def wait_for_run(run_id: str, seconds: float):
        future = hub.waiter(run_id)
        try:
            run = await run_in_threadpool(service.get, run_id)
            if run.status not in FINAL:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(future), seconds)
                run = await run_in_threadpool(service.get, run_id)
            return run
        finally:
            hub.forget_waiter(run_id, future)

    @app.get("/v1/runs", response_model=RunList)
    def list_runs(
        status: Annotated[list[str] | None, Query(description="repeat or comma-separate: "
                                                               + ", ".join(STATUSES))] = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        before: Annotated[int | None, Query(description="`next` from the previous page")] = None,
    ):
        """Runs, newest first."""
        wanted = [s.strip() for item in status or [] for s in item.split(",") if s.strip()]
        unknown = [s for s in wanted if s not in STATUSES]
        if unknown:
            return JSONResponse({"error": "invalid_request", "problems": [
                {"message": f"unknown status {s!r}; one of {', '.join(STATUSES)}", "input": "status"}
                for s in unknown]}, status_code=422)
        runs = service.list(wanted, limit + 1, before)
        more = len(runs) > limit
        runs = runs[:limit]
        return RunList(runs=[RunSummary.of(r) for r in runs], next=runs[-1].seq if more else None)

    @app.get("/v1/runs/{run_id}", response_model=RunView, responses={404: {"model": ErrorView}})
    def get_run(run_id: str):
        run = service.get(run_id)
        if run is None:
            return error(404, "not_found", f"no run {run_id!r}")
        return RunView.of(run)

    @app.post("/v1/runs/{run_id}/cancel", response_model=RunView,
              responses={202: {"model": RunView, "description": "running; it stops at the next step"},
                         404: {"model": ErrorView}, 409: {"model": ErrorView}})
    def cancel_run(run_id: str):
        """Cancel a queued run at once, or stop a running one at its next step."""
        outcome = service.cancel(run_id)
        if outcome is None:
            return error(404, "not_found", f"no run {run_id!r}")
        if not outcome.accepted:
            return error(409, "already_finished", f"run {run_id} already finished "
                         f"({outcome.run.status}); only a queued or running run can be cancelled",
                         run=run_id)
        view = RunView.of(outcome.run, with_graph=False).body()
        return JSONResponse(view, status_code=200 if outcome.run.status in FINAL else 202)

    @app.get("/v1/runs/{run_id}/outputs/{name:path}",
             responses={200: {"content": {"image/png": {}, "application/octet-stream": {}}},
                        404: {"model": ErrorView}})
    def get_output(run_id: str, name: str):
        """An output file of the run (a name from its `files`)."""
        try:
            path = service.output_path(run_id, name)
        except KeyError:
            return error(404, "not_found", f"no run {run_id!r}")
        except (FileNotFoundError, UnsafePath):
            return error(404, "not_found", f"run {run_id} has no output file {name!r}")
        media_type, inline = output_content_type(path)
        return FileResponse(path, media_type=media_type, filename=path.name,
                            content_disposition_type="inline" if inline else "attachment")

    # -- events -------------------------------------------------------------------------

    @app.websocket("/v1/events")
    async def events(ws: WebSocket, run: str | None = None):
        offered = [p.strip() for p in ws.headers.get("sec-websocket-protocol", "").split(",") if p.strip()]
        subprotocol = "loom.v1" if "loom.v1" in offered else None
        if any(p.startswith(WS_BEARER_PREFIX) for p in offered) and subprotocol is None:
            await ws.close(code=1002, reason="offer the 'loom.v1' subprotocol with the bearer one")
            return
        sub = hub.subscribe(run)  # before reading state, so nothing falls in between
        try:
            await ws.accept(subprotocol=subprotocol)
            if run is not None:
                record = await run_in_threadpool(service.get, run)
                if record is None:
                    await ws.send_json({"kind": "error", "data": {"message": f"no run {run!r}"}})
                    await ws.close(code=1008)
                    return
                await ws.send_json({"kind": "run_status", "run_id": run,
                                    "data": {"status": record.status}})
            await pump_events(ws, sub)
        finally:
            hub.unsubscribe(sub)

    async def pump_events(ws: WebSocket, sub) -> None:
        async def render(events: list[dict]) -> list[str]:
            return [json.dumps(event, default=str) for event in events]

        await relay(ws, sub, render, lambda text: send_or_close(ws, text, config.event_send_timeout))

    # -- catalogue, models, uploads, health ---------------------------------------------

    @app.get("/v1/nodes", response_model=NodeCatalogue)
    def nodes():
        """Every node type with its inputs (JSON Schema) and outputs."""
        return NodeCatalogue(nodes=service.catalogue())

    @app.get("/v1/models", response_model=ModelList)
    def models():
        """What the models folders hold: names by kind, and each model's family, size, format."""
        names, entries = service.models()
        return ModelList(models=names, entries=entries)

    @app.get("/v1/models/loaded", response_model=LoadedModels)
    def loaded_models():
        """The models the worker holds in memory (least recently used first): each one's name,
        kind, bytes per device and per dtype, and its quantization or upcast. Under Ray each
        worker holds its own, not listed here."""
        models = [m.to_dict() for m in service.executor.models.loaded()]
        return LoadedModels(models=models, bytes=sum(m["bytes"] for m in models))

    pulls = ModelPulls(service.settings.models_dirs, service.settings.allow_pickle, hub.publish)

    @app.post("/v1/models/pull", status_code=202, response_model=PullStatus,
              responses={403: {"model": ErrorView}, 409: {"model": ErrorView}})
    def pull_model(request: PullRequest):
        """Download a model (hub repository or URL) into the first models folder; progress
        arrives as `model_pull` events on /v1/events. Needs the token, even on loopback."""
        if config.token is None:
            return error(403, "token_required", "model pulls change what every client's runs "
                         "load: start the server with --token to allow them")
        try:
            return PullStatus(**pulls.start(request.source, request.kind, request.variant,
                                            request.sha256))
        except AlreadyPulling as exc:
            return error(409, "already_pulling", f"{request.source} is already being pulled",
                         pull=exc.pull_id)
        except NoModelsFolder as exc:
            return error(409, "no_models_folder", str(exc))

    @app.get("/v1/models/pulls/{pull_id}", response_model=PullStatus,
             responses={404: {"model": ErrorView}})
    def pull_status(pull_id: str):
        """One pull: running, installed or failed (with the reason)."""
        status = pulls.get(pull_id)
        if status is None:
            return error(404, "not_found", f"no pull {pull_id!r}")
        return PullStatus(**status)

    @app.post("/v1/uploads", status_code=201, response_model=Uploaded,
              responses={413: {"model": ErrorView}, 415: {"model": ErrorView}})
    async def upload(file: Annotated[UploadFile, File(description="a PNG, JPEG or WebP image")]):
        """Store an image for load-image nodes (re-encoded as PNG, named by its content)."""
        data = await file.read(config.max_upload_bytes + 1)
        if len(data) > config.max_upload_bytes:
            return error(413, "too_large", f"uploads are limited to {config.max_upload_bytes} bytes")
        try:
            stored = await run_in_threadpool(service.upload_image, data)
        except UploadRejected as exc:
            return error(415, "unsupported_image", str(exc))
        return Uploaded(name=stored.name, width=stored.width, height=stored.height,
                        format=stored.format, bytes=stored.bytes)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz():
        """Liveness: 200 while the worker takes runs, 503 if it has stopped."""
        if not service.dispatcher.healthy:
            return JSONResponse(Health(status="worker_stopped").model_dump(), status_code=503)
        return Health()

    app.state.service = service
    app.state.hub = hub
    guarded = Guard(app, config)
    guarded.fastapi = app   # for app.openapi() in tests and the schema snapshot
    return guarded
