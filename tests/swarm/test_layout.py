"""The bounded record layout (swarm.layout): shards refuse records of another slot or epoch, a quorum
certificate proves exactly what its embedded records prove, a certified head anchors a reader that never saw
its ancestors, and a key's worst-case honest content stays under the stated bound, far below a DHT reply."""

from __future__ import annotations

import pytest

from protocol.errors import IntegrityError
from protocol.swarm_records import (
    EPOCH_STEPS,
    MEMBER_BUCKETS,
    AttestationBody,
    CheckpointBody,
    MemberBody,
    decode_envelope,
    encode_envelope,
    member_bucket,
)
from swarm import layout
from swarm.acceptance import Claim, Policy, Status, judge
from swarm.archive import archived_body
from swarm.dht import Signed
from swarm.identity import load_identity, peer_id_of_public_key, verify_signature

CIDS = [f"bafkrei{c * 52}" for c in "abcdefgh"]
REPLY_LIMIT = 4 * 1024 * 1024
_AB = str.maketrans("01", "ab")


@pytest.fixture(scope="module")
def ids(tmp_path_factory):
    return tuple(load_identity(tmp_path_factory.mktemp(n)) for n in "tvwx")


def _signed(identity, key: str, body) -> Signed:
    env = decode_envelope(encode_envelope(key, body, sign=identity.private_key.sign))
    return Signed(owner=identity.public_key_bytes, envelope=env, expiration_time=0.0)


def _ckpt(step: int, cid: str, parent: str | None = None, loss: float = 1.0) -> CheckpointBody:
    return CheckpointBody(slot="expert-3", step=step, cid=cid, bytes=10, parent=parent, val_loss=loss, ts=1.0)


def _att(c: CheckpointBody, verdict: str = "accept", loss: float | None = None) -> AttestationBody:
    return AttestationBody(slot=c.slot, cid=c.cid, step=c.step, parent=c.parent,
                           val_loss=c.val_loss if loss is None else loss, verdict=verdict, ts=2.0)


def test_shards_refuse_records_of_another_slot_or_epoch():
    c = _ckpt(EPOCH_STEPS + 5, CIDS[0])
    key = layout.checkpoint_key("r", "expert-3", c.step)
    assert key == "paris/r/checkpoints/expert-3/e1"
    decode_envelope(encode_envelope(key, c, sign=lambda b: b"c2ln"))  # its own shard: fine
    for wrong in ("paris/r/checkpoints/expert-3/e0", "paris/r/checkpoints/expert-4/e1"):
        with pytest.raises(IntegrityError, match=r"epoch|shard"):
            decode_envelope(encode_envelope(wrong, c, sign=lambda b: b"c2ln"))
    peer = "12D3KooWA1b2C3d4E5f6G7h8J9k1M2n3P4q5R6s7T8u9V1w2X3y4"
    m = MemberBody(protocol=2, software="t", peer_id=peer, ts=1.0)
    decode_envelope(encode_envelope(layout.member_key("r", peer), m))
    other = (member_bucket(peer) + 1) % MEMBER_BUCKETS
    with pytest.raises(IntegrityError, match="bucket"):
        decode_envelope(encode_envelope(f"paris/r/members/b{other}", m))


def test_certificate_checks_every_embedded_record(ids):
    trainer, v1, v2, _ = ids
    c = _ckpt(4000, CIDS[1], parent=CIDS[0])
    rec = _signed(trainer, layout.checkpoint_key("r", c.slot, c.step), c)
    atts = [_signed(v, layout.attestation_key("r", c.slot, c.step), _att(c)) for v in (v1, v2)]
    cert = layout.make_certificate(archived_body(rec, 3.0), [archived_body(a, 3.0) for a in atts], 3.0)
    data = encode_envelope(layout.head_key("r", c.slot), cert)
    assert len(data) < 24 * 1024
    got = layout.check_certificate(decode_envelope(data).body, 2, verify_signature, peer_id_of_public_key)
    assert got.claim.cid == c.cid and len(got.votes) == 2
    with pytest.raises(IntegrityError, match="needs 3"):  # a quorum it does not carry
        layout.check_certificate(cert, 3, verify_signature, peer_id_of_public_key)
    own = _signed(trainer, layout.attestation_key("r", c.slot, c.step), _att(c))  # the trainer vouching for itself
    selfish = cert.model_copy(update={"attestations": (archived_body(own, 3.0),)})
    with pytest.raises(IntegrityError, match="carries 0"):
        layout.check_certificate(selfish, 1, verify_signature, peer_id_of_public_key)
    wrong_loss = _signed(v1, layout.attestation_key("r", c.slot, c.step), _att(c, loss=2.0))
    disagree = cert.model_copy(update={"attestations": (archived_body(wrong_loss, 3.0),)})
    with pytest.raises(IntegrityError, match="carries 0"):
        layout.check_certificate(disagree, 1, verify_signature, peer_id_of_public_key)
    forged = cert.checkpoint.model_copy(update={"record": cert.checkpoint.record.replace('"step":4000', '"step":4001')})
    with pytest.raises(IntegrityError, match="signature"):
        layout.check_certificate(cert.model_copy(update={"checkpoint": forged}), 1, verify_signature,
                                 peer_id_of_public_key)


def test_a_certified_head_anchors_a_reader_that_never_saw_its_ancestors():
    head = Claim("t", CIDS[2], 40_000, CIDS[1], 0.5)  # its parent's records have expired
    child = Claim("t", CIDS[3], 42_000, CIDS[2], 0.43)
    worse = Claim("t", CIDS[4], 42_000, CIDS[2], 0.9)  # 0.9 > 0.4 · 1.1: worse than the lineage's best
    policy = Policy(attestations=1, max_interval=2000)
    without = {j.claim.cid: j.status for j in judge([head, child], [], policy, {CIDS[3]: True})}
    assert without[CIDS[3]] == Status.PENDING  # the parent is not announced: nothing to build on
    got = {j.claim.cid: j for j in judge([head, child, worse], [], policy, {CIDS[3]: True}, anchors={CIDS[2]: 0.4})}
    assert got[CIDS[2]].status == Status.ACCEPTED and got[CIDS[3]].status == Status.ACCEPTED
    assert got[CIDS[4]].status == Status.REJECTED  # the bound holds against the certified best loss


def test_attestations_stop_once_the_rule_has_what_it_needs():
    assert layout.attestation_needed(0, 0, 1) and not layout.attestation_needed(1, 0, 1)
    assert layout.attestation_needed(3, 1, 2)  # contested: another verdict still counts
    assert not layout.attestation_needed(0, 0, 1, in_flight=1)  # one checker is already fetching it
    assert layout.attestation_needed(1, 0, 3, in_flight=1)


def test_archivers_are_keyed_by_the_record_not_by_the_cid():
    seeders = [f"peer{i}" for i in range(50)]
    a = layout.archivers("r", "heads/expert-1", seeders, 3)
    assert len(a) == 3 and a == layout.archivers("r", "heads/expert-1", reversed(seeders), 3)
    assert a == layout.archivers("r", "heads/expert-1", [*seeders, "late"], 3) or "late" in a  # stays put
    assert a != layout.archivers("r", "heads/expert-2", seeders, 3)  # the load spreads over slots
    assert layout.epochs_to_read(40_000, 40_000) == range(2, 4)
    assert layout.epochs_to_read(None, 70_000) == range(0, 5)


@pytest.mark.parametrize(("K", "V", "P"), [(8, 10, 100), (16, 10, 1000), (64, 100, 1000)])
def test_bound_per_key_holds_for_a_full_epoch_and_is_far_below_a_reply(ids, K, V, P):
    """The worst honest epoch (two trainers each publishing every checkpoint, q + 2 attestations each) encoded
    with real records and real signatures stays under the formula, and the formula under 1 MiB at any size."""
    every, q = 2000, 1
    trainer, *verifiers = ids
    per_trainer = EPOCH_STEPS // every + 1
    ckpts = [_ckpt(EPOCH_STEPS + i * every // 2, f"bafkrei{i:052b}".translate(_AB)) for i in range(2 * per_trainer)]
    key = layout.checkpoint_key("r", "expert-3", EPOCH_STEPS)
    ckpt_bytes = sum(len(encode_envelope(key, c, sign=trainer.private_key.sign)) for c in ckpts)
    att_bytes = sum(len(encode_envelope(layout.attestation_key("r", "expert-3", c.step), _att(c),
                                        sign=v.private_key.sign)) for c in ckpts for v in verifiers)  # q + 2 = 3
    bound = {kind: layout.key_bound(kind, K=K, V=V, P=P, checkpoint_every=every, quorum=q)
             for kind in ("checkpoints", "attestations", "heads", "members")}
    assert ckpt_bytes <= bound["checkpoints"] and att_bytes <= bound["attestations"]
    assert max(bound.values()) < 1024 * 1024 < REPLY_LIMIT


def test_a_certificate_fills_gaps_in_the_lineage_but_never_overrides_a_rejection():
    policy = Policy(attestations=1, max_interval=2000)
    older = Claim("t", CIDS[0], 38_000, CIDS[7], 0.55)  # its parent expired: PENDING without a certificate
    head = Claim("t", CIDS[1], 40_000, CIDS[0], 0.5)  # certified; its parent is read but unresolvable
    child = Claim("t", CIDS[2], 42_000, CIDS[1], 0.45)
    got = {j.claim.cid: j.status for j in judge([older, head, child], [], policy, {CIDS[2]: True},
                                                anchors={CIDS[1]: 0.5})}
    assert got == {CIDS[0]: Status.PENDING, CIDS[1]: Status.ACCEPTED, CIDS[2]: Status.ACCEPTED}
    rejected_parent = Claim("t", CIDS[0], 38_000, None, 0.55)  # a first checkpoint 38,000 steps in: refused
    got = {j.claim.cid: j.status for j in judge([rejected_parent, head], [], policy, anchors={CIDS[1]: 0.5})}
    assert got[CIDS[1]] == Status.REJECTED


def test_a_certified_head_under_a_failed_replay_is_rejected_unless_this_node_found_it_sound():
    """Rule 3 with a certificate: a failed replay by another peer rejects a certified head for a reader that did
    not check it; for one whose own check found it sound it stays disputed (PENDING) until that reader replays."""
    from swarm.acceptance import Vote

    policy = Policy(attestations=1, max_interval=2000)
    older = Claim("t", CIDS[0], 38_000, CIDS[7], 0.55)  # its parent expired: the head's lineage is incomplete
    head = Claim("t", CIDS[1], 40_000, CIDS[0], 0.5)
    failed = Vote("minter", CIDS[1], 40_000, CIDS[0], 0.5, False, "replay differs by 0.7", replayed=True)
    sound = Vote("local", CIDS[1], 40_000, CIDS[0], 0.5, True)

    def status(local) -> Status:
        got = {j.claim.cid: j.status for j in judge([older, head], [failed], policy, local, anchors={CIDS[1]: 0.5})}
        return got[CIDS[1]]

    assert status({}) == Status.REJECTED
    assert status({CIDS[1]: sound}) == Status.PENDING
    assert status({CIDS[1]: Vote("local", CIDS[1], 40_000, CIDS[0], 0.5, True, replayed=True)}) == Status.ACCEPTED
