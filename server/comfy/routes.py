"""ComfyUI's HTTP routes and websocket, mounted beside `/v1` on the same app and guard.

Every route answers at its bare path (what client libraries use) and under `/api` (what
the editor uses); the websocket is `/ws?clientId=...`. Handlers translate requests into
`ComfyShell` calls and nothing more. The guard in front of the app (Host, Origin, token,
body size) applies to all of them, the websocket included.
"""
from __future__ import annotations

import io
import json
import os
import sys
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, File, Form, Request, UploadFile, WebSocket
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from engine import Graph, GraphError
from engine.paths import UnsafePath, contained

from ..files import UploadRejected, output_content_type, store_uploaded_image
from ..security import tokens_equal
from . import editor
from .shell import ComfyShell, PromptRefused
from .socket import SERVER_FEATURES, ComfySocket
from .userdata import UserFileExists
from .workflow import ui_workflow

DEFAULT_WORKFLOW = Path(__file__).resolve().parents[2] / "graphs" / "txt2img.json"


def not_found(message: str) -> JSONResponse:
    return JSONResponse({"error": "not_found", "message": message}, status_code=404)


def bad_request(message: str) -> JSONResponse:
    return JSONResponse({"error": "bad_request", "message": message}, status_code=400)


async def json_body(request: Request, default: Any = None) -> Any:
    raw = await request.body()
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ValueError("the request body is not JSON") from None


def mount(app: FastAPI, shell: ComfyShell, *, token: str | None, max_upload_bytes: int,
          max_upload_pixels: int, send_timeout: float) -> None:
    """Add ComfyUI's routes, its websocket and the editor to `app`."""
    service = shell.service
    settings = service.settings
    socket = ComfySocket(service.hub, shell.routes, service.store.counts, service.store.get,
                         send_timeout)
    # Documented by ComfyUI's protocol, not in Loom's /v1 OpenAPI document.
    api = APIRouter(include_in_schema=False)

    # -- prompts, queue, history ----------------------------------------------------------

    @api.post("/prompt")
    async def post_prompt(request: Request):
        try:
            body = await json_body(request)
            return await run_in_threadpool(shell.submit, body)
        except ValueError as exc:
            return JSONResponse({"error": {"type": "invalid_prompt", "message": str(exc),
                                           "details": "", "extra_info": {}}, "node_errors": {}},
                                status_code=400)
        except PromptRefused as exc:
            return JSONResponse(exc.body, status_code=400)

    @api.get("/prompt")
    def get_prompt():
        return {"exec_info": {"queue_remaining": shell.queue_remaining()}}

    @api.get("/queue")
    def get_queue():
        return shell.queue()

    @api.post("/queue")
    async def post_queue(request: Request):
        body = await _object_body(request)
        if isinstance(body, Response):
            return body
        if body.get("clear"):
            await run_in_threadpool(shell.cancel_queued, None)
        if isinstance(body.get("delete"), list):
            await run_in_threadpool(shell.cancel_queued, [str(i) for i in body["delete"]])
        return Response(status_code=200)

    @api.post("/interrupt")
    async def post_interrupt(request: Request):
        body = await _object_body(request)
        if isinstance(body, Response):
            return body
        prompt_id = body.get("prompt_id")
        await run_in_threadpool(shell.interrupt, prompt_id if isinstance(prompt_id, str) else None)
        return Response(status_code=200)

    @api.post("/free")
    async def post_free(request: Request):
        body = await _object_body(request)
        if isinstance(body, Response):
            return body
        shell.free(bool(body.get("unload_models")), bool(body.get("free_memory")))
        return Response(status_code=200)

    @api.get("/history")
    def get_history(max_items: int | None = None, offset: int = 0):
        return shell.history(max_items if max_items is None else max(max_items, 0), max(offset, 0))

    @api.get("/history/{prompt_id}")
    def get_history_of(prompt_id: str):
        return shell.history_of(prompt_id)

    @api.post("/history")
    async def post_history(request: Request):
        body = await _object_body(request)
        if isinstance(body, Response):
            return body
        if body.get("clear"):
            await run_in_threadpool(shell.hide_history, None)
        if isinstance(body.get("delete"), list):
            await run_in_threadpool(shell.hide_history, [str(i) for i in body["delete"]])
        return Response(status_code=200)

    # -- jobs (the editor's queue panel) --------------------------------------------------

    @api.get("/jobs")
    def get_jobs(status: str = "", limit: int = 100, offset: int = 0, sort_order: str = "desc"):
        statuses = [s.strip() for s in status.split(",") if s.strip()]
        try:
            return shell.jobs(statuses, max(1, min(limit, 1000)), max(offset, 0),
                              newest_first=sort_order != "asc")
        except PromptRefused as exc:
            return JSONResponse(exc.body, status_code=400)

    @api.get("/jobs/{prompt_id}")
    def get_job(prompt_id: str):
        found = shell.job(prompt_id)
        return found if found is not None else not_found(f"no job {prompt_id!r}")

    @api.post("/jobs/{prompt_id}/cancel")
    def cancel_job(prompt_id: str):
        if not shell.cancel(prompt_id):
            return not_found(f"no job {prompt_id!r}")
        return {"cancelled": [prompt_id]}

    @api.post("/jobs/cancel")
    async def cancel_jobs(request: Request):
        body = await _object_body(request)
        if isinstance(body, Response):
            return body
        ids = [str(i) for i in body.get("job_ids", []) if isinstance(i, (str, int))]
        return {"cancelled": [i for i in ids if await run_in_threadpool(shell.cancel, i)]}

    # -- files ----------------------------------------------------------------------------

    @api.get("/view")
    def view(filename: str, type: str = "output", subfolder: str = ""):
        folders = {"output": settings.output_dir, "input": settings.input_dir,
                   "temp": shell.userdata.root / "temp"}
        base = folders.get(type)
        if base is None:
            return bad_request(f"type must be one of {', '.join(folders)}")
        name = f"{subfolder.strip('/')}/{filename}" if subfolder else filename
        try:
            path = contained(base, name)
        except UnsafePath:
            return not_found(f"no {type} file {name!r}")
        if not path.is_file():
            return not_found(f"no {type} file {name!r}")
        media_type, inline = output_content_type(path)
        return FileResponse(path, media_type=media_type, filename=path.name,
                            content_disposition_type="inline" if inline else "attachment")

    async def read_upload(image: UploadFile) -> bytes | JSONResponse:
        data = await image.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            return JSONResponse({"error": "too_large", "message": f"uploads are limited to "
                                                                  f"{max_upload_bytes} bytes"},
                                status_code=413)
        return data

    @api.post("/upload/image")
    async def upload_image(image: Annotated[UploadFile, File()]):
        data = await read_upload(image)
        if isinstance(data, Response):
            return data
        try:
            stored = await run_in_threadpool(service.upload_image, data)
        except UploadRejected as exc:
            return JSONResponse({"error": "unsupported_image", "message": str(exc)}, status_code=415)
        return {"name": stored.name, "subfolder": "", "type": "input"}

    @api.post("/upload/mask")
    async def upload_mask(image: Annotated[UploadFile, File()],
                          original_ref: Annotated[str, Form()] = "{}"):
        data = await read_upload(image)
        if isinstance(data, Response):
            return data
        try:
            ref = json.loads(original_ref)
            original = contained(settings.input_dir, _ref_name(ref))
        except (ValueError, TypeError, UnsafePath) as exc:
            return bad_request(f"original_ref must name an input image: {exc}")
        if not original.is_file():
            return not_found(f"no input image {_ref_name(ref)!r}")
        try:
            stored = await run_in_threadpool(_store_masked, original, data,
                                              Path(settings.input_dir), max_upload_pixels)
        except UploadRejected as exc:
            return JSONResponse({"error": "unsupported_image", "message": str(exc)}, status_code=415)
        return {"name": stored.name, "subfolder": "", "type": "input", "original_ref": ref}

    # -- node catalogue, system, editor bookkeeping ---------------------------------------

    @api.get("/object_info")
    def object_info():
        return shell.object_info.all()

    @api.get("/object_info/{class_type}")
    def object_info_one(class_type: str):
        return shell.object_info.one(class_type)

    @api.get("/system_stats")
    def system_stats():
        return system_report(settings.device)

    @api.get("/embeddings")
    def embeddings():
        return shell.models_of("embeddings")

    @api.get("/extensions")
    def extensions():
        return ["/loom/editor.js"] if editor.editor_root() is not None else []

    @api.get("/features")
    def features():
        return {**SERVER_FEATURES, "max_upload_size": max_upload_bytes}

    @api.get("/settings")
    def get_settings():
        return shell.userdata.settings()

    @api.post("/settings")
    async def post_settings(request: Request):
        body = await _object_body(request)
        if isinstance(body, Response):
            return body
        await run_in_threadpool(shell.userdata.update_settings, body)
        return Response(status_code=200)

    @api.get("/settings/{setting_id}")
    def get_setting(setting_id: str):
        return shell.userdata.settings().get(setting_id)

    @api.post("/settings/{setting_id}")
    async def post_setting(setting_id: str, request: Request):
        try:
            value = await json_body(request)
        except ValueError as exc:
            return bad_request(str(exc))
        await run_in_threadpool(shell.userdata.update_settings, {setting_id: value})
        return Response(status_code=200)

    @api.get("/userdata")
    def list_userdata(dir: str, recurse: bool = False, full_info: bool = False, split: bool = False):
        try:
            found = shell.userdata.list(dir, recurse=recurse, full_info=full_info, split=split)
        except UnsafePath as exc:
            return bad_request(str(exc))
        return found if found is not None else not_found(f"no userdata folder {dir!r}")

    @api.get("/userdata/{name:path}")
    def get_userdata(name: str):
        try:
            path = shell.userdata.path(name)
        except UnsafePath as exc:
            return bad_request(str(exc))
        if not path.is_file():
            return not_found(f"no userdata file {name!r}")
        return FileResponse(path, media_type="application/json" if path.suffix == ".json"
                            else "application/octet-stream", content_disposition_type="attachment")

    # Before the plain POST, whose {name:path} would also match '.../move/...'.
    @api.post("/userdata/{name:path}/move/{dest:path}")
    def move_userdata(name: str, dest: str, overwrite: bool = False, full_info: bool = False):
        try:
            moved = shell.userdata.move(name, dest, overwrite=overwrite)
        except UnsafePath as exc:
            return bad_request(str(exc))
        except UserFileExists:
            return JSONResponse({"error": "exists", "message": f"{dest!r} exists"}, status_code=409)
        if moved is None:
            return not_found(f"no userdata file {name!r}")
        return shell.userdata.info(moved) if full_info else shell.userdata.info(moved)["path"]

    @api.post("/userdata/{name:path}")
    async def post_userdata(name: str, request: Request, overwrite: bool = True,
                            full_info: bool = False):
        data = await request.body()
        try:
            path = await run_in_threadpool(shell.userdata.write, name, data, overwrite=overwrite)
        except UnsafePath as exc:
            return bad_request(str(exc))
        except UserFileExists:
            return JSONResponse({"error": "exists", "message": f"{name!r} exists"}, status_code=409)
        return shell.userdata.info(path) if full_info else shell.userdata.info(path)["path"]

    @api.delete("/userdata/{name:path}")
    def delete_userdata(name: str):
        try:
            deleted = shell.userdata.delete(name)
        except UnsafePath as exc:
            return bad_request(str(exc))
        return Response(status_code=204) if deleted else not_found(f"no userdata file {name!r}")

    @api.get("/users")
    def users():
        return {"storage": "server", "migrated": True}

    @api.get("/i18n")
    def i18n():
        return {}

    @api.get("/global_subgraphs")
    def global_subgraphs():
        return {}

    @api.get("/experiment/models")
    def experiment_models():
        return []

    @api.get("/workflow_templates")
    def workflow_templates():
        return {}

    @api.get("/node_replacements")
    def node_replacements():
        return {}

    def drawn(graph: dict) -> dict | JSONResponse:
        info = shell.object_info.all()
        missing = sorted({body["type"] for body in graph["nodes"].values()} - set(info))
        if missing:
            return not_found(f"the graph needs node types this server does not load: "
                             f"{', '.join(missing)}")
        return ui_workflow(graph, info)

    @api.get("/loom/default_workflow")
    def default_workflow():
        if not DEFAULT_WORKFLOW.is_file():   # an install without the example graphs
            return not_found("no default workflow in this installation")
        return drawn(json.loads(DEFAULT_WORKFLOW.read_text()))   # a 404 keeps the editor's own

    @api.post("/loom/workflow")
    async def workflow_of_graph(request: Request):
        """A Loom graph document (as a Loom PNG carries it) drawn as an editor workflow."""
        try:
            graph = Graph.from_dict(await json_body(request)).to_dict()
        except (ValueError, GraphError) as exc:
            return bad_request(f"not a Loom graph: {exc}")
        return drawn(graph)

    app.include_router(api)
    app.include_router(api, prefix="/api")

    @app.websocket("/ws")
    async def comfy_ws(ws: WebSocket, clientId: str | None = None, all: bool = False):  # noqa: N803
        await socket.serve(ws, clientId, all)

    # -- sign-in and the editor (last: the editor's files are a catch-all) ----------------

    @app.get("/login", include_in_schema=False)
    def login_form():
        return editor.login_page()

    @app.post("/login", include_in_schema=False)
    async def login(token_given: Annotated[str, Form(alias="token")] = ""):
        if token is not None and not tokens_equal(token_given, token):
            return editor.login_page("That token is not this server's.", status_code=401)
        response = RedirectResponse("./", status_code=303)
        if token is not None:
            response.set_cookie(editor.TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    @app.get("/loom/editor.js", include_in_schema=False)
    def editor_extension():
        return editor.extension_script()

    @app.get("/{name:path}", include_in_schema=False)
    def editor_files(name: str):
        root = editor.editor_root()
        if root is None:
            return editor.install_page() if name in ("", "index.html") else not_found("no such page")
        found = editor.editor_file(root, name)
        return found if found is not None else not_found(f"no such file {name!r}")


def system_report(device: str) -> dict:
    """`/system_stats`: the editor reads `system.argv` and `required_frontend_version` at start."""
    page, pages, free = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_AVPHYS_PAGES")
    vram_total = vram_free = 0
    if device.startswith("cuda"):
        import torch

        vram_free, vram_total = torch.cuda.mem_get_info(torch.device(device))
    return {
        "system": {"os": os.name, "ram_total": page * pages, "ram_free": page * free,
                   "comfyui_version": _version("loom"),
                   "required_frontend_version": _version(editor.EDITOR_PACKAGE),
                   "python_version": sys.version, "pytorch_version": _version("torch"),
                   "embedded_python": False, "argv": sys.argv, "loom_version": _version("loom")},
        "devices": [{"name": device, "type": device.split(":")[0], "index": 0,
                     "vram_total": vram_total, "vram_free": vram_free,
                     "torch_vram_total": vram_total, "torch_vram_free": vram_free}],
    }


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


async def _object_body(request: Request) -> dict | Response:
    try:
        body = await json_body(request, default={})
    except ValueError as exc:
        return bad_request(str(exc))
    return body if isinstance(body, dict) else bad_request("the request body must be a JSON object")


def _ref_name(ref: Any) -> str:
    if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
        raise ValueError("expected {filename, subfolder?, type?}")
    subfolder = ref.get("subfolder") or ""
    return f"{subfolder.strip('/')}/{ref['filename']}" if subfolder else ref["filename"]


def _store_masked(original: Path, mask_png: bytes, input_dir: Path, max_pixels: int):
    """The original input image with the uploaded mask's alpha as its alpha (ComfyUI's mask editor)."""
    from PIL import Image

    try:
        mask = Image.open(io.BytesIO(mask_png))
        mask.load()
    except Exception as exc:  # noqa: BLE001 - PIL raises many types for broken files
        raise UploadRejected(f"not a readable mask image: {exc}") from None
    with Image.open(original) as source:
        combined = source.convert("RGBA")
    alpha = mask.convert("RGBA").getchannel("A").resize(combined.size)
    combined.putalpha(alpha)
    buffer = io.BytesIO()
    combined.save(buffer, format="PNG")
    return store_uploaded_image(buffer.getvalue(), input_dir, max_pixels=max_pixels)
