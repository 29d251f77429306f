"""node.shared_read: the daemon's loops share one read of the run (no network: a counted read function)."""

import asyncio

import pytest

from node.shared_read import SharedRead


class Reads:
    """A read that returns its own number, waits on `gate` when given, and fails on demand."""

    def __init__(self) -> None:
        self.n, self.gate, self.fail, self.bad = 0, None, False, False

    async def __call__(self) -> dict:
        self.n += 1
        n = self.n
        if self.gate is not None:
            await self.gate.wait()
        if self.fail:
            raise OSError("the DHT did not answer")
        return {"n": n, "failed": self.bad}


def shared(reads: Reads, now: list[float], window: float = 0.5) -> SharedRead:
    return SharedRead(reads, window, good=lambda v: not v["failed"], clock=lambda: now[0])


async def held(s: SharedRead, reads: Reads, callers: int) -> list[asyncio.Future]:
    """`callers` gets started while the read is held open, so that all of them arrive during it."""
    reads.gate = asyncio.Event()
    waiting = [asyncio.ensure_future(s.get()) for _ in range(callers)]
    await asyncio.sleep(0)
    return waiting


def test_callers_within_the_window_share_a_read_and_fresh_reads_anew():
    async def main() -> None:
        reads, now = Reads(), [0.0]
        s = shared(reads, now)
        assert (await s.get())["n"] == 1
        now[0] = 0.4
        assert (await s.get())["n"] == 1  # half a period old: shared
        assert (await s.get(fresh=True))["n"] == 2  # a caller that must see what happened since
        now[0] = 0.8
        assert (await s.get())["n"] == 2  # the fresh read (started at 0.4) serves until 0.9
        now[0] = 1.0
        assert (await s.get())["n"] == 3
        assert (s.reads, s.calls) == (3, 5)

    asyncio.run(main())


def test_callers_that_arrive_during_a_read_take_its_result():
    async def main() -> None:
        reads, now = Reads(), [0.0]
        s = shared(reads, now)
        waiting = await held(s, reads, 3)
        reads.gate.set()
        assert [(await w)["n"] for w in waiting] == [1, 1, 1] and reads.n == 1

    asyncio.run(main())


def test_a_failed_read_is_never_served_again_and_its_error_reaches_every_waiter():
    async def main() -> None:
        reads, now = Reads(), [0.0]
        s = shared(reads, now)
        reads.bad = True
        assert (await s.get())["failed"]
        assert (await s.get())["n"] == 2  # a read with `failed` set is not shared: the next caller reads anew
        reads.bad, reads.fail = False, True
        waiting = await held(s, reads, 2)
        reads.gate.set()
        for w in waiting:
            with pytest.raises(OSError, match="did not answer"):
                await w
        reads.fail, reads.gate = False, None
        assert (await s.get())["n"] == 4 and reads.n == 4

    asyncio.run(main())


def test_a_cancelled_caller_leaves_the_read_to_the_others():
    async def main() -> None:
        reads, now = Reads(), [0.0]
        s = shared(reads, now)
        first, second = await held(s, reads, 2)
        first.cancel()
        reads.gate.set()
        assert (await second)["n"] == 1 and first.cancelled() and reads.n == 1

    asyncio.run(main())
