"""One read of the run shared by a daemon's loops. Each of them reads the whole run every period (the verifier,
the lease renewal's acceptance check, the role loop, the router's): a read is a round of DHT requests to every
peer that holds the run's keys, so two loops reading a second apart doubled the swarm's read traffic for no
news. Callers that arrive while a read is in flight take its result, and a good read serves every caller for
`window` seconds (half a period); a caller that must see what happened since (a takeover choosing where to
resume, a verifier woken by an announcement) asks for a `fresh` one."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class SharedRead(Generic[T]):
    """`await get()`: the result of `read()`, shared as the module says. `good(result)` says whether a result may
    be served again (a failed read is not: the next caller reads anew)."""

    def __init__(self, read: Callable[[], Awaitable[T]], window: float, good: Callable[[T], bool] = lambda _: True,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._read, self.window, self._good, self._clock = read, window, good, clock
        self._last: tuple[float, T] | None = None  # (when its read started, the result)
        self._inflight: asyncio.Future[T] | None = None
        self.reads = 0  # reads started (what sharing saves shows against the calls)
        self.calls = 0

    async def get(self, *, fresh: bool = False) -> T:
        self.calls += 1
        if not fresh:
            if self._last is not None and self._clock() - self._last[0] < self.window:
                return self._last[1]
            if self._inflight is not None:
                return await asyncio.shield(self._inflight)
        return await asyncio.shield(self._start())

    def _start(self) -> asyncio.Future[T]:
        started = self._clock()
        self.reads += 1
        task = asyncio.ensure_future(self._read())
        self._inflight = task

        def done(t: asyncio.Future[T]) -> None:
            if self._inflight is t:
                self._inflight = None
            if not t.cancelled() and t.exception() is None and self._good(t.result()) and (
                    self._last is None or started >= self._last[0]):
                self._last = (started, t.result())

        task.add_done_callback(done)
        return task
