"""Which member buckets a reader reads (swarm.members): all of them on the first read, then its own and a
rotating few, so that each is read again within a bounded time and number of reads; what it keeps of the
buckets it did not read (until their records expire), and what a failed bucket read does to the view."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.swarm_records import MEMBER_BUCKETS, MemberBody, decode_envelope, encode_envelope, member_bucket
from swarm import layout
from swarm.dht import DHTReadError, RecordSet, Signed
from swarm.members import MIN_PER_READ, SWEEP_S, MemberReader, Sweep, buckets_to_read, live

B = MEMBER_BUCKETS
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
PEERS = ["12D3KooW" + _B58[i // 58] + _B58[i % 58] + "Q" * 40 for i in range(400)]


def _member(peer: str, expires: float) -> Signed:
    env = decode_envelope(encode_envelope(layout.member_key("r", peer),
                                          MemberBody(protocol=2, software="t", peer_id=peer, ts=1.0)))
    return Signed(owner=peer.encode(), envelope=env, expiration_time=expires)


def test_first_read_takes_every_bucket_then_own_and_a_few_in_turn():
    first, sweep = buckets_to_read(Sweep(), 100.0, own=7)
    assert first == tuple(range(B))
    again, sweep = buckets_to_read(sweep, 100.5, own=7)  # soon after: the minimum of the rotation, and our own
    assert 7 in again and len(again) <= MIN_PER_READ + 1
    period, _ = buckets_to_read(sweep, 110.5, own=7)  # a daemon period (10 s) later: a sixth of the buckets
    assert math.ceil(B * 10 / SWEEP_S) <= len(period) <= math.ceil(B * 10 / SWEEP_S) + 1 < B // 4
    assert buckets_to_read(sweep, 100.5 + SWEEP_S, own=7)[0] == tuple(range(B))  # a whole sweep late: all
    assert set(buckets_to_read(sweep, 100.6, own=None, due=(40, 41, 99))[0]) >= {40, 41}


@settings(max_examples=200, deadline=None)
@given(gaps=st.lists(st.floats(0.0, 2 * SWEEP_S), min_size=1, max_size=120), own=st.integers(0, B - 1),
       min_per_read=st.integers(1, 8))
def test_every_bucket_is_read_within_the_sweep_and_within_a_bounded_number_of_reads(gaps, own, min_per_read):
    sweep, now = Sweep(), 0.0
    chosen, sweep = buckets_to_read(sweep, now, own=own, min_per_read=min_per_read)
    last_time = dict.fromkeys(chosen, now)
    last_read = dict.fromkeys(chosen, 0)
    for n, gap in enumerate(gaps, start=1):
        now += gap
        chosen, sweep = buckets_to_read(sweep, now, own=own, min_per_read=min_per_read)
        assert own in chosen
        for b in range(B):
            if now - last_time[b] >= SWEEP_S or n - last_read[b] >= math.ceil(B / min_per_read):
                assert b in chosen, (b, now - last_time[b], n - last_read[b])
        for b in chosen:
            last_time[b], last_read[b] = now, n


def test_a_reader_keeps_buckets_it_did_not_read_until_their_records_expire():
    reader = MemberReader("r", PEERS[0])
    first = reader.plan(0.0)
    assert first == tuple(range(B))
    by_bucket: dict[int, list[Signed]] = {}
    for i, peer in enumerate(PEERS[:200]):
        by_bucket.setdefault(member_bucket(peer), []).append(_member(peer, 1_000.0 if i % 2 else 2_000.0))
    got = reader.absorb({b: RecordSet(tuple(by_bucket.get(b, ()))) for b in first}, now=500.0)
    assert len(got.records) == 200 and got.failed == ()
    second = reader.plan(1.0)
    assert len(second) < B and member_bucket(PEERS[0]) in second
    got = reader.absorb({b: RecordSet(tuple(by_bucket.get(b, ()))) for b in second}, now=900.0)
    assert len(got.records) == 200  # the buckets not read this time are still in the view
    got = reader.absorb({}, now=1_500.0)  # half the records expired, read or not
    assert {r.body.peer_id for r in got.records} == {p for i, p in enumerate(PEERS[:200]) if i % 2 == 0}
    assert live(reader.content, 2_500.0) == ()


def test_a_failed_bucket_read_is_reported_only_if_the_bucket_never_read_well():
    reader = MemberReader("r", None)
    peer = PEERS[3]
    b = member_bucket(peer)
    other = (b + 1) % B
    results: dict = {k: RecordSet(()) for k in reader.plan(0.0)}
    results[b] = RecordSet((_member(peer, 1e12),))
    results[other] = DHTReadError("the DHT read of b timed out after 5 s")
    got = reader.absorb(results, now=10.0)
    assert [r.body.peer_id for r in got.records] == [peer]
    assert got.failed == ("the DHT read of b timed out after 5 s",)  # never read well: reported (not blocking)
    again = reader.plan(0.1)
    assert other in again  # retried on the next read, whatever the rotation
    got = reader.absorb({other: RecordSet(()), b: DHTReadError("timed out")}, now=11.0)
    assert got.failed == () and [r.body.peer_id for r in got.records] == [peer]  # kept: it read well before
    assert b in reader.plan(0.2)
    # a failed read that still carries the records the node saw there (a dropped reply) keeps them too
    got = reader.absorb({b: RecordSet((_member(peer, 1e12),), failed="came back empty")}, now=12.0)
    assert got.failed == () and len(got.records) == 1
