"""A thread pool whose idle threads end at once, so that the OpenMP team each of them started ends with it.

torch's CPU threads are an OpenMP (libgomp) team per thread that ran a parallel op, kept for as long as that
thread lives. While libgomp manages more threads than there are cores, it stops spinning between parallel
regions: every op of the training then waits for its sleeping workers to wake. With torch's default of one
thread per core, one idle team left behind by a worker thread that once built a trainer or computed a
validation loss is enough: measured on 2 cores, elementwise ops ran 1.5-1.8× slower and the daemon's
training at 0.63-0.74× the bare loop's speed (docs/RESULTS.md). `concurrent.futures.ThreadPoolExecutor`
(asyncio's default executor) keeps its idle threads for good; this pool runs the same jobs with the same
bound, and a thread ends as soon as no job waits for it. The daemon makes it its event loop's default executor."""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


class ShortLivedThreads(ThreadPoolExecutor):
    """At most `max_workers` threads run the submitted jobs in order; a thread ends when it finds no job.
    A ThreadPoolExecutor (asyncio accepts nothing else as a default executor) with its own `submit` and
    `shutdown`: none of the parent's machinery runs."""

    _counter = itertools.count()

    def __init__(self, max_workers: int, thread_name_prefix: str = "short-lived") -> None:
        super().__init__(max_workers, thread_name_prefix)  # checks max_workers; its queue stays unused
        self.max_workers, self._prefix = max_workers, thread_name_prefix
        self._jobs: collections.deque[tuple[Future, Callable, tuple, dict]] = collections.deque()
        self._threads: set[threading.Thread] = set()
        self._lock = threading.Lock()
        self._closed = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.append((fut, fn, args, kwargs))
            if len(self._threads) < self.max_workers:
                t = threading.Thread(target=self._work, name=f"{self._prefix}_{next(self._counter)}")
                self._threads.add(t)
                t.start()
        return fut

    def _work(self) -> None:
        me = threading.current_thread()
        while True:
            with self._lock:  # the same lock as submit: a job never waits on a thread that is leaving
                if not self._jobs:
                    self._threads.discard(me)
                    return
                fut, fn, args, kwargs = self._jobs.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as e:  # the caller sees it, as with ThreadPoolExecutor
                fut.set_exception(e)
            else:
                fut.set_result(result)
            del fut, fn, args, kwargs

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            if cancel_futures:
                while self._jobs:
                    self._jobs.popleft()[0].cancel()
            running = list(self._threads)
        if wait:
            for t in running:
                t.join()
