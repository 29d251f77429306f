"""Archived records (swarm.archive): a seeder's copy of another writer's record is accepted only if the writer
signed exactly that content for exactly that key; readers see the original; the seeder keeps only the facts
of the run's outcome, and its ledger survives restarts and refuses damage."""

from __future__ import annotations

import dataclasses
import json

import pytest
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import get_dht_time

from protocol.errors import IntegrityError
from protocol.swarm_records import (
    RUNS_KEY,
    ArchivedBody,
    AttestationBody,
    CheckpointBody,
    ClaimBody,
    ClaimState,
    DoneBody,
    Envelope,
    RunPointerBody,
    decode_envelope,
    encode_envelope,
    run_key,
    subkey_suffix,
)
from swarm import archive
from swarm.dht import Signed, merge_archived
from swarm.identity import load_identity
from swarm.validator import check_record, make_validators, open_archive

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
CID2 = "bafkreib2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zz"
KEY = run_key("r", "checkpoints")


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    return tuple(load_identity(tmp_path_factory.mktemp(n)) for n in "abc")


def _signed(identity, key: str, body, signer=None) -> Signed:
    env = decode_envelope(encode_envelope(key, body, sign=(signer or identity).private_key.sign))
    return Signed(owner=identity.public_key_bytes, envelope=env, expiration_time=0.0)


def _store(identity, key: str, body, expiration: float | None = None) -> DHTRecord:
    """The DHT record `identity` would store for `body` under `key`, signed by hivemind's validator."""
    subkey = b"[owner:" + identity.public_key_bytes + b"]" + subkey_suffix(body).encode()
    rec = DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(subkey),
                    MSGPackSerializer.dumps(encode_envelope(key, body, sign=identity.private_key.sign)),
                    expiration or get_dht_time() + 60)
    return dataclasses.replace(rec, value=CompositeValidator(make_validators(identity.private_key)).sign_value(rec))


def _check(identity, key: str, body):
    subkey = b"[owner:" + identity.public_key_bytes + b"]" + subkey_suffix(body).encode()
    return check_record(DHTID.generate(source=key).to_bytes(), subkey,
                        encode_envelope(key, body, sign=identity.private_key.sign), get_dht_time() + 60)


def _ckpt(step=10, cid=CID, ts=1.0, **kw) -> CheckpointBody:
    return CheckpointBody(slot="expert-0", step=step, cid=cid, bytes=5, ts=ts, **kw)


def _tampered(archived: ArchivedBody, **change) -> ArchivedBody:
    inner = json.loads(archived.record)
    for path, value in change.items():
        *where, leaf = path.split(".")
        node = inner
        for p in where:
            node = node[p]
        node[leaf] = value
    return archived.model_copy(update={"record": json.dumps(inner, sort_keys=True, separators=(",", ":"))})


def test_archived_copy_passes_every_node_and_reads_as_the_original(ids):
    a, b, _ = ids
    original = _signed(a, KEY, _ckpt())
    copy = archive.archived_body(original, now=5.0)
    assert CompositeValidator(make_validators(b.private_key)).validate(_store(b, KEY, copy))
    env = _check(b, KEY, copy)
    owner, inner = open_archive(env)
    assert owner == a.public_key_bytes and inner.body == original.body
    # one archive per original record per seeder: its subkey names the original's owner and subkey
    assert subkey_suffix(copy) == subkey_suffix(archive.archived_body(original, now=9.0)) != subkey_suffix(
        archive.archived_body(_signed(a, KEY, _ckpt(cid=CID2)), now=5.0))


def test_a_seeder_cannot_alter_or_misplace_what_it_archives(ids):
    a, b, _ = ids
    copy = archive.archived_body(_signed(a, KEY, _ckpt()), now=5.0)
    refused = {
        "altered step": _tampered(copy, **{"body.step": 99999}),
        "signature of another key": archive.archived_body(_signed(a, KEY, _ckpt(), signer=b), now=5.0),
        "claimed for another writer": copy.model_copy(update={"owner": b.public_key_bytes.decode()}),
        "no signature": _tampered(copy, sig=None),
    }
    for what, body in refused.items():
        with pytest.raises(IntegrityError):
            _check(b, KEY, body)
        assert not CompositeValidator(make_validators(b.private_key)).validate(_store(b, KEY, body)), what
    # a copy moved under another key of the run (the original names its own key)
    with pytest.raises(IntegrityError, match="another key"):
        _check(b, run_key("r", "attestations"), copy)
    # leases are not facts: a claim cannot be archived (and cannot carry a statement signature)
    now = get_dht_time()
    claim = ClaimBody(cluster=0, state=ClaimState.TRAINING, peer_id=a.peer_id, since=now, ts=now)
    env = decode_envelope(encode_envelope(run_key("r", "claims"), claim))
    forged = ArchivedBody(owner=a.public_key_bytes.decode(), ts=now, record=json.dumps(
        {**json.loads(env.model_dump_json()), "sig": a.private_key.sign(env.statement()).decode()}))
    with pytest.raises(IntegrityError):
        _check(b, run_key("r", "claims"), forged)
    # an archive of an archive
    nested = Signed(b.public_key_bytes, decode_envelope(encode_envelope(KEY, copy)), 0.0)
    with pytest.raises((IntegrityError, ValueError)):
        _check(b, KEY, archive.archived_body(nested, now=6.0))


def test_long_lived_records_need_their_writers_statement_signature(ids):
    a, b, _ = ids
    assert _check(a, KEY, _ckpt()).sig is not None
    with pytest.raises(ValueError, match="statement signature"):
        encode_envelope(KEY, _ckpt())
    subkey = b"[owner:" + a.public_key_bytes + b"]" + subkey_suffix(_ckpt()).encode()
    forged = encode_envelope(KEY, _ckpt(), sign=b.private_key.sign)  # b's statement in a's subkey
    with pytest.raises(IntegrityError, match="statement signature"):
        check_record(DHTID.generate(source=KEY).to_bytes(), subkey, forged, get_dht_time() + 60)


def test_readers_prefer_the_newest_version_and_the_live_record():
    owner = b"ssh-rsa AAAA"
    env = Envelope(v=2, key=KEY, body=_ckpt(ts=1.0))
    live = Signed(owner, env, 10.0)
    copy = Signed(owner, env, 20.0, archived_by=b"seeder")
    assert merge_archived([copy, live]) == (live,)
    newer = Signed(owner, Envelope(v=2, key=RUNS_KEY, body=RunPointerBody(run_id="r", spec_cid=CID2,
                                                                          num_clusters=2, ts=9.0)), 1.0, b"s")
    older = Signed(owner, Envelope(v=2, key=RUNS_KEY, body=RunPointerBody(run_id="r", spec_cid=CID,
                                                                          num_clusters=2, ts=3.0)), 9.0)
    assert merge_archived([older, newer]) == (newer,)
    other = Signed(b"ssh-rsa BBBB", env, 10.0)
    assert set(merge_archived([copy, live, other])) == {live, other}


def test_only_the_facts_of_the_outcome_are_kept(ids):
    a, b, c = ids
    creator = a.public_key_bytes
    ok = {CID}
    keep = {
        "creator's pointer": (run_key("r", "spec"), _signed(a, run_key("r", "spec"), RunPointerBody(
            run_id="r", spec_cid=CID2, num_clusters=2, ts=1.0))),
        "accepted checkpoint": (KEY, _signed(b, KEY, _ckpt())),
        "done naming it": (run_key("r", "done"), _signed(b, run_key("r", "done"), DoneBody(
            cluster=0, step=10, checkpoint_cid=CID, ts=1.0))),
    }
    drop = {
        "someone else's pointer": (RUNS_KEY, _signed(b, RUNS_KEY, RunPointerBody(
            run_id="r", spec_cid=CID2, num_clusters=2, ts=1.0))),
        "another run's pointer": (RUNS_KEY, _signed(a, RUNS_KEY, RunPointerBody(
            run_id="other", spec_cid=CID2, num_clusters=2, ts=1.0))),
        "unaccepted checkpoint": (KEY, _signed(b, KEY, _ckpt(cid=CID2))),
        "replica": (KEY, _signed(c, KEY, _ckpt(replica=True))),
        "done naming nothing accepted": (run_key("r", "done"), _signed(b, run_key("r", "done"), DoneBody(
            cluster=0, step=10, checkpoint_cid=None, ts=1.0))),
    }
    atts = [(run_key("r", "attestations"), _signed(c, run_key("r", "attestations"), AttestationBody(
        slot="expert-0", cid=CID, step=10, verdict="accept", ts=float(i)))) for i in range(20)]
    chosen = archive.select("r", creator, ok, [*keep.values(), *drop.values(), *atts])
    kept = [rec for _, rec in chosen]
    for what, (_, rec) in keep.items():
        assert rec in kept, what
    for what, (_, rec) in drop.items():
        assert rec not in kept, what
    kept_atts = [rec.body for rec in kept if isinstance(rec.body, AttestationBody)]
    assert len(kept_atts) == archive.MAX_ATTESTATIONS_PER_CID and min(x.ts for x in kept_atts) == 0.0
    assert archive.select("r", None, ok, [keep["creator's pointer"]]) == []


def test_ledger_survives_restarts_and_refuses_damage(ids, tmp_path):
    a, _, _ = ids
    path = tmp_path / "archive" / "r.json"
    ledger = archive.Ledger.load(path, "r")
    assert ledger.entries == []
    pointer = RunPointerBody(run_id="r", spec_cid=CID, num_clusters=2, ts=1.0)
    assert ledger.add([(RUNS_KEY, _signed(a, RUNS_KEY, pointer)), (KEY, _signed(a, KEY, _ckpt()))])
    assert not ledger.add([(KEY, _signed(a, KEY, _ckpt()))])  # the same record again (PSS: a fresh signature)
    # a newer version of the same record (same owner and subkey) replaces the older; an older one does not
    assert ledger.add([(RUNS_KEY, _signed(a, RUNS_KEY, pointer.model_copy(update={"spec_cid": CID2, "ts": 2.0})))])
    assert not ledger.add([(RUNS_KEY, _signed(a, RUNS_KEY, pointer))])
    assert len(ledger.entries) == 2 and ledger.signed(0).body.spec_cid == CID2
    assert ledger.due(100.0, refresh=50.0) == [0, 1]
    ledger.mark_published(0, 90.0)
    assert ledger.due(100.0, refresh=50.0) == [1]
    ledger.save(path)
    again = archive.Ledger.load(path, "r")
    assert again == ledger and again.signed(1) == ledger.signed(1)
    with pytest.raises(IntegrityError, match="belongs to run r"):
        archive.Ledger.load(path, "other")
    path.write_text('{"run_id": "r", "entries": [{"key": 3}]}')
    with pytest.raises(IntegrityError, match="damaged"):
        archive.Ledger.load(path, "r")
