"""SwarmNode between real hivemind nodes on 127.0.0.1: signed records round-trip, a foreign-signed write is
refused by honest nodes, a peer speaking another protocol version gets a clear error instead of a hang,
member records live in buckets that stay small at a thousand peers, and a node restarted while its last run's
p2p daemon still answers waits for its identity."""

from __future__ import annotations

import asyncio
import json
import threading
from functools import partial

import pytest
from hivemind.utils.timed_storage import get_dht_time

from protocol.errors import ParisError
from protocol.swarm_records import (
    MEMBER_BUCKETS,
    PROTOCOL_VERSION,
    ClaimBody,
    ClaimState,
    MemberBody,
    encode_envelope,
    member_bucket,
    run_key,
)
from swarm import layout
from swarm.dht import NetworkConfig, ProtocolMismatchError, SwarmNode
from swarm.layout import member_key

pytestmark = pytest.mark.slow


def test_records_signatures_and_protocol_versions(tmp_path):
    async def run():
        a = SwarmNode.start(tmp_path / "a")
        b = SwarmNode.start(tmp_path / "b", NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
        try:
            now = get_dht_time()
            key = run_key("r", "claims")
            mine = ClaimBody(cluster=1, state=ClaimState.TRAINING, peer_id=b.peer_id, since=now, ts=now)
            assert await b.put(key, mine, now + 30)
            found = await a.get(key)
            assert [(r.body, r.owner) for r in found.records] == [(mine, b.owner)]
            # b writes into a's subkey (it cannot sign for a's key): every honest node refuses it
            forged = encode_envelope(key, ClaimBody(cluster=2, state=ClaimState.TRAINING, peer_id=a.peer_id,
                                                    since=now, ts=now))
            assert not await b.dht.store(key, forged, now + 31, subkey=a.owner_subkey, return_future=True)
            assert [r.body.cluster for r in (await a.get(key)).records] == [1]
            # a member record of protocol v2 is accepted as a member but turned into a clear error
            member = MemberBody(protocol=PROTOCOL_VERSION + 1, software="paris-node 9.0", peer_id=b.peer_id, ts=now)
            env = json.loads(encode_envelope(member_key("r", b.peer_id), member))
            env["v"] = PROTOCOL_VERSION + 1
            raw = json.dumps(env).encode()
            assert await b.dht.store(member_key("r", b.peer_id), raw, now + 30, subkey=b.owner_subkey,
                                     return_future=True)
            with pytest.raises(ProtocolMismatchError, match=f"speaks paris protocol v{PROTOCOL_VERSION + 1}"):
                await asyncio.wait_for(a.check_protocol("r"), 20)
            # nodes of earlier versions wrote their member record under one key: still found there
            old = json.dumps({**env, "key": run_key("old", "members")}).encode()
            assert await b.dht.store(run_key("old", "members"), old, now + 30, subkey=b.owner_subkey,
                                     return_future=True)
            with pytest.raises(ProtocolMismatchError, match=f"speaks paris protocol v{PROTOCOL_VERSION + 1}"):
                await asyncio.wait_for(a.check_protocol("old"), 20)
            assert await a.check_protocol("empty-run") == []
        finally:
            a.shutdown()
            b.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))



def test_an_identity_still_answering_is_waited_for_and_one_that_stays_taken_is_a_clear_error(tmp_path):
    """A node killed -9 leaves its DHT process and p2pd up to a second more (they watch their parent), and a peer
    answers for its identity until then: a restart in that second waits instead of failing. A second process on
    a running node's home fails, with a line that says so."""
    a = SwarmNode.start(tmp_path / "a")
    peers = NetworkConfig(initial_peers=tuple(a.visible_maddrs()))
    b = SwarmNode.start(tmp_path / "b", peers)
    try:
        with pytest.raises(ParisError, match="is in use by a running peer for over 2 s: is another node running"):
            SwarmNode.start(tmp_path / "b", peers.model_copy(update={"identity_wait": 2.0}))
        threading.Timer(3.0, b.shutdown).start()  # the last run ends while the new one waits for its identity
        again = SwarmNode.start(tmp_path / "b", peers)
        assert again.peer_id == b.peer_id
        again.shutdown()
    finally:
        a.shutdown()


def test_claim_done_progress_and_run_view(tmp_path):
    from protocol.swarm_records import CheckpointBody, ClusterState, ProgressBody
    from swarm.claims import ClaimManager
    from swarm.state import publish_checkpoint, publish_progress, publish_spec_pointer, read_run

    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"

    async def run():
        a = SwarmNode.start(tmp_path / "a")
        b = SwarmNode.start(tmp_path / "b", NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
        try:
            assert await publish_spec_pointer(a, "v", cid, 2)
            ma = ClaimManager(a, "v", 2, period=1.0, settle=0.5, max_delay=0.1)
            mb = ClaimManager(b, "v", 2, period=1.0, settle=0.5, max_delay=0.1)
            ca, cb = await asyncio.gather(ma.claim(wait=False, timeout=20), mb.claim(wait=False, timeout=20))
            assert {ca, cb} == {0, 1}
            now = get_dht_time()
            await publish_progress(a, "v", ProgressBody(cluster=ca, step=10, target=10, loss=0.1,
                                                        samples_per_s=5.0, started_at=now, ts=now))
            await publish_checkpoint(a, "v", CheckpointBody(slot=f"expert-{ca}", step=10, cid=cid, bytes=5, ts=now))
            await ma.mark_done(10, cid)
            view = await read_run(b, "v")
            assert view.num_clusters == 2 and view.specs[0].spec_cid == cid
            assert view.states[ca] == ClusterState.DONE and view.states[cb] == ClusterState.TRAINING
            assert view.owners == {ca: a.peer_id, cb: b.peer_id}
            assert view.progress[a.peer_id].step == 10 and view.latest_checkpoint(f"expert-{ca}").cid == cid
            assert set(view.members) == set() and view.done[0][1].cluster == ca
            await mb.release()  # clean exit: the cluster shows OFFLINE and is free to claim at once
            view = await read_run(a, "v")
            assert view.states[cb] == ClusterState.OFFLINE and cb not in view.owners
            await ma.release()
            assert (await read_run(a, "v")).states[ca] == ClusterState.DONE  # DONE outlives the lease
        finally:
            a.shutdown()
            b.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))


def test_archived_records_outlive_their_writer_and_their_ttl(tmp_path):
    """A writer with a 2 s record TTL publishes a finished run's facts and leaves; a seeder keeps signed copies;
    after the TTL has passed three times a reader still sees the originals (and nothing a seeder altered)."""
    from protocol.swarm_records import AttestationBody, CheckpointBody, ClusterState, DoneBody
    from swarm import archive
    from swarm.state import publish_attestation, publish_checkpoint, publish_spec_pointer, read_run

    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"

    async def run():
        s = SwarmNode.start(tmp_path / "s")
        peers = NetworkConfig(initial_peers=tuple(s.visible_maddrs()))
        w = SwarmNode.start(tmp_path / "w", peers, record_ttl=2.0)
        r = SwarmNode.start(tmp_path / "r", peers)
        try:
            now = get_dht_time()
            assert await publish_spec_pointer(w, "v", cid, 1)
            assert await publish_checkpoint(w, "v", CheckpointBody(slot="expert-0", step=10, cid=cid, bytes=5, ts=now))
            assert await publish_attestation(w, "v", AttestationBody(slot="expert-0", cid=cid, step=10,
                                                                      verdict="accept", ts=now))
            assert await w.put(run_key("v", "done"), DoneBody(cluster=0, step=10, checkpoint_cid=cid, ts=now),
                               now + w.record_ttl)
            keys = archive.archive_keys("v", (await read_run(s, "v", 1)).shard_keys)  # + the slot's epoch shards
            found = [(k, rec) for k in keys for rec in (await s.get(k)).records]
            chosen = archive.select("v", w.owner, {cid}, found)
            assert len(chosen) == 5  # the pointer (twice: run key and run list), checkpoint, attestation, done
            for key, rec in chosen:
                assert await s.put(key, archive.archived_body(rec, get_dht_time()), get_dht_time() + 60)
            # a seeder that alters what it archives is refused by every honest node
            key, rec = next((k, x) for k, x in chosen if isinstance(x.body, CheckpointBody))
            bad = archive.archived_body(rec, get_dht_time())
            bad = bad.model_copy(update={"record": bad.record.replace('"step":10', '"step":99')})
            assert not await r.put(key, bad, get_dht_time() + 60)
            w.shutdown()
            await asyncio.sleep(3 * 2.0 + 1)
            for key in {k for k, _ in chosen}:
                got = (await r.get(key)).records
                assert got and all(x.owner == w.owner and x.archived_by == s.owner for x in got), key
            view = await read_run(r, "v")
            assert view.specs[0].spec_cid == cid and view.states == (ClusterState.DONE,)
            assert [c.step for _, c in view.checkpoints] == [10] and view.attestations[0][1].verdict == "accept"
        finally:
            for node in (s, w, r):
                node.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))


async def _forget_hivemind_cache(_dht, node) -> None:
    node.protocol.cache.clear()


def test_a_failed_read_never_turns_into_an_empty_view(tmp_path):
    """A reader (client mode: it stores nothing itself) reads a run's checkpoint records; then every node that
    held them leaves. hivemind answers the next read with nothing, as it does for a dropped or oversize reply:
    the reader keeps the records it knows are still live, says the read failed, and refuses to decide on it."""
    from protocol.swarm_records import CheckpointBody
    from swarm.dht import DHTReadError
    from swarm.state import publish_checkpoint, read_run

    cids = [f"bafkrei{c * 52}" for c in "abc"]

    async def run():
        a = SwarmNode.start(tmp_path / "a")
        b = SwarmNode.start(tmp_path / "b", NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
        c = SwarmNode.start(tmp_path / "c", NetworkConfig(initial_peers=tuple(a.visible_maddrs()), client_mode=True,
                                                           request_timeout=3.0))
        try:
            now = get_dht_time()
            for i, cid in enumerate(cids):
                assert await publish_checkpoint(b, "r", CheckpointBody(slot="expert-0", step=10 * (i + 1), cid=cid,
                                                                       bytes=10, ts=now, val_loss=1.0))
            first = await read_run(c, "r", 1)
            assert len(first.checkpoints) == 3 and not first.failed
            assert first.decidable() is first
            # a record version is validated once: the next read checks only what is new
            checked = []
            original = SwarmNode._check
            SwarmNode._check = staticmethod(lambda *a: checked.append(a) or original(*a))
            try:
                assert len((await read_run(c, "r", 1)).checkpoints) == 3 and checked == []
                assert await publish_checkpoint(b, "r", CheckpointBody(slot="expert-0", step=40, cid=cids[0],
                                                                       bytes=11, ts=now + 1, val_loss=1.0))
                await c.dht.run_coroutine(_forget_hivemind_cache, return_future=True)
                await read_run(c, "r", 1)
                assert len(checked) == 1  # only the new version
            finally:
                SwarmNode._check = staticmethod(original)
            a.shutdown()
            b.shutdown()
            await c.dht.run_coroutine(_forget_hivemind_cache, return_future=True)  # its cache evicted the key
            again = await read_run(c, "r", 1)
            assert sorted(ck.cid for _, ck in again.checkpoints) == sorted(cids)  # not an empty run
            assert any("still live" in why or "timed out" in why for why in again.failed), again.failed
            with pytest.raises(DHTReadError, match="not deciding"):
                again.decidable()
        finally:
            c.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))


def test_a_late_reader_catches_up_from_a_certified_head_without_the_old_epochs(tmp_path):
    """A trainer's lineage crosses an epoch; a verifier accepts each checkpoint; the trainer certifies its
    accepted head (a quorum certificate under heads/{slot}). A reader that joins late reads the head, then only
    the epochs from it on: the first epoch is never read, and the newest checkpoint is still accepted by the
    rule, on its certified parent. A forged certificate (an attestation the trainer signed for itself) counts
    for nothing."""
    from protocol.swarm_records import EPOCH_STEPS, AttestationBody, CheckpointBody
    from swarm import layout
    from swarm.acceptance import Policy
    from swarm.state import RunRules, certify, publish_attestation, publish_certificate, publish_checkpoint, read_run

    every = EPOCH_STEPS // 2
    steps = [every, 2 * every, 3 * every]  # epochs 0, 1, 1
    cids = [f"bafkrei{c * 52}" for c in "abc"]
    rules = RunRules(Policy(attestations=1, max_interval=every), expert_target=10 * every, router_target=1)

    async def run():
        t = SwarmNode.start(tmp_path / "t")
        peers = NetworkConfig(initial_peers=tuple(t.visible_maddrs()))
        v = SwarmNode.start(tmp_path / "v", peers)
        late = SwarmNode.start(tmp_path / "late", peers)
        try:
            now = get_dht_time()
            parent = None
            for i, (step, cid) in enumerate(zip(steps, cids, strict=True)):
                body = CheckpointBody(slot="expert-0", step=step, cid=cid, bytes=10, parent=parent,
                                      val_loss=1.0 - 0.1 * i, ts=now + i)
                assert await publish_checkpoint(t, "r", body)
                assert await publish_attestation(v, "r", AttestationBody(
                    slot="expert-0", cid=cid, step=step, parent=parent, val_loss=body.val_loss, verdict="accept",
                    ts=now + i))
                parent = cid
            full = await read_run(t, "r", 1, rules=rules)
            assert [c.step for c in full.accepted_checkpoints("expert-0")] == steps[::-1]
            # the trainer certifies its head at step 2·every (as if the third were not yet attested)
            head_view = full.__class__(**{**full.__dict__, "attestations": tuple(
                (p, a) for p, a in full.attestations if a.cid != cids[2])})
            cert = certify(head_view, "expert-0", get_dht_time())
            assert cert is not None and cert.step == steps[1]
            assert await publish_certificate(t, "r", cert)
            forged = cert.model_copy(update={"attestations": (cert.checkpoint,)})  # no attestation at all
            assert await publish_certificate(v, "r", forged)  # stored (a writer vouches for nothing) but ignored

            view = await read_run(late, "r", 1, rules=rules)
            assert layout.checkpoint_key("r", "expert-0", 0) not in view.shard_keys  # epoch 0 never read
            assert cids[0] not in {c.cid for _, c in view.checkpoints}
            assert [c.step for c in view.accepted_checkpoints("expert-0")] == [steps[2], steps[1]]
            assert view.anchors == (("expert-0", cids[1], 0.9),)
        finally:
            for node in (t, v, late):
                node.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))


async def _mint_members(run_id: str, count: int, now: float, _dht, node) -> dict:
    """In the DHT process: `count` member records of fresh identities (_minted_member), handed straight to
    every peer in our routing table (as tests/swarm/fake_providers.py does; a call's arguments cross a pipe
    that refuses large ones, so they are made here). Returns each key's bytes on the wire and the peer ids."""
    from hivemind.dht.routing import DHTID

    records = [_minted_member(run_id, now, now + 120) for _ in range(count)]
    stored = 0
    for peer in list(node.protocol.routing_table.peer_id_to_uid):
        for start in range(0, len(records), 200):
            part = records[start:start + 200]
            ok = await node.protocol.call_store(peer, [DHTID.generate(source=k) for k, _, _, _ in part],
                                                [v for _, _, v, _ in part], now + 120,
                                                subkeys=[s for _, s, _, _ in part])
            stored += sum(bool(x) for x in ok or ())
    wire: dict[str, int] = {}  # key → bytes a reply carries for it (each record's signed value and owner subkey)
    for key, subkey, value, _ in records:
        wire[key] = wire.get(key, 0) + len(value) + len(subkey)
    return {"stored": stored, "wire": wire, "peers": [p for _, _, _, p in records]}


def _minted_member(run_id: str, now: float, expiration: float) -> tuple[str, bytes, bytes, str]:
    """A member record of a fresh identity (a 1024-bit key: cheap to make, and nothing refuses it), signed by it
    as hivemind signs its owner's records, with the addresses a node reachable over IPv4, IPv6 and a relay
    announces: (key, owner subkey, signed value, peer id)."""
    from hivemind.dht.crypto import RSASignatureValidator
    from hivemind.dht.routing import DHTID
    from hivemind.dht.validation import DHTRecord
    from hivemind.utils.serializer import MSGPackSerializer

    from swarm.identity import peer_id_of_public_key
    from tests.swarm.fake_providers import throwaway_key

    key = throwaway_key()
    public = key.get_public_key().to_bytes()
    peer = peer_id_of_public_key(public)
    maddrs = (*(f"/ip4/10.{i}.3.7/tcp/31337/p2p/{peer}" for i in range(3)), f"/ip6/fd00::7/tcp/31337/p2p/{peer}",
              f"/ip4/10.0.3.7/udp/31337/quic-v1/p2p/{peer}", f"/ip4/192.0.2.1/tcp/4001/p2p/{peer}/p2p-circuit")
    body = MemberBody(protocol=PROTOCOL_VERSION, software="paris-node 0.9", peer_id=peer, maddrs=maddrs,
                      gossip_maddrs=(f"/ip4/10.0.3.7/tcp/31338/p2p/{peer}",), role="auto", ts=now)
    dht_key = member_key(run_id, peer)
    subkey = b"[owner:" + public + b"]"
    rec = DHTRecord(DHTID.generate(source=dht_key).to_bytes(), MSGPackSerializer.dumps(subkey),
                    MSGPackSerializer.dumps(encode_envelope(dht_key, body)), expiration)
    return dht_key, subkey, RSASignatureValidator(key).sign_value(rec), peer


def test_members_in_buckets_stay_small_and_complete_at_a_thousand_peers(tmp_path):
    """Two real nodes in different buckets see each other (in their buckets, nothing in the old single key);
    then 1,000 minted members written straight to the DHT: every bucket stays far under 1 MiB where one key
    would have passed it, and a reader's first read sees all 1,002. (~12 s: most of it making 1,000 keys.)"""
    from swarm.identity import load_identity
    from swarm.layout import key_bound
    from swarm.state import read_run

    one = load_identity(tmp_path / "a")
    homes = (tmp_path / f"b{i}" for i in range(100))
    home_b = next(h for h in homes if member_bucket(load_identity(h).peer_id) != member_bucket(one.peer_id))

    async def run():
        a = SwarmNode.start(tmp_path / "a")
        b = SwarmNode.start(home_b, NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
        try:
            now = get_dht_time()
            for node in (a, b):
                assert await node.announce_member("m", MemberBody(
                    protocol=PROTOCOL_VERSION, software="paris-node", peer_id=node.peer_id,
                    maddrs=tuple(node.visible_maddrs()), ts=now), ttl=120)
            view = await read_run(a, "m")
            assert set(view.members) == {a.peer_id, b.peer_id} and view.failed == ()
            assert [r.body.peer_id for r in (await a.get(member_key("m", b.peer_id))).records] == [b.peer_id]
            assert (await a.get(run_key("m", "members"))).records == ()

            minted = await b.dht.run_coroutine(partial(_mint_members, "m", 1000, now), return_future=True)
            assert minted["stored"] == 1000
            wire = minted["wire"]
            assert sum(wire.values()) > 2**20  # the one members key would have held more than 1 MiB
            assert max(wire.values()) < key_bound("members", K=8, V=10, P=1002, checkpoint_every=2000) < 2**20
            assert len(wire) == MEMBER_BUCKETS

            full = await read_run(b, "m")  # b's first read of the run's members: every bucket
            assert set(full.members) == {a.peer_id, b.peer_id, *minted["peers"]} and full.failed == ()
            assert {member_key("m", p) for p in full.members} == set(layout.member_keys("m"))
            later = await a.read_members("m")  # a read before: a few buckets now, the rest as it last read them
            assert len(later.read) < MEMBER_BUCKETS and {a.peer_id, b.peer_id} <= {r.body.peer_id
                                                                                   for r in later.records}
            assert len((await a.read_members("m", full=True)).records) == 1002
        finally:
            a.shutdown()
            b.shutdown()

    asyncio.run(asyncio.wait_for(run(), 120))


def test_reads_started_together_reach_the_dht_process_as_one_call(tmp_path):
    """swarm.dht._ReadBatcher: the keys of one `asyncio.gather` cross into hivemind's DHT process in one call
    (each call costs a file-descriptor handshake each way), each key still read on its own; reads started
    later go in a later call; a batch whose call fails fails every read in it with the same error."""
    async def run():
        a = SwarmNode.start(tmp_path / "a")
        b = SwarmNode.start(tmp_path / "b", NetworkConfig(initial_peers=tuple(a.visible_maddrs())))
        try:
            now = get_dht_time()
            keys = [run_key(f"r{i}", "claims") for i in range(6)]
            for i, key in enumerate(keys):
                assert await a.put(key, ClaimBody(cluster=i, state=ClaimState.TRAINING, peer_id=a.peer_id,
                                                  since=now, ts=now), now + 60)
            calls: list[list[str]] = []
            real = b.dht.run_coroutine

            def counted(coro, return_future=False):
                calls.append(list(coro.keywords["keys"]))
                return real(coro, return_future=return_future)

            b.dht.run_coroutine = counted
            got = await asyncio.gather(*(b.get(k) for k in [*keys, run_key("r-empty", "claims"), keys[0]]))
            assert [[r.body.cluster for r in g.records] for g in got] == [[0], [1], [2], [3], [4], [5], [], [0]]
            assert calls == [[*keys, run_key("r-empty", "claims")]]  # one call, each key once
            await b.get(keys[1])
            assert len(calls) == 2

            def broken(coro, return_future=False):
                raise RuntimeError("the DHT process is gone")

            b.dht.run_coroutine = broken
            outcomes = await asyncio.gather(b.get(keys[2]), b.get(run_key("r-never", "claims")), return_exceptions=True)
            assert [type(o) for o in outcomes] == [RuntimeError, RuntimeError]
        finally:
            a.shutdown()
            b.shutdown()

    asyncio.run(run())
