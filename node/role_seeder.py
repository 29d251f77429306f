"""The seeder role: keep the run's data and every slot's newest accepted checkpoint pinned and provided, so
they outlive the peers that made them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from node.bundle import MAX_BUNDLE_BYTES, checkpoint_limit
from protocol.errors import ParisError
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
