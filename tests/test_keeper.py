"""node.keeper: our own records are re-announced unchanged (same body and timestamp) once a third of the TTL
has passed, and only then; the oldest are dropped past the limit."""

from __future__ import annotations

import asyncio

from hivemind.utils.timed_storage import get_dht_time

from node.keeper import OwnRecords
from protocol.swarm_records import AttestationBody, CheckpointBody, run_key

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
CID2 = "bafkreib2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zz"


class FakeNode:
    record_ttl = 30.0

    def __init__(self):
        self.puts = []

    async def put(self, key, body, expiration):
        self.puts.append((key, body, expiration))
        return True


def test_own_records_are_re_announced_unchanged_before_their_ttl():
    node = FakeNode()
    keeper = OwnRecords(node, limit=2)
    now = get_dht_time()
    ck = CheckpointBody(slot="expert-0", step=10, cid=CID, bytes=5, ts=now - 100)
    att = AttestationBody(slot="expert-0", cid=CID, step=10, verdict="accept", ts=now - 100)
    keeper.add(run_key("r", "checkpoints"), ck, stored_at=now - 11)  # past a third of 30 s
    keeper.add(run_key("r", "attestations"), att, stored_at=now - 5)  # not yet
    assert asyncio.run(keeper.refresh()) == 1
    key, body, expiration = node.puts[0]
    assert key == run_key("r", "checkpoints") and body == ck and body.ts == now - 100  # not new progress
    assert expiration >= now + 29
    assert asyncio.run(keeper.refresh()) == 0  # just stored
    keeper.add(run_key("r", "checkpoints"), ck.model_copy(update={"cid": CID2}))
    assert len(keeper) == 2  # the oldest entry went
