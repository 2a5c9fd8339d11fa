"""ComfyUI's HTTP API, its websocket and its node editor, served by `loom serve` beside `/v1`.

Another shell over the same run service, store, dispatcher and guard as `/v1`: scripts
written against ComfyUI's API and ComfyUI's browser editor work against Loom unchanged.
`routes` maps requests to `shell.ComfyShell`; `prompts` reads API-format prompts and shapes
errors; `object_info` describes every node type; `socket` translates events; `views`
renders runs as queue, history and job entries; `userdata` keeps the editor's files;
`editor` serves the installed editor; `workflow` draws Loom's default graph for it.
"""
from __future__ import annotations

from fastapi import FastAPI

from ..config import ServerConfig
from .routes import mount as _mount_routes
from .shell import ComfyShell


def mount(app: FastAPI, shell: ComfyShell, config: ServerConfig) -> None:
    _mount_routes(app, shell, token=config.token, max_upload_bytes=config.max_upload_bytes,
                  max_upload_pixels=config.max_upload_pixels, send_timeout=config.event_send_timeout)


__all__ = ["mount", "ComfyShell"]
