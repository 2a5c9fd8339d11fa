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
import logging
from typing import Any

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
