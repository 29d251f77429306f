"""What the roles and loops of one daemon share, handed to each of them instead of the daemon itself: the DHT
node, the content store, the run, its rules, the checker, the publisher, the options, the stop event, and one
way to read the run (`read_view`, shared by the loops: node.shared_read) whose every good read also feeds the
parts that watch the run (the member book, the publisher's pins, the verifier's lease watch)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.bundle import LocalRun
from node.checker import CheckpointChecker
from node.keeper import OwnRecords
from node.options import DaemonOptions
from node.publisher import Publisher
from node.shared_read import SharedRead
from protocol.swarm_records import ROUTER, ClusterState
from protocol.swarm_run import Schedule
from swarm.cas import ContentStore
from swarm.dht import SwarmNode
from swarm.state import RunRules, RunView, VerifiedState, read_run, verified_state


def all_done(states) -> bool:
    """Every cluster is DONE (by the states of a run view)."""
    return all(s == ClusterState.DONE for s in states)


async def unless_stopped(stopping: asyncio.Event, coro):
    """Await `coro`, or cancel it and return None as soon as `stopping` is set."""
    task = asyncio.ensure_future(coro)
    stop = asyncio.ensure_future(stopping.wait())
    try:
        await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.cancel()
    if task.done():
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return None


@dataclass
class NodeContext:
    opts: DaemonOptions
    home: Path
    node: SwarmNode
    store: ContentStore
    run: LocalRun
    checker: CheckpointChecker
    publisher: Publisher
    keeper: OwnRecords
    stopping: asyncio.Event
    say: Callable[[Any], Awaitable[None]]  # a gossip event (a courtesy: the DHT records are the truth)
    observers: list[Callable[[RunView], None]] = field(default_factory=list)  # fed every good read of the run
    _shared: SharedRead[RunView] | None = field(default=None, init=False, repr=False)

    @property
    def spec(self):
        return self.run.spec

    @property
    def schedule(self) -> Schedule:
        return self.run.manifest.schedule

    @property
    def rules(self) -> RunRules:
        return self.run.rules

    @property
    def period(self) -> float:
        return self.opts.period

    async def read_view(self, *, fresh: bool = False) -> RunView:
        """The run as the DHT holds it, judged with this node's own verdicts. A read that failed comes back
        with `failed` set (callers that decide call `.decidable()`); only good reads feed the observers. A good
        read serves every loop for half a period (its verdicts as they were when it started); `fresh` reads
        anew, for a caller that must see what happened since."""
        if self._shared is None:
            self._shared = SharedRead(self._read_view, self.period / 2, good=lambda v: not v.failed)
        return await self._shared.get(fresh=fresh)

    async def _read_view(self) -> RunView:
        view = await read_run(self.node, self.spec.run_id, self.spec.num_clusters, rules=self.rules,
                              local=self.checker.verdicts)
        if not view.failed:
            for observe in self.observers:
                observe(view)
        return view

    async def reach(self) -> VerifiedState:
        """Which clusters reached their target by the acceptance rule (with this node's own verdicts), and who
        is making progress on which: what the claim managers' snapshots are judged with."""
        return verified_state((await self.read_view()).decidable(), self.checker.verdicts)

    async def run_finished(self) -> bool:
        """Every expert DONE and an accepted-or-ours router checkpoint at its target, on a good read."""
        view = await self.read_view()
        router = view.latest_checkpoint(ROUTER)
        return (not view.failed and all_done(view.states) and router is not None
                and router.step >= self.schedule.router_target_steps)

    async def unless_stopped(self, coro):
        return await unless_stopped(self.stopping, coro)

    def checkpoint_root(self, slot: str) -> Path:
        """Where this node writes its own checkpoints of `slot`."""
        return self.home / "checkpoints" / self.spec.run_id / slot
