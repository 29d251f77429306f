"""The seeder role: keep the run's data and every slot's newest accepted checkpoint pinned and provided, and
the signed records that make the run's outcome alive in the DHT past their TTL, so they outlive the peers
that made them."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hivemind.utils.timed_storage import get_dht_time

from node.bundle import MAX_BUNDLE_BYTES, checkpoint_limit
from protocol.errors import ParisError
from swarm import archive
from swarm.acceptance import accepted
from swarm.state import RunView

if TYPE_CHECKING:
    from node.daemon import Daemon

log = logging.getLogger("node.seeder")


def slots(num_clusters: int) -> list[str]:
    return [f"expert-{k}" for k in range(num_clusters)] + ["router"]


async def seed_data(d: Daemon) -> None:
    """Pin and provide the bundle and every cluster's training and held-out data."""
    assert d.store is not None and d.run_info is not None
    await d.store.get(d.run_info.bundle_cid, max_bytes=MAX_BUNDLE_BYTES)
    for entry in d.run_info.manifest.clusters:
        if d.stopping.is_set():
            return
        await d.store.get(entry.cid, expected_bytes=entry.bytes)
        await d.store.get(entry.holdout_cid, expected_bytes=entry.holdout_bytes)


async def replicate_accepted(d: Daemon, view: RunView) -> None:
    for slot in slots(d.run_info.spec.num_clusters):
        if d.stopping.is_set():
            return
        try:
            await d.publisher.replicate(slot, view.accepted_checkpoints(slot), checkpoint_limit(d.run_info, slot))
        except (ParisError, OSError) as e:
            log.warning("could not replicate %s: %s", slot, e)


def ledger_of(d: Daemon) -> archive.Ledger:
    """The node's archive ledger of its run (loaded from HOME/archive/RUN.json on first use)."""
    assert d.run_info is not None
    if d.archive_ledger is None:
        d.archive_ledger = archive.Ledger.load(_ledger_path(d), d.run_info.spec.run_id)
    return d.archive_ledger


def _ledger_path(d: Daemon):
    return d.home / "archive" / f"{d.run_info.spec.run_id}.json"


async def archive_facts(d: Daemon, view: RunView) -> bool:
    """Add the facts of the run's outcome that this round saw to the node's ledger (swarm.archive), so that
    keep_archive keeps them alive past their TTL. Returns whether the ledger changed."""
    assert d.node is not None and d.run_info is not None
    spec = d.run_info.spec
    ledger = ledger_of(d)
    keys = archive.archive_keys(spec.run_id, view.shard_keys)
    sets = await asyncio.gather(*(d.node.get(k) for k in keys))
    found = [(key, rec) for key, got in zip(keys, sets, strict=True) for rec in got.records]
    accepted_cids = {j.claim.cid for slot in slots(spec.num_clusters) for j in accepted(view.judged(slot))}
    creator = spec.creator.encode() if spec.creator else None
    changed = ledger.add(archive.select(spec.run_id, creator, accepted_cids, found))
    if changed:
        ledger.save(_ledger_path(d))
    return changed


async def keep_archive(d: Daemon) -> int:
    """Publish an archived copy of every ledger entry not published within a third of the TTL (in its own
    loop, so that a long verification round cannot let copies lapse). Returns how many were published."""
    assert d.node is not None and d.run_info is not None
    if d.archive_ledger is None and not _ledger_path(d).exists():
        return 0
    ledger = ledger_of(d)
    now = get_dht_time()
    due = ledger.due(now, d.node.record_ttl / 3)
    lanes = asyncio.Semaphore(16)  # concurrent stores: a refresh takes about one store's time, not 60

    async def publish(i: int) -> bool:
        async with lanes:
            return await d.node.put(ledger.entries[i].key, archive.archived_body(ledger.signed(i), now),
                                    now + d.node.record_ttl)

    results = await asyncio.gather(*(publish(i) for i in due))
    for i, stored in zip(due, results, strict=True):
        if stored:
            ledger.mark_published(i, now)
    published = sum(results)
    if published:
        ledger.save(_ledger_path(d))
        log.info("kept %d record(s) of run %s alive (%d in the archive)", published, d.run_info.spec.run_id,
                 len(ledger.entries))
    return published
