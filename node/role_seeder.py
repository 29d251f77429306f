"""The seeder role: keep the run's data and every slot's newest accepted checkpoint pinned and provided, and
the signed records that make the run's outcome alive in the DHT past their TTL, so they outlive the peers
that made them. The seeder keeps its own state: the archive ledger, and whether every cluster is done."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from hivemind.utils.timed_storage import get_dht_time

from node.bundle import MAX_BUNDLE_BYTES, checkpoint_limit
from node.context import NodeContext, all_done
from protocol.errors import ParisError
from protocol.swarm_records import run_slots
from swarm import archive, layout
from swarm.acceptance import accepted
from swarm.state import RunView

log = logging.getLogger("node.seeder")

ARCHIVERS = 3  # seeders that keep each key's records alive past their writers' TTL


def archive_share(keys: list[str], run_id: str, me: str, members: dict, count: int = ARCHIVERS) -> list[str]:
    """The keys whose records this node archives: those for which it is among the `count` seeders that a
    rendezvous hash of the key picks (swarm.layout.archivers) from the run's members that seed (every role but
    an observer's) and itself. A key's archived copies then come from a few peers however many seed, instead
    of one copy per seeder per record; a node that sees no other member archives everything."""
    seeders = {p for p, m in members.items() if getattr(m, "role", "observer") != "observer"} | {me}
    return [k for k in keys if me in layout.archivers(run_id, k, seeders, count)]


class Seeder:
    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.all_clusters_done = False  # by the newest seed round's read (a waiting `--role expert` stops waiting)
        self._ledger: archive.Ledger | None = None

    @property
    def ledger_path(self) -> Path:
        return self.ctx.home / "archive" / f"{self.ctx.spec.run_id}.json"

    @property
    def ledger(self) -> archive.Ledger:
        """The node's archive ledger of its run (loaded from HOME/archive/RUN.json on first use)."""
        if self._ledger is None:
            self._ledger = archive.Ledger.load(self.ledger_path, self.ctx.spec.run_id)
        return self._ledger

    async def round(self) -> None:
        """One seed round: hold the data, read the run, hold every slot's newest accepted checkpoint, archive
        the facts of its outcome."""
        await self.seed_data()
        view = await self.ctx.read_view()
        self.all_clusters_done = all_done(view.states)
        await self.replicate_accepted(view)
        await self.archive_facts(view)

    async def seed_data(self) -> None:
        """Pin and provide the bundle and every cluster's training and held-out data."""
        ctx = self.ctx
        await ctx.store.get(ctx.run.bundle_cid, max_bytes=MAX_BUNDLE_BYTES)
        for entry in ctx.run.manifest.clusters:
            if ctx.stopping.is_set():
                return
            await ctx.store.get(entry.cid, expected_bytes=entry.bytes)
            await ctx.store.get(entry.holdout_cid, expected_bytes=entry.holdout_bytes)

    async def replicate_accepted(self, view: RunView) -> None:
        ctx = self.ctx
        for slot in run_slots(ctx.spec.num_clusters):
            if ctx.stopping.is_set():
                return
            try:
                await ctx.publisher.replicate(slot, view.accepted_checkpoints(slot), checkpoint_limit(ctx.run, slot))
            except (ParisError, OSError) as e:
                log.warning("could not replicate %s: %s", slot, e)

    async def archive_facts(self, view: RunView) -> bool:
        """Add the facts of the run's outcome that this round saw to the ledger (swarm.archive), so that `keep`
        keeps them alive past their TTL. Returns whether the ledger changed."""
        ctx = self.ctx
        spec = ctx.spec
        keys = archive_share(archive.archive_keys(spec.run_id, view.shard_keys), spec.run_id, ctx.node.peer_id,
                             view.members)
        sets = await asyncio.gather(*(ctx.node.get(k) for k in keys))
        found = [(key, rec) for key, got in zip(keys, sets, strict=True) for rec in got.records]
        accepted_cids = {j.claim.cid for slot in run_slots(spec.num_clusters) for j in accepted(view.judged(slot))}
        creator = spec.creator.encode() if spec.creator else None
        changed = self.ledger.add(archive.select(spec.run_id, creator, accepted_cids, found))
        if changed:
            self.ledger.save(self.ledger_path)
        return changed

    async def keep(self) -> int:
        """Publish an archived copy of every ledger entry not published within a third of the TTL (in its own
        loop, so that a long verification round cannot let copies lapse). Returns how many were published."""
        node = self.ctx.node
        if self._ledger is None and not self.ledger_path.exists():
            return 0
        ledger = self.ledger
        now = get_dht_time()
        due = ledger.due(now, node.record_ttl / 3)
        lanes = asyncio.Semaphore(16)  # concurrent stores: a refresh takes about one store's time, not 60

        async def publish(i: int) -> bool:
            async with lanes:
                return await node.put(ledger.entries[i].key, archive.archived_body(ledger.signed(i), now),
                                      now + node.record_ttl)

        results = await asyncio.gather(*(publish(i) for i in due))
        for i, stored in zip(due, results, strict=True):
            if stored:
                ledger.mark_published(i, now)
        published = sum(results)
        if published:
            ledger.save(self.ledger_path)
            log.info("kept %d record(s) of run %s alive (%d in the archive)", published, self.ctx.spec.run_id,
                     len(ledger.entries))
        return published
