"""The record layout of a run at real size: which key holds what, so that no key's live content grows with the
run's length or the swarm's size, and the compact summary (a quorum certificate) behind which superseded
records may expire.

- `paris/{run}/checkpoints/{slot}/e{n}` and `.../attestations/{slot}/e{n}`: one slot's trainer records and
  attestations of steps [n·EPOCH_STEPS, (n+1)·EPOCH_STEPS). Validators refuse a record in another shard
  (protocol.swarm_records.shard_problem), so a shard holds one epoch of one slot whatever the run's length.
- `paris/{run}/heads/{slot}`: quorum certificates, one per writer: the accepted head of the slot with the
  attestations that accepted it. Only the few writers chosen for the slot (`archivers`) publish one, near
  expiry and when the head moves. A late joiner reads the heads, then only the epochs from the head on.
- `paris/{run}/members/b{i}`: member records spread over MEMBER_BUCKETS keys by a hash of the peer id.

Checks stop once a CID has what the rule needs or enough checkers fetching it (`attestation_needed`), so an
epoch's attestations are bounded by the quorum plus a margin for races, not by the number of verifiers.
`key_bound` states each key's bound as a formula of K, V, P; tests and benchmarks/swarm_scale.py check it.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from protocol.errors import IntegrityError
from protocol.swarm_records import (
    EPOCH_STEPS,
    MAX_CERT_ATTESTATIONS,
    MEMBER_BUCKETS,
    RUN_ID_PATTERN,
    ArchivedBody,
    AttestationBody,
    CertificateBody,
    CheckpointBody,
    Envelope,
    member_bucket,
)
from swarm.acceptance import Claim, Vote

Verify = Callable[[bytes, bytes, bytes], bool]  # (owner's public key, statement, signature) → valid


def epoch_of(step: int) -> int:
    return step // EPOCH_STEPS


def _run(run_id: str) -> str:
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    return f"paris/{run_id}"


def checkpoint_key(run_id: str, slot: str, step: int) -> str:
    return f"{_run(run_id)}/checkpoints/{slot}/e{epoch_of(step)}"


def attestation_key(run_id: str, slot: str, step: int) -> str:
    return f"{_run(run_id)}/attestations/{slot}/e{epoch_of(step)}"


def head_key(run_id: str, slot: str) -> str:
    return f"{_run(run_id)}/heads/{slot}"


def member_key(run_id: str, peer_id: str) -> str:
    return f"{_run(run_id)}/members/b{member_bucket(peer_id)}"


def member_keys(run_id: str) -> list[str]:
    return [f"{_run(run_id)}/members/b{i}" for i in range(MEMBER_BUCKETS)]


def epochs_to_read(head_step: int | None, newest_step: int | None) -> range:
    """The epochs a reader reads for a slot: from its accepted head's (the step-0 one without a head) to the
    newest it has heard of (gossip, its own work), at least one past the head's, where the head's children
    land when the head closes an epoch."""
    first = epoch_of(head_step or 0)
    last = max(first + 1, epoch_of(newest_step or 0))
    return range(first, last + 1)


def archivers(run_id: str, record: str, seeders: Iterable[str], count: int) -> list[str]:
    """The `count` seeders that keep `record` alive (`heads/{slot}`: the slot's certificate; `replica/{slot}/e{n}`:
    a copy of its head in epoch n): a rendezvous hash of the run and the record's name, which a trainer cannot
    move by re-rolling its CID, and which stays put while those seeders live (so a key's writers do not
    accumulate); other seeders stay idle."""
    def rank(peer: str) -> bytes:
        return hashlib.sha256(f"archive|{run_id}|{record}|{peer}".encode()).digest()

    return sorted(set(seeders), key=rank)[:count]


def attestation_needed(accepts: int, rejects: int, quorum: int, in_flight: int = 0) -> bool:
    """Whether one more check of a CID adds anything: not once it has the quorum of accepts, or enough
    verifiers already fetching it to make one (`in_flight`: verifiers that announced themselves as providers
    of the CID, which they do as they start, re-serving its chunks as they land, and have not attested yet
    nor gone silent), unless a reject contests it (a failed replay or a contested CID wants more verdicts)."""
    return rejects > 0 or accepts + in_flight < quorum


# ---- quorum certificates ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Certified:
    """What a checked certificate proves: the trainer's claim and the distinct verifiers' votes for it."""

    claim: Claim
    votes: tuple[Vote, ...]


def make_certificate(checkpoint: ArchivedBody, attestations: Iterable[ArchivedBody], now: float) -> CertificateBody:
    """A certificate from the archived copies (swarm.archive.archived_body) of an accepted checkpoint record and
    of the attestations that accepted it (the first MAX_CERT_ATTESTATIONS)."""
    body = Envelope.model_validate_json(checkpoint.record).body
    if not isinstance(body, CheckpointBody):
        raise ValueError("a certificate names a checkpoint record")
    return CertificateBody(slot=body.slot, cid=body.cid, step=body.step, checkpoint=checkpoint,
                           attestations=tuple(attestations)[:MAX_CERT_ATTESTATIONS], ts=now)


def check_certificate(cert: CertificateBody, quorum: int, verify: Verify, peer_of: Callable[[bytes], str],
                      rtol: float = 1e-3) -> Certified:
    """Re-check every record a certificate embeds (signatures, and that they are about its CID, slot and step)
    and that at least `quorum` distinct verifiers other than the trainer accept it with the trainer's step,
    parent and loss. Raises IntegrityError with the first problem: the writer of a certificate proves nothing."""
    record = _embedded(cert.checkpoint, verify)
    ckpt = record.body
    if not isinstance(ckpt, CheckpointBody) or ckpt.replica:
        raise IntegrityError("a certificate must embed a trainer's checkpoint record")
    if (ckpt.slot, ckpt.cid, ckpt.step) != (cert.slot, cert.cid, cert.step):
        raise IntegrityError("the certificate's checkpoint record is about another checkpoint")
    trainer = peer_of(cert.checkpoint.owner.encode("ascii"))
    claim = Claim(trainer, ckpt.cid, ckpt.step, ckpt.parent, ckpt.val_loss, ckpt.ts)
    votes: dict[str, Vote] = {}
    for archived in cert.attestations:
        att = _embedded(archived, verify).body
        if not isinstance(att, AttestationBody) or att.cid != cert.cid or att.slot != cert.slot:
            raise IntegrityError("a certificate embeds an attestation of another checkpoint")
        verifier = peer_of(archived.owner.encode("ascii"))
        ok = (att.verdict == "accept" and verifier != trainer and att.step == ckpt.step and att.parent == ckpt.parent
              and att.val_loss is not None and ckpt.val_loss is not None
              and math.isclose(att.val_loss, ckpt.val_loss, rel_tol=rtol))
        if ok:
            votes[verifier] = Vote(verifier, att.cid, att.step, att.parent, att.val_loss, True, att.reason,
                                   att.replayed)
    if len(votes) < max(quorum, 1):
        raise IntegrityError(f"the certificate of {cert.slot} step {cert.step} carries {len(votes)} agreeing "
                             f"attestation(s), the rule needs {max(quorum, 1)}")
    return Certified(claim, tuple(votes[v] for v in sorted(votes)))


def _embedded(archived: ArchivedBody, verify: Verify) -> Envelope:
    env = Envelope.model_validate_json(archived.record)
    if env.sig is None or not verify(archived.owner.encode("ascii"), env.statement(), env.sig.encode("ascii")):
        raise IntegrityError("a record embedded in a certificate does not carry its writer's valid signature")
    return env


# ---- the bound per key --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Measured encoded sizes of one record of each kind (bytes; docs/design.md §6, issue 28)."""

    checkpoint: int = 1_600
    attestation: int = 1_600
    archived: int = 2_150
    member: int = 3_750
    claim: int = 700


def key_bound(kind: str, *, K: int, V: int, P: int, checkpoint_every: int, quorum: int = 1, margin: int = 2,
              trainers_per_epoch: int = 2, writers: int = 3, sizes: Sizes = Sizes()) -> int:
    """The most bytes an honest swarm keeps live under one key of `kind` (see docs/design.md, "Record layout"):

    - checkpoints/{slot}/e{n}:  L·(E/c + 1)·s_ckpt                 (L trainers of the slot during one epoch)
    - attestations/{slot}/e{n}: L·(E/c + 1)·(q + m)·s_att          (q + m checkers per CID, whatever V is)
    - heads/{slot}:             R·(s_arch·(1 + min(q + m, 8)) + 200)   (R chosen writers)
    - members/b{i}:             (P/B + 3·sqrt(P/B) + 1)·s_member   (a hash spreads P peers over B buckets)
    - claims:                   2K·s_claim                         (a lease per slot, and one contender or
                                                                    stale lease of a slot within a lease TTL)

    with E = EPOCH_STEPS, c = `checkpoint_every`. V does not appear: a key is per slot (but the one claims key)
    and the checks of a CID stop at what the rule needs. The member bucket allows three standard deviations."""
    per_epoch = trainers_per_epoch * (EPOCH_STEPS // max(checkpoint_every, 1) + 1)
    if kind == "checkpoints":
        return per_epoch * sizes.checkpoint
    if kind == "attestations":
        return per_epoch * (quorum + margin) * sizes.attestation
    if kind == "heads":
        return writers * (sizes.archived * (1 + min(quorum + margin, MAX_CERT_ATTESTATIONS)) + 200)
    if kind == "claims":
        return 2 * K * sizes.claim
    if kind == "members":
        mean = P / MEMBER_BUCKETS
        return math.ceil(mean + 3 * math.sqrt(mean) + 1) * sizes.member
    raise ValueError(f"no bound for key kind {kind!r}")
