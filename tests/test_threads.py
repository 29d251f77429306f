"""expert.threads: a thread pool whose idle threads end, and with them the OpenMP teams of torch's CPU threads
that would otherwise make libgomp throttle the training thread's (the daemon's overhead, issue 28)."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from expert.checkpoint_writer import validates_inline
from expert.threads import ShortLivedThreads

TASKS = Path("/proc/self/task")


def _native_threads() -> int:
    return len(list(TASKS.iterdir()))


def _steady_threads(quiet: float = 0.5, timeout: float = 10.0) -> int:
    """The thread count once it has not changed for `quiet` s: threads of earlier tests (a pool's idle
    thread, its team) may still be leaving when a test starts (CI once counted one more at the start, and
    the premise below then failed by one)."""
    deadline = time.monotonic() + timeout
    n, since = _native_threads(), time.monotonic()
    while time.monotonic() - since < quiet and time.monotonic() < deadline:
        time.sleep(0.02)
        if (m := _native_threads()) != n:
            n, since = m, time.monotonic()
    return n


def _settles_at(n: int, timeout: float = 10.0) -> bool:
    """Whether the process comes down to `n` threads or fewer (a thread leaves /proc just after `join`
    returns, and a team's threads just after their master)."""
    deadline = time.monotonic() + timeout
    while _native_threads() > n and time.monotonic() < deadline:
        time.sleep(0.01)
    return _native_threads() <= n


def _parallel_op() -> float:
    x = torch.randn(64, 512, 256)
    return float((x * 2 + 1).sum())  # elementwise ops over 8 M values: an OpenMP parallel region


@pytest.fixture
def two_torch_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_jobs_run_bounded_and_threads_end_when_idle():
    pool = ShortLivedThreads(2, "t")
    both = threading.Barrier(2, timeout=10)  # passes only when two jobs run at once
    running, peak, lock = [0], [0], threading.Lock()

    def job(i: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        if i < 2:
            both.wait()
        time.sleep(0.01)  # let the jobs overlap if more threads than allowed ran
        with lock:
            running[0] -= 1
        if i == 3:
            raise ValueError("job 3 fails")
        return i * i

    futures = [pool.submit(job, i) for i in range(6)]
    assert [f.result(10) for f in futures if f is not futures[3]] == [0, 1, 4, 16, 25]
    with pytest.raises(ValueError, match="job 3 fails"):
        futures[3].result(10)
    assert peak[0] == 2  # two at once (the barrier), never more
    pool.shutdown(wait=True)
    assert not [t for t in threading.enumerate() if t.name.startswith("t_")]  # every thread ended
    with pytest.raises(RuntimeError):
        pool.submit(job, 0)


@pytest.mark.skipif(not TASKS.exists(), reason="counts threads through /proc")
def test_no_openmp_team_outlives_its_job(two_torch_threads):
    base = _steady_threads()
    kept = ThreadPoolExecutor(1)  # what asyncio uses by default: its idle thread keeps its OpenMP team
    kept.submit(_parallel_op).result()
    assert _native_threads() >= base + 2  # the idle worker thread and its team's thread: the premise holds
    assert not _settles_at(base, timeout=0.5)  # kept while the pool lives
    kept.shutdown(wait=True)
    assert _settles_at(base)
    pool = ShortLivedThreads(1)
    pool.submit(_parallel_op).result()
    assert _settles_at(base)  # the idle thread ended, and its team with it, while the pool lives on
    pool.shutdown(wait=True)


def test_asyncio_takes_it_as_its_default_executor():
    async def main() -> str:
        asyncio.get_running_loop().set_default_executor(ShortLivedThreads(2, "loop"))
        return await asyncio.to_thread(lambda: threading.current_thread().name)

    assert asyncio.run(main()).startswith("loop_")


def test_validation_moves_into_the_training_thread_when_the_cores_are_full():
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(cores)
        assert validates_inline("cpu")  # a second team of `cores` threads would oversubscribe them
        assert not validates_inline("cuda")  # a GPU validates beside the training
        if cores >= 2:
            torch.set_num_threads(cores // 2)
            assert not validates_inline("cpu")  # --cpu-threads leaves room: validate in the background
    finally:
        torch.set_num_threads(before)
