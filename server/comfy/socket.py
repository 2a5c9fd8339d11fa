"""ComfyUI's websocket (`/ws?clientId=...`): the engine's events as ComfyUI messages.

Each connection subscribes to the same `EventHub` as `/v1/events` and translates:

    run_queued / any run's end   -> status {exec_info: {queue_remaining}}  (running included)
    run_started                  -> execution_start
    node_cached (a batch)        -> execution_cached {nodes}
    node_started                 -> executing {node}
    node_progress                -> progress {value, max, node}
    run_finished                 -> executed {node, output: {images}} per image-saving node,
                                    executing {node: null}, execution_success
    run_failed                   -> execution_error {node_id, node_type, exception_message, ...}
    run_cancelled                -> execution_interrupted

A prompt's events go to the client whose id it was submitted with; prompts without a
client id (and `/v1` runs) go to every client, and a client that connects with
`?all=true` gets every prompt's events. `executed` is sent when the run's record is final,
because that is when the files it wrote are known. No binary preview frames are sent:
Loom's sampler reports steps, not preview images, and clients that read every binary
frame as a result image must never get one unasked.
"""
from __future__ import annotations

import json
import logging
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

from fastapi import WebSocket
from fastapi.concurrency import run_in_threadpool

from ..events import EVENTS_DROPPED, EventHub, relay, send_or_close
from ..store import QUEUED, RUNNING, RunRecord
from .views import client_id_of, node_images, prompt_id_of

log = logging.getLogger(__name__)

# Sent in reply to the client's feature_flags (and from GET /features).
SERVER_FEATURES = {"supports_preview_metadata": False}


@dataclass
class RunIdentity:
    prompt_id: str
    client_id: str | None
    executed: list[str] = field(default_factory=list)
    current: str | None = None


class PromptRoutes:
    """Which prompt and client each run belongs to, shared by every connection."""

    KEEP = 1000     # recent runs remembered; older ones are read back from the store

    def __init__(self, get_run: Callable[[str], RunRecord | None]):
        self.get_run = get_run
        self.runs: OrderedDict[str, RunIdentity] = OrderedDict()

    def remember(self, run_id: str, prompt_id: str, client_id: str | None) -> None:
        self.runs[run_id] = RunIdentity(prompt_id, client_id)
        while len(self.runs) > self.KEEP:
            self.runs.popitem(last=False)

    async def identity(self, run_id: str) -> RunIdentity:
        known = self.runs.get(run_id)
        if known is None:
            run = await run_in_threadpool(self.get_run, run_id)
            known = RunIdentity(prompt_id_of(run) if run else run_id,
                                client_id_of(run) if run else None)
            self.remember(run_id, known.prompt_id, known.client_id)
            known = self.runs[run_id]
        return known


def message(kind: str, **data: Any) -> str:
    return json.dumps({"type": kind, "data": data}, default=str)


def _ms(seconds: float | None = None) -> int:
    return int((seconds if seconds is not None else time.time()) * 1000)


class ComfySocket:
    def __init__(self, hub: EventHub, routes: PromptRoutes, counts: Callable[[], dict[str, int]],
                 get_run: Callable[[str], RunRecord | None], send_timeout: float):
        self.hub = hub
        self.routes = routes
        self.counts = counts
        self.get_run = get_run
        self.send_timeout = send_timeout

    async def queue_remaining(self) -> int:
        counts = await run_in_threadpool(self.counts)
        return counts.get(QUEUED, 0) + counts.get(RUNNING, 0)

    async def status(self, sid: str | None = None) -> str:
        data: dict[str, Any] = {"status": {"exec_info": {"queue_remaining": await self.queue_remaining()}}}
        if sid is not None:
            data["sid"] = sid
        return message("status", **data)

    async def serve(self, ws: WebSocket, client_id: str | None, everything: bool) -> None:
        sid = client_id or uuid.uuid4().hex
        sub = self.hub.subscribe(None)   # before the first status, so nothing falls in between
        try:
            await ws.accept()
            await ws.send_text(await self.status(sid))
            await self.pump(ws, sub, sid, everything)
        finally:
            self.hub.unsubscribe(sub)

    async def pump(self, ws: WebSocket, sub, sid: str, everything: bool) -> None:
        async def answer(text: str) -> None:
            if _is_feature_flags(text):
                await self.send(ws, message("feature_flags", **SERVER_FEATURES))

        await relay(ws, sub, lambda events: self.translate(events, sid, everything),
                    lambda text: self.send(ws, text), on_text=answer)

    async def send(self, ws: WebSocket, text: str) -> bool:
        return await send_or_close(ws, text, self.send_timeout)

    async def translate(self, events: list[dict], sid: str, everything: bool) -> list[str]:
        out: list[str] = []
        cached: list[str] = []
        cached_prompt: str | None = None

        def flush_cached():
            nonlocal cached, cached_prompt
            if cached:
                out.append(message("execution_cached", nodes=cached, prompt_id=cached_prompt,
                                   timestamp=_ms()))
            cached, cached_prompt = [], None

        for event in events:
            kind, run_id = event.get("kind"), event.get("run_id")
            if kind == EVENTS_DROPPED:
                flush_cached()
                out.append(await self.status())
                continue
            if run_id is None:
                continue
            who = await self.routes.identity(run_id)
            if not (everything or who.client_id is None or who.client_id == sid):
                if kind in ("run_queued", "run_finished", "run_failed", "run_cancelled"):
                    out.append(await self.status())
                continue
            pid, node = who.prompt_id, event.get("node")
            if kind == "node_cached":
                if cached_prompt not in (None, pid):
                    flush_cached()
                cached.append(node)
                cached_prompt = pid
                continue
            flush_cached()
            out.extend(await self.translate_one(kind, event, who, pid, node))
        flush_cached()
        return out

    async def translate_one(self, kind: str, event: dict, who: RunIdentity, pid: str,
                            node: str | None) -> list[str]:
        data = event.get("data") or {}
        if kind == "run_queued":
            return [await self.status()]
        if kind == "run_started":
            return [message("execution_start", prompt_id=pid, timestamp=_ms(event.get("time")))]
        if kind == "node_started":
            who.current = node
            return [message("executing", node=node, display_node=node, prompt_id=pid)]
        if kind == "node_progress":
            return [message("progress", value=data.get("step"), max=data.get("total"),
                            prompt_id=pid, node=node)]
        if kind == "node_finished":
            if node not in who.executed:
                who.executed.append(node)
            return []
        if kind == "run_finished":
            run = await run_in_threadpool(self.get_run, event["run_id"])
            done = [message("executed", node=n, display_node=n, output=images, prompt_id=pid)
                    for n, images in (node_images(run) if run else {}).items()]
            done += [message("executing", node=None, display_node=None, prompt_id=pid),
                     message("execution_success", prompt_id=pid, timestamp=_ms(event.get("time"))),
                     await self.status()]
            return done
        if kind == "run_failed":
            error = data.get("error") if isinstance(data.get("error"), dict) else data
            return [message("execution_error", prompt_id=pid,
                            node_id=error.get("node") or who.current,
                            node_type=error.get("type") or event.get("node_type"),
                            executed=list(who.executed),
                            exception_message=error.get("message", ""),
                            exception_type=error.get("error", "node_failed"),
                            traceback=[], current_inputs={}, current_outputs={},
                            timestamp=_ms(event.get("time"))),
                    await self.status()]
        if kind == "run_cancelled":
            return [message("execution_interrupted", prompt_id=pid, node_id=who.current,
                            node_type=event.get("node_type"), executed=list(who.executed),
                            timestamp=_ms(event.get("time"))),
                    await self.status()]
        return []


def _is_feature_flags(text: str) -> bool:
    try:
        return json.loads(text).get("type") == "feature_flags"
    except (ValueError, AttributeError):
        return False
