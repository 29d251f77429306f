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


async def archive_facts(d: Daemon, view: RunView) -> int:
    """Keep the run's outcome readable past its records' TTL (swarm.archive): add the facts worth keeping to
    this node's ledger, then publish an archived copy of every entry not published within a third of the
    TTL. Returns how many copies were published."""
    assert d.node is not None and d.run_info is not None
    spec = d.run_info.spec
    path = d.home / "archive" / f"{spec.run_id}.json"
    ledger = archive.Ledger.load(path, spec.run_id)
    keys = archive.archive_keys(spec.run_id)
    sets = await asyncio.gather(*(d.node.get(k) for k in keys))
    found = [(key, rec) for key, got in zip(keys, sets, strict=True) for rec in got.records]
    ok = {j.claim.cid for slot in slots(spec.num_clusters) for j in accepted(view.judged(slot))}
    changed = ledger.add(archive.select(spec.run_id, spec.creator.encode() if spec.creator else None, ok, found))
    now = get_dht_time()
    published = 0
    for i in ledger.due(now, d.node.record_ttl / 3):
        if d.stopping.is_set():
            break
        entry = ledger.entries[i]
        body = archive.archived_body(ledger.signed(i), now)
        if await d.node.put(entry.key, body, now + d.node.record_ttl):
            ledger.mark_published(i, now)
            published += 1
            changed = True
    if changed:
        ledger.save(path)
    if published:
        log.info("kept %d record(s) of run %s alive (%d in the archive)", published, spec.run_id, len(ledger.entries))
    return published
