"""A run whose history holds more records than one DHT reply can carry (issue 28, "Shown by"): real hivemind
nodes on 127.0.0.1, a real published tiny run (bundle in a real content store), and real signed records from
many generated identities: per slot a trainer's lineage of checkpoint records over three 16,384-step epochs
and an accept from each of ATTESTERS identities for every checkpoint, more than 4 MiB in all (hivemind answers
a read with at most 4 MiB: one unsharded key would read as nothing). The records are handed straight to the
nodes' storage (as tests/swarm/fake_providers.py does), so the test costs the records' signing, not a daemon
training for hours.

Then: `read_run` (the real reader) sees every slot's head accepted and reads every record without a failure,
each key's reply staying under 1 MiB; a quorum certificate of each head is published (`state.certify`, as a
trainer's Publisher does); a node that joins late reads the certificates and only the epochs from the heads'
on, and sees the same heads; `paris-node status --json` (its own process, a client-mode node) reports every
slot at its head and the run finished; and `paris-node fetch` assembles the heads, which are real tiny
checkpoints (the initialisation, saved as the head's step with the head's parent): fetch recomputes their
validation loss on the run's held-out clips, as it does for any run.
"""

from __future__ import annotations

import asyncio
import functools
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord
from hivemind.utils.crypto import RSAPrivateKey
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import get_dht_time

from node.checker import CheckpointChecker
from protocol.swarm_records import (
    ROUTER,
    AttestationBody,
    CheckpointBody,
    encode_envelope,
    expert_slot,
    run_slots,
    subkey_suffix,
)
from protocol.swarm_run import Schedule
from swarm.acceptance import known_facts
from swarm.cas import ContentStore
from swarm.dht import NetworkConfig, SwarmNode
from swarm.state import RunRules, certify, publish_certificate, read_run, record_key
from tests.daemons import cli, run_finished, slots

pytestmark = pytest.mark.slow

EVERY = 4096  # a checkpoint every 4,096 steps: four to an epoch
HEAD = 11 * EVERY  # 45,056: the third epoch (32,768 … 49,151)
TARGET = 40_000
ATTESTERS = 200  # 1024-bit keys make ~760-byte attestations: 6,600 records, ~4.8 MiB
MIB = 1 << 20


def _key() -> RSAPrivateKey:
    key = RSAPrivateKey.__new__(RSAPrivateKey)
    key._private_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # cheap, and accepted
    return key


def _cid(slot: str, step: int) -> str:
    import hashlib

    digest = hashlib.sha256(f"{slot}/{step}".encode()).hexdigest()[:52]
    return "bafkrei" + digest.translate(str.maketrans("0189", "abcd"))


def _signed(key: RSAPrivateKey, dht_key: str, body, expiration: float) -> tuple[str, bytes, bytes]:
    """One record as the owner's own node would store it: its envelope (statement signed), its subkey, and the
    value signed for hivemind's RSASignatureValidator."""
    subkey = b"[owner:" + key.get_public_key().to_bytes() + b"]" + subkey_suffix(body).encode()
    rec = DHTRecord(DHTID.generate(source=dht_key).to_bytes(), MSGPackSerializer.dumps(subkey),
                    MSGPackSerializer.dumps(encode_envelope(dht_key, body, sign=key.sign)), expiration)
    return dht_key, subkey, RSASignatureValidator(key).sign_value(rec)


def history(run_id: str, heads: dict[str, tuple[str, int, float]]) -> tuple[list[tuple[str, bytes, bytes]], float]:
    """Every slot's lineage EVERY … HEAD by one trainer, each checkpoint accepted by ATTESTERS identities. The
    heads are real checkpoints (`heads`: slot → CID, bytes, validation loss); the records before them name
    checkpoints nobody serves (a consumer fetches only the heads)."""
    now = get_dht_time()
    expiration = now + 3600
    attesters = [_key() for _ in range(ATTESTERS)]
    records = []
    for slot, (head_cid, head_bytes, loss) in heads.items():
        trainer, parent = _key(), None
        for i, step in enumerate(range(EVERY, HEAD + 1, EVERY)):
            ts = now - 600 + i
            real = step == HEAD
            ckpt = CheckpointBody(slot=slot, step=step, cid=head_cid if real else _cid(slot, step),
                                  bytes=head_bytes if real else 1000, parent=parent, val_loss=loss, ts=ts)
            records.append(_signed(trainer, record_key(run_id, ckpt), ckpt, expiration))
            for a in attesters:
                att = AttestationBody(slot=slot, cid=ckpt.cid, step=step, parent=parent, val_loss=ckpt.val_loss,
                                      verdict="accept", ts=ts + 1)
                records.append(_signed(a, record_key(run_id, att), att, expiration))
            parent = ckpt.cid
    return records, expiration


async def _store(path: str, expiration: float, _dht, node) -> int:
    """In a DHT process: hand the records (from `path`: several MB do not pass through hivemind's pipe) to
    every peer in its routing table, 200 per request."""
    from pathlib import Path

    records = MSGPackSerializer.loads(Path(path).read_bytes())
    stored = 0
    for peer in list(node.protocol.routing_table.peer_id_to_uid):
        for start in range(0, len(records), 200):
            part = records[start:start + 200]
            ok = await node.protocol.call_store(peer, [DHTID.generate(source=k) for k, _, _ in part],
                                                [v for _, _, v in part], expiration, subkeys=[s for _, s, _ in part])
            stored += sum(bool(x) for x in ok or ())
    return stored


def test_a_history_larger_than_one_reply_reads_whole_and_a_late_node_catches_up(tiny_run, synth_dir, tmp_path):
    """Slow (~45 s here): three DHT nodes, a real run bundle and three tiny checkpoints published, ~6,600
    records signed here (~3 s), two checks of a head, then `status` and `fetch` processes side by side (~25 s)."""
    from node.bundle import publish_run

    spec0, _ = tiny_run
    schedule = Schedule(checkpoint_every=EVERY, router_target_steps=TARGET, attestations=1)

    async def run():
        creator = SwarmNode.start(tmp_path / "creator")
        peer = SwarmNode.start(tmp_path / "peer", NetworkConfig(initial_peers=tuple(creator.visible_maddrs())))
        store = ContentStore(creator, tmp_path / "cas")
        stores, late = [store], None
        try:
            await store.start()
            spec = spec0.model_copy(update={"creator": creator.identity.public_key_bytes.decode(), "preset": (
                spec0.preset.model_copy(update={"train": spec0.preset.train.model_copy(
                    update={"target_steps": TARGET})}))})
            local = await publish_run(creator, store, spec, synth_dir, tmp_path / "work", schedule=schedule)
            run_id, rules = spec.run_id, local.rules
            checker = CheckpointChecker(store, local, "cpu")  # its trainers hold the held-out split fetch checks on
            heads_made = {}
            for slot in run_slots(spec.num_clusters):  # each head: a real tiny checkpoint that says it is one
                trainer = await checker.trainer(slot)
                trainer.step, trainer.parent = HEAD, _cid(slot, HEAD - EVERY)
                meta = await asyncio.to_thread(trainer.save, tmp_path / "ckpt" / slot)
                cid = await store.put(tmp_path / "ckpt" / slot)
                heads_made[slot] = (cid, store.blobs.manifest(cid).total_bytes, meta.val_loss)
            records, expiration = await asyncio.to_thread(history, run_id, heads_made)
            per_key: dict[str, int] = {}
            for k, _, v in records:
                per_key[k] = per_key.get(k, 0) + len(v)
            assert sum(per_key.values()) > 4 * MIB  # one unsharded key could not be read
            assert max(per_key.values()) < MIB
            path = tmp_path / "records.msgpack"
            path.write_bytes(MSGPackSerializer.dumps(records))
            for node in (creator, peer):  # each stores on the other
                got = await node.dht.run_coroutine(functools.partial(_store, str(path), expiration),
                                                   return_future=True)
                assert got == len(records)

            view = await read_run(peer, run_id, spec.num_clusters, rules=rules)
            assert not view.failed
            assert len(view.attestations) == ATTESTERS * len(view.checkpoints) == ATTESTERS * 3 * (HEAD // EVERY)
            heads = {s: view.accepted_checkpoints(s)[0] for s in run_slots(spec.num_clusters)}
            assert {s: (h.step, h.cid) for s, h in heads.items()} == {s: (HEAD, c[0]) for s, c in heads_made.items()}
            assert {int(k.rsplit("/e", 1)[1]) for k in view.shard_keys} == {0, 1, 2, 3}  # no head yet: all of it

            now = get_dht_time()
            for slot in heads:  # what a trainer's Publisher.certify writes after a settle
                cert = certify(view, slot, now)
                assert cert is not None and cert.step == HEAD
                assert await publish_certificate(peer, run_id, cert)

            late = SwarmNode.start(tmp_path / "late", NetworkConfig(initial_peers=tuple(creator.visible_maddrs())))
            caught = await read_run(late, run_id, spec.num_clusters, rules=RunRules.of(spec, schedule))
            assert not caught.failed
            assert {a[0]: a[1] for a in caught.anchors} == {s: h.cid for s, h in heads.items()}
            assert {s: caught.accepted_checkpoints(s)[0].cid for s in heads} == {s: h.cid for s, h in heads.items()}
            read_epochs = {int(k.rsplit("/e", 1)[1]) for k in caught.shard_keys}
            assert read_epochs == {2, 3}  # the certified heads' epoch and the next: the older ones are not read
            assert len(caught.attestations) < len(view.attestations) / 2

            # the real checker path (issue 28, item 4): a verifier re-serves what it checked, so the next one
            # fetches it from there and the trainer uploads it once; what a verifier rejects it stops serving
            slot, body = expert_slot(0), heads[expert_slot(0)]
            stores += [ContentStore(peer, tmp_path / "cas-v1"), ContentStore(late, tmp_path / "cas-v2")]
            checkers = [CheckpointChecker(v, local, "cpu") for v in stores[1:]]
            for v, c in zip(stores[1:], checkers, strict=True):
                await v.start()
                await c.init_loss(slot)  # their held-out clips first (which only the creator serves)
            before, facts = store.served_bytes, known_facts(view.judged(slot))
            assert (await checkers[0].check(body, facts, trainer=creator.peer_id)).ok
            await stores[1].flush()  # its provider record is out before the next verifier starts
            first = store.served_bytes - before
            unique = sum(store.blobs.manifest(body.cid).unique_chunks().values())  # (its EMA equals its model)
            assert first >= unique and body.cid in stores[1].lent()
            assert (await checkers[1].check(body, facts, trainer=creator.peer_id)).ok
            assert store.served_bytes - before == first  # all of it from the first verifier
            checkers[1].refute(body, "rejected by a rule beyond its content")
            assert body.cid not in stores[2].lent() and not stores[2].packs.complete(body.cid)

            dial = ("--initial-peers", creator.visible_maddrs()[0], "--run", run_id)
            out = tmp_path / "ensemble"
            r, f = await asyncio.gather(  # both at once: one client each, as users run them
                asyncio.to_thread(cli, "status", *dial, "--json", timeout=120),
                asyncio.to_thread(cli, "fetch", *dial, "--out", str(out), "--json", timeout=150))
            assert r.returncode == 0, r.stderr[-3000:]
            st = json.loads(r.stdout)
            assert {s: row["verified_step"] for s, row in slots(st).items()} == {s: HEAD for s in heads}
            assert run_finished(st)
            assert f.returncode == 0, f.stderr[-3000:]
            got = json.loads((out / "swarm_manifest.json").read_text())
            assert [(e["step"], e["cid"]) for e in got["experts"]] == [(HEAD, heads[expert_slot(k)].cid)
                                                                       for k in range(spec.num_clusters)]
            assert (got["router"]["step"], got["router"]["cid"]) == (HEAD, heads[ROUTER].cid)
            assert {p.name for p in out.iterdir()} >= {"expert_0", "expert_1", "router", "model_index.json"}
        finally:
            for st in stores:
                await st.close()
            for n in (creator, peer, late):
                if n is not None:
                    n.shutdown()

    asyncio.run(asyncio.wait_for(run(), 170))
