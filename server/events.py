"""Carrying events from the worker thread to websocket clients and `wait=true` callers.

The worker must never wait for a client. `publish()` only hands the event to the
event loop (`call_soon_threadsafe`); there each client has a bounded queue. When a
client falls behind and its queue is full, its oldest events are dropped and the next
message it receives is `{"kind": "events_dropped", "data": {"count": n}}`, so it knows
to re-read run state over HTTP. A client that cannot take a single message within
`send_timeout` seconds is disconnected (close code 1013, reason "too slow").
"""
from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from typing import Any, Awaitable, Callable

from starlette.websockets import WebSocketDisconnect

log = logging.getLogger(__name__)

EVENTS_DROPPED = "events_dropped"


class Subscriber:
    def __init__(self, run_id: str | None, maxsize: int):
        self.run_id = run_id
        self.maxsize = maxsize
        self.queue: collections.deque[dict] = collections.deque()
        self.dropped = 0
        self.total_dropped = 0
        self.ready = asyncio.Event()

    def offer(self, event: dict) -> None:
        if self.run_id is not None and event.get("run_id") != self.run_id:
            return
        if len(self.queue) >= self.maxsize:
            self.queue.popleft()
            self.dropped += 1
            self.total_dropped += 1
        self.queue.append(event)
        self.ready.set()

    async def next_batch(self) -> list[dict]:
        """The waiting events (oldest first), led by a drop notice if some were lost."""
        await self.ready.wait()
        self.ready.clear()
        batch = list(self.queue)
        self.queue.clear()
        if self.dropped:
            batch.insert(0, {"kind": EVENTS_DROPPED, "run_id": self.run_id,
                             "data": {"count": self.dropped,
                                      "reason": "this client fell behind; oldest events dropped"}})
            self.dropped = 0
        return batch


class EventHub:
    """Fan-out on the event loop; `publish` and `run_finished` may be called from any thread."""

    def __init__(self, queue_size: int = 256):
        self.queue_size = queue_size
        self.loop: asyncio.AbstractEventLoop | None = None
        self.subscribers: set[Subscriber] = set()
        self.waiters: dict[str, list[asyncio.Future]] = {}

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def _call(self, fn, *args) -> None:
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # loop shutting down
            pass

    # -- from any thread ----------------------------------------------------------------

    def publish(self, event: dict[str, Any]) -> None:
        self._call(self._fan_out, event)

    def run_finished(self, run_id: str) -> None:
        self._call(self._wake_waiters, run_id)

    # -- on the loop --------------------------------------------------------------------

    def subscribe(self, run_id: str | None = None) -> Subscriber:
        sub = Subscriber(run_id, self.queue_size)
        self.subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)
        if sub.total_dropped:
            log.info("event client (run=%s) dropped %d events", sub.run_id, sub.total_dropped)

    def waiter(self, run_id: str) -> asyncio.Future:
        """A future set when `run_id` reaches a final state (register before checking state)."""
        future = asyncio.get_running_loop().create_future()
        self.waiters.setdefault(run_id, []).append(future)
        return future

    def forget_waiter(self, run_id: str, future: asyncio.Future) -> None:
        futures = self.waiters.get(run_id, [])
        if future in futures:
            futures.remove(future)
        if not futures:
            self.waiters.pop(run_id, None)

    def _fan_out(self, event: dict) -> None:
        for sub in list(self.subscribers):
            sub.offer(event)

    def _wake_waiters(self, run_id: str) -> None:
        for future in self.waiters.pop(run_id, []):
            if not future.done():
                future.set_result(None)


async def send_or_close(ws, text: str, timeout: float) -> bool:
    """Send one message; a client that cannot take it within `timeout` is closed (1013)."""
    try:
        await asyncio.wait_for(ws.send_text(text), timeout)
        return True
    except asyncio.TimeoutError:
        log.warning("closing a websocket client that stopped reading")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(code=1013, reason="too slow"), 1)
        return False
    except (WebSocketDisconnect, RuntimeError):
        return False


async def relay(ws, sub: "Subscriber", render: Callable[[list[dict]], Awaitable[list[str]]],
                send: Callable[[str], Awaitable[bool]],
                on_text: Callable[[str], Awaitable[None]] | None = None) -> None:
    """Send `sub`'s events to a websocket client, each batch rendered to messages, until the
    client leaves or a send fails; `on_text` answers what the client sends meanwhile."""
    async def read_client():
        with contextlib.suppress(WebSocketDisconnect, RuntimeError):
            while True:
                incoming = await ws.receive()
                if incoming["type"] == "websocket.disconnect":
                    return
                if on_text is not None and incoming.get("text"):
                    await on_text(incoming["text"])

    closed = asyncio.create_task(read_client())
    try:
        while True:
            batch = asyncio.create_task(sub.next_batch())
            done, _ = await asyncio.wait({batch, closed}, return_when=asyncio.FIRST_COMPLETED)
            if closed in done:
                batch.cancel()
                return
            for text in await render(batch.result()):
                if not await send(text):
                    return
    finally:
        closed.cancel()
