"""Record schemas, keys and the validator: valid records pass; malformed, replayed, foreign-signed,
oversized and random inputs are refused without an exception escaping."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import stat

import pytest
from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import CompositeValidator, DHTRecord
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import get_dht_time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol.errors import IntegrityError, ParisError
from protocol.swarm_records import (
    MAX_CERTIFICATE_BYTES,
    MAX_RECORD_BYTES,
    MEMBER_BUCKETS,
    PROTOCOL_VERSION,
    CheckpointBody,
    ClaimBody,
    ClaimState,
    DoneBody,
    ForeignMember,
    MemberBody,
    ProgressBody,
    ProviderBody,
    decode_envelope,
    encode_envelope,
    key_kind,
    member_bucket,
    provider_key,
    run_key,
    subkey_suffix,
)
from swarm import validator as validator_module
from swarm.dht import NetworkConfig
from swarm.identity import load_identity, peer_id_of_public_key
from swarm.layout import member_key
from swarm.validator import ParisRecordValidator, PassedRecords, check_record, make_validators

CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
NOW = 1_800_000_000.0


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    return load_identity(tmp_path_factory.mktemp("a")), load_identity(tmp_path_factory.mktemp("b"))


def _record(identity, key: str, body, *, signer=None, expiration=None) -> DHTRecord:
    """A record as the DHT would carry it: msgpack-serialized parts, value signed by `signer`'s validators."""
    subkey = b"[owner:" + identity.public_key_bytes + b"]" + subkey_suffix(body).encode()
    rec = DHTRecord(DHTID.generate(source=key).to_bytes(), MSGPackSerializer.dumps(subkey),
                    MSGPackSerializer.dumps(encode_envelope(key, body, sign=(signer or identity).private_key.sign)),
                    expiration or get_dht_time() + 60)
    signing = CompositeValidator(make_validators((signer or identity).private_key))
    return dataclasses.replace(rec, value=signing.sign_value(rec))


def test_identity_persists_with_private_permissions(tmp_path):
    a = load_identity(tmp_path)
    assert stat.S_IMODE(os.stat(a.identity_path).st_mode) == 0o600
    assert load_identity(tmp_path).peer_id == a.peer_id == peer_id_of_public_key(a.public_key_bytes)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "identity.key").write_bytes(b"not a key")
    with pytest.raises(ParisError, match="not a valid paris-node identity"):
        load_identity(tmp_path / "bad")


def test_keys():
    assert key_kind(run_key("run-1", "claims")) == "claim"
    assert key_kind(provider_key(CID)) == "provider"
    assert key_kind("paris/cas/claims") is None and key_kind("other") is None
    with pytest.raises(ValueError):
        run_key("../x", "claims")


def test_valid_records_pass_and_are_signed(ids):
    a, _ = ids
    now = get_dht_time()
    bodies = {
        run_key("r", "claims"): ClaimBody(cluster=3, state=ClaimState.JOINING, peer_id=a.peer_id, since=now, ts=now),
        member_key("r", a.peer_id): MemberBody(protocol=1, software="paris-node 0.1", peer_id=a.peer_id, ts=now,
                                               maddrs=("/ip4/127.0.0.1/tcp/1",)),
        run_key("r", "progress"): ProgressBody(cluster=1, step=5, target=100, loss=0.5, started_at=now, ts=now),
        run_key("r", "done"): DoneBody(cluster=1, step=100, checkpoint_cid=CID, ts=now),
        run_key("r", "checkpoints"): CheckpointBody(slot="router", step=3, cid=CID, bytes=10, ts=now),
        provider_key(CID): ProviderBody(cid=CID, peer_id=a.peer_id, bytes=10, ts=now),
    }
    validator = CompositeValidator(make_validators(a.private_key))
    for key, body in bodies.items():
        rec = _record(a, key, body)
        assert validator.validate(rec), key
        stripped = MSGPackSerializer.loads(validator.strip_value(rec))
        assert decode_envelope(stripped).body == body


def test_refused_records(ids):
    a, b = ids
    now = get_dht_time()
    validator = CompositeValidator(make_validators(b.private_key))
    claim = ClaimBody(cluster=0, state=ClaimState.TRAINING, peer_id=a.peer_id, since=now, ts=now)
    key = run_key("r", "claims")
    assert validator.validate(_record(a, key, claim))
    # signed by b in a's subkey (a forged write to a's lease)
    assert not validator.validate(_record(a, key, claim, signer=b))
    # b names a's peer id in its own subkey
    assert not validator.validate(_record(b, key, claim))
    # replayed under another key: the envelope names the claims key
    good = _record(a, key, claim)
    assert not validator.validate(dataclasses.replace(good, key=DHTID.generate(source=run_key("r", "progress"))
                                                      .to_bytes()))
    # wrong kind for the key
    prog = ProgressBody(step=1, target=2, started_at=now, ts=now)
    env = json.loads(encode_envelope(run_key("r", "progress"), prog))
    env["key"] = key
    rec = dataclasses.replace(good, value=MSGPackSerializer.dumps(json.dumps(env).encode()))
    assert not validator.validate(dataclasses.replace(rec, value=CompositeValidator(
        make_validators(a.private_key)).sign_value(rec)))
    # lease expiring absurdly late
    assert not validator.validate(_record(a, key, claim, expiration=get_dht_time() + 10**9))
    # no subkey / no owner
    assert not ParisRecordValidator().validate(dataclasses.replace(good, subkey=MSGPackSerializer.dumps(b"x")))



def test_a_record_that_passed_is_not_checked_again_and_nothing_else_rides_on_it(ids, monkeypatch):
    """Each validator remembers the record versions that passed: the same bytes are not verified again. A record
    differing in any part (key, subkey, value, expiration) is checked in full, a refusal is never remembered (a
    record dated ahead passes once its time comes), and the memory is bounded."""
    a, b = ids
    now = get_dht_time()
    key = run_key("r", "claims")
    good = _record(a, key, ClaimBody(cluster=0, state=ClaimState.TRAINING, peer_id=a.peer_id, since=now, ts=now))
    validator = CompositeValidator(make_validators(b.private_key))
    assert validator.validate(good)
    checks = {"rsa": 0, "paris": 0}
    real_verify, real_check = validator_module.RSASignatureValidator.validate, validator_module.check_record

    def counted_verify(self, record):
        checks["rsa"] += 1
        return real_verify(self, record)

    def counted_check(*args, **kwargs):
        checks["paris"] += 1
        return real_check(*args, **kwargs)

    monkeypatch.setattr(validator_module.RSASignatureValidator, "validate", counted_verify)
    monkeypatch.setattr(validator_module, "check_record", counted_check)
    for _ in range(5):
        assert validator.validate(good)
    assert checks == {"rsa": 0, "paris": 0}
    # every part is in the digest: a change anywhere is checked in full, and refused
    other_key = DHTID.generate(source=run_key("r", "progress")).to_bytes()
    forged = _record(a, key, ClaimBody(cluster=1, state=ClaimState.TRAINING, peer_id=a.peer_id, since=now, ts=now))
    for changed in (dataclasses.replace(good, key=other_key), dataclasses.replace(good, value=forged.value),
                    dataclasses.replace(good, subkey=_record(b, key, ClaimBody(
                        cluster=0, state=ClaimState.TRAINING, peer_id=b.peer_id, since=now, ts=now)).subkey),
                    dataclasses.replace(good, expiration_time=good.expiration_time + 1)):
        assert not validator.validate(changed)
    assert checks["rsa"] == 4
    # a refusal is not remembered: dated 400 s ahead, refused now, accepted once the clock has moved on
    ahead = _record(a, key, ClaimBody(cluster=2, state=ClaimState.TRAINING, peer_id=a.peer_id, since=now + 400,
                                      ts=now + 400), expiration=now + 500)
    assert not validator.validate(ahead)
    monkeypatch.setattr(validator_module, "get_dht_time", lambda: now + 200)
    assert validator.validate(ahead)
    # bounded: the least recently seen is forgotten first
    passed = PassedRecords(size=2)
    for d in (b"1", b"2", b"3"):
        passed.add(d)
    assert not passed.passed(b"1") and passed.passed(b"2") and passed.passed(b"3")
    assert PassedRecords.digest(good) != PassedRecords.digest(dataclasses.replace(good, expiration_time=0.0))

def test_a_member_record_lives_only_in_its_owners_bucket(ids):
    """Each member record in the bucket its owner's peer id hashes to (swarm.layout.member_key): the same
    record in another bucket, or a record naming its own peer in the bucket of another, is refused."""
    a, b = ids
    now = get_dht_time()
    validator = CompositeValidator(make_validators(b.private_key))
    mine = MemberBody(protocol=PROTOCOL_VERSION, software="paris-node", peer_id=a.peer_id, ts=now)
    home = member_bucket(a.peer_id)
    assert member_key("r", a.peer_id) == f"paris/r/members/b{home}"
    assert validator.validate(_record(a, member_key("r", a.peer_id), mine))
    elsewhere = f"paris/r/members/b{(home + 1) % MEMBER_BUCKETS}"
    assert not validator.validate(_record(a, elsewhere, mine))
    with pytest.raises(IntegrityError, match=f"belongs in bucket b{home}"):
        check_record(DHTID.generate(source=elsewhere).to_bytes(), b"[owner:" + a.public_key_bytes + b"]",
                     encode_envelope(elsewhere, mine), now + 60)
    # a's record in b's bucket is refused, and so is a record a writes there in b's name (not its owner)
    other = MemberBody(protocol=PROTOCOL_VERSION, software="paris-node", peer_id=b.peer_id, ts=now)
    if member_bucket(b.peer_id) != home:
        assert not validator.validate(_record(a, member_key("r", b.peer_id), mine))
    assert not validator.validate(_record(a, member_key("r", b.peer_id), other))


def test_protocol_versions(ids):
    a, _ = ids
    now = get_dht_time()
    member = MemberBody(protocol=PROTOCOL_VERSION + 1, software="paris-node 9", peer_id=a.peer_id, ts=now)
    env = json.loads(encode_envelope(member_key("r", a.peer_id), member))
    env["v"] = PROTOCOL_VERSION + 1
    env["body"]["new_field"] = [1, 2]
    foreign = decode_envelope(json.dumps(env).encode())
    assert isinstance(foreign, ForeignMember) and foreign.protocol == PROTOCOL_VERSION + 1
    claim = ClaimBody(cluster=0, state=ClaimState.TRAINING, peer_id=a.peer_id, since=now, ts=now)
    env = json.loads(encode_envelope(run_key("r", "claims"), claim))
    env["v"] = PROTOCOL_VERSION + 1
    with pytest.raises(IntegrityError, match=f"protocol v{PROTOCOL_VERSION + 1}"):
        decode_envelope(json.dumps(env).encode())


def test_size_cap(ids):
    with pytest.raises(IntegrityError, match="limit"):
        decode_envelope(b"{" + b" " * MAX_CERTIFICATE_BYTES + b"}")
    # an ordinary record padded past its own limit (but under an archive's) is refused too
    a, _ = ids
    claim = ClaimBody(cluster=0, state=ClaimState.TRAINING, peer_id=a.peer_id, since=1.0, ts=1.0)
    padded = encode_envelope(run_key("r", "claims"), claim)[:-1] + b" " * MAX_RECORD_BYTES + b"}"
    with pytest.raises(IntegrityError, match="4096-byte limit"):
        decode_envelope(padded)
    now = get_dht_time()
    many = tuple(f"/ip4/127.0.0.1/tcp/{i}/" + "x" * 150 for i in range(16))
    body = MemberBody(protocol=1, software="s", peer_id="Qm" + "a" * 44, maddrs=many, gossip_maddrs=many, ts=now)
    with pytest.raises(ValueError, match="limit"):
        encode_envelope(member_key("r", body.peer_id), body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes_never_crash_decoders(data):
    with pytest.raises(IntegrityError):
        decode_envelope(data)
    assert ParisRecordValidator().validate(DHTRecord(data[:20], data, data, NOW)) is False


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
json_values = json_leaf | st.lists(json_leaf, max_size=4) | st.dictionaries(st.text(max_size=10), json_leaf, max_size=4)
kinds = st.sampled_from(["member", "spec", "claim", "done", "progress", "checkpoint", "provider", "x"])
keys = st.sampled_from([run_key("r", "claims"), run_key("r", "members"), member_key("r", "12D3KooWQ"),
                        provider_key(CID), "paris/r/x", ""])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(-1, 3), keys, kinds, st.dictionaries(st.sampled_from(
    ["cluster", "state", "peer_id", "since", "ts", "step", "target", "cid", "bytes", "protocol", "software",
     "slot", "loss", "started_at", "spec_cid", "run_id", "num_clusters", "maddrs"]), json_values, max_size=8),
    st.binary(max_size=64))
def test_valid_looking_records_never_crash(v, key, kind, fields, subkey_tail):
    data = json.dumps({"v": v, "key": key, "body": {"kind": kind, **fields}}).encode()
    with contextlib.suppress(IntegrityError):
        decode_envelope(data)
    with contextlib.suppress(IntegrityError):
        check_record(DHTID.generate(source=key).to_bytes(), b"[owner:" + subkey_tail + b"]", data, NOW + 9, NOW)
    subkey = MSGPackSerializer.dumps(b"[owner:" + subkey_tail + b"]")
    rec = DHTRecord(DHTID.generate(source=key).to_bytes(), subkey, MSGPackSerializer.dumps(data), NOW)
    assert ParisRecordValidator().validate(rec) in (True, False)
    assert RSASignatureValidator.__name__  # the signature layer is exercised in test_refused_records


def test_network_defaults_are_loopback_only():
    kw = NetworkConfig().dht_kwargs()
    assert kw["host_maddrs"] == ["/ip4/127.0.0.1/tcp/0"]
    assert not any(kw[k] for k in ("nat_port_map", "auto_nat", "use_relay", "use_auto_relay", "use_ipfs"))
    opened = NetworkConfig(host_maddrs=("/ip4/0.0.0.0/tcp/31337",), announce_maddrs=("/ip4/1.2.3.4/tcp/31337",),
                           nat_traversal=True, use_relay=True).dht_kwargs()
    assert opened["nat_port_map"] and opened["auto_nat"] and opened["use_relay"] and opened["use_auto_relay"]
    assert opened["announce_maddrs"] == ["/ip4/1.2.3.4/tcp/31337"]


def test_records_dated_in_the_future_are_refused(ids):
    """A checkpoint record dated a year ahead would count as progress (and keep a lease) until then, and a lease
    whose `since` lies ahead would outrank honest ones: every node's validator refuses both; a clock a minute
    off is still fine."""
    from protocol.swarm_records import MAX_FUTURE_S, CheckpointBody

    a, b = ids
    validator = CompositeValidator(make_validators(b.private_key))
    now = get_dht_time()
    key = run_key("r", "checkpoints")
    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    for ts, ok in ((now, True), (now + 60, True), (now + MAX_FUTURE_S + 5, False), (now + 365 * 86400, False)):
        ck = CheckpointBody(slot="expert-0", step=10**6, cid=cid, bytes=10, ts=ts, val_loss=1.0)
        assert validator.validate(_record(a, key, ck)) is ok, ts - now
    lease = ClaimBody(cluster=0, state=ClaimState.TRAINING, peer_id=a.peer_id, since=now + 10**5, ts=now)
    assert not validator.validate(_record(a, run_key("r", "claims"), lease))
