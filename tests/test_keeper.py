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


def test_a_created_runs_pointer_is_announced_at_once_then_a_third_of_the_ttl_after_each_store():
    """The pointer must outlive a TTL shorter than the member loop's period (it once lapsed for 10 s in 30)."""
    from node.keeper import RunPointer
    from protocol.swarm_records import RUNS_KEY

    node = FakeNode()
    pointer = RunPointer(node, "r", CID, 2, every=1000.0)
    assert asyncio.run(pointer.refresh())  # the first call announces it
    assert {key for key, _, _ in node.puts} == {run_key("r", "spec"), RUNS_KEY}
    assert node.puts[0][1].spec_cid == CID and node.puts[0][2] >= get_dht_time() + 29
    assert not asyncio.run(pointer.refresh()) and len(node.puts) == 2  # stored just now: not due
    pointer.stored_at -= node.record_ttl / 3
    assert asyncio.run(pointer.refresh()) and len(node.puts) == 4

    class Refusing(FakeNode):
        async def put(self, key, body, expiration):
            return False

    refused = RunPointer(Refusing(), "r", CID, 2, every=1000.0)
    assert not asyncio.run(refused.refresh())
    assert refused.stored_at == float("-inf")  # retried at the next tick, not a third of the TTL later
    # with a long TTL, `every` decides: the holders of the pointer may leave long before it expires
    assert RunPointer(node, "r", CID, 2, every=30.0).interval == 10.0
    node.record_ttl = 14 * 86400.0
    assert RunPointer(node, "r", CID, 2, every=30.0).interval == 30.0
