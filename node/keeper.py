"""This node's own long-lived records, kept alive while it runs.

A checkpoint record waits for attestations, and an attestation waits for the checkpoint's children; neither
may vanish because verification took longer than the record's TTL. So while a node runs it re-announces its
own records unchanged (the same body and timestamp: a re-announcement is not new progress) a third of the TTL
before they would expire. After it leaves, seeders keep the accepted ones alive (swarm.archive)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from hivemind.utils.timed_storage import get_dht_time

from protocol.swarm_records import Body, subkey_suffix
from swarm.dht import SwarmNode
from swarm.state import publish_spec_pointer

log = logging.getLogger("node.keeper")


class OwnRecords:
    """(key, subkey) → (body, when we last stored it); at most `limit`, the oldest dropped first."""

    def __init__(self, node: SwarmNode, limit: int = 4096) -> None:
        self.node, self.limit = node, limit
        self._records: OrderedDict[tuple[str, str], tuple[Body, float]] = OrderedDict()

    def add(self, key: str, body: Body, stored_at: float | None = None) -> None:
        self._records[(key, subkey_suffix(body))] = (body, get_dht_time() if stored_at is None else stored_at)
        self._records.move_to_end((key, subkey_suffix(body)))
        while len(self._records) > self.limit:
            self._records.popitem(last=False)

    def __len__(self) -> int:
        return len(self._records)

    async def refresh(self) -> int:
        """Re-announce every record stored more than a third of the TTL ago. Returns how many were stored."""
        now = get_dht_time()
        due = [(k, b) for k, (b, at) in self._records.items() if now - at >= self.node.record_ttl / 3]
        lanes = asyncio.Semaphore(16)

        async def store(key: str, body: Body) -> bool:
            async with lanes:
                return await self.node.put(key, body, now + self.node.record_ttl)

        results = await asyncio.gather(*(store(key, body) for (key, _), body in due))
        stored = 0
        for ((key, suffix), body), ok in zip(due, results, strict=True):
            if ok:
                self._records[(key, suffix)] = (body, now)
                stored += 1
        if due:
            log.debug("re-announced %d of %d own record(s)", stored, len(due))
        return stored


class RunPointer:
    """The pointer to a run this node created (under the run's key and in the swarm's list of runs): announced
    again, with a new timestamp, `every` seconds after the last announcement a peer stored, or a third of the
    TTL if that is sooner. Not only against expiry: the peers that hold it may leave, and joiners without a
    run id find the run by it. The first call announces it (publication may have found no peer to store it)."""

    def __init__(self, node: SwarmNode, run_id: str, spec_cid: str, num_clusters: int, every: float) -> None:
        self.node, self.run_id, self.spec_cid, self.num_clusters = node, run_id, spec_cid, num_clusters
        self.every = every
        self.stored_at = float("-inf")

    @property
    def interval(self) -> float:
        return min(self.every, self.node.record_ttl / 3)

    async def refresh(self) -> bool:
        """Announce the pointer if it is due. Returns whether it was stored now."""
        now = get_dht_time()
        if now - self.stored_at < self.interval:
            return False
        if not await publish_spec_pointer(self.node, self.run_id, self.spec_cid, self.num_clusters):
            log.debug("the run pointer of %s was not stored by any peer asked; retrying", self.run_id)
            return False
        self.stored_at = now
        return True
