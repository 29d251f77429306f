"""Records that outlive their TTL: which of a run's signed facts a seeder keeps alive, and the local ledger of
what it keeps.

A DHT record dies at its expiration, and hivemind signs the expiration, so nobody but its writer can extend
it. The long-lived kinds (the creator's run pointer, DONE records, checkpoint records and attestations) also
carry their writer's signature over the content alone (`Envelope.sig`), so a seeder can re-publish a copy
(`ArchivedBody`) under the same key with an expiration of its own; readers check the writer's signature and
see the original record (swarm.dht.SwarmNode.get). A seeder can keep a record alive or withhold it, never
alter it. What is worth keeping is decided here, purely: the facts that a reader needs to judge the finished
run exactly as it was judged while its writers were online.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.atomic import atomic_write_bytes
from protocol.canonical import canonical_json
from protocol.errors import IntegrityError
from protocol.swarm_records import (
    RUNS_KEY,
    ArchivedBody,
    AttestationBody,
    CheckpointBody,
    DoneBody,
    Envelope,
    RunPointerBody,
    run_key,
    subkey_suffix,
)
from swarm.dht import Signed

ARCHIVED_KEYS = ("spec", "done")  # and the checkpoint and attestation shards (archive_keys)
MAX_ATTESTATIONS_PER_CID = 16  # a reader needs q of them; a flood of extra ones is not kept alive


def archive_keys(run_id: str, shard_keys: Iterable[str] = ()) -> list[str]:
    """Every DHT key whose records a seeder of `run_id` may archive: the run's pointer and DONE keys, and the
    checkpoint and attestation shards a read of the run visited (`RunView.shard_keys`, swarm.layout)."""
    return [run_key(run_id, k) for k in ARCHIVED_KEYS] + [RUNS_KEY] + list(shard_keys)


def worth_keeping(run_id: str, creator: bytes | None, accepted: set[str], rec: Signed) -> bool:
    """Whether `rec` is one of the facts that make the run's outcome: the creator's pointer to this run, a
    DONE record naming an accepted checkpoint, a trainer's record of an accepted checkpoint, or an attestation
    of one. Leases, progress and replicas are not facts about the outcome and are never archived."""
    body = rec.body
    if isinstance(body, RunPointerBody):
        return body.run_id == run_id and creator is not None and rec.owner == creator
    if isinstance(body, DoneBody):
        return body.checkpoint_cid in accepted
    if isinstance(body, CheckpointBody):
        return not body.replica and body.cid in accepted
    if isinstance(body, AttestationBody):
        return body.cid in accepted
    return False


def select(run_id: str, creator: bytes | None, accepted: set[str],
           found: Iterable[tuple[str, Signed]]) -> list[tuple[str, Signed]]:
    """The (key, record) pairs to keep from what was read, at most MAX_ATTESTATIONS_PER_CID attestations of
    one checkpoint (the earliest: those that accepted it while it was new)."""
    keep = [(key, rec) for key, rec in found if worth_keeping(run_id, creator, accepted, rec)]
    per_cid: dict[str, int] = {}
    out = []
    for key, rec in sorted(keep, key=lambda kr: getattr(kr[1].body, "ts", 0.0)):
        if isinstance(rec.body, AttestationBody):
            per_cid[rec.body.cid] = per_cid.get(rec.body.cid, 0) + 1
            if per_cid[rec.body.cid] > MAX_ATTESTATIONS_PER_CID:
                continue
        out.append((key, rec))
    return out


def archived_body(rec: Signed, now: float) -> ArchivedBody:
    """The copy a seeder publishes of `rec` (which must carry its writer's statement signature)."""
    if rec.envelope.sig is None:
        raise ValueError(f"a {rec.body.kind} record without a statement signature cannot be archived")
    return ArchivedBody(owner=rec.owner.decode("ascii"), record=canonical_json(rec.envelope).decode(), ts=now)


# ---- the seeder's ledger ---------------------------------------------------------------------------------


class LedgerEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    key: str = Field(max_length=256)
    owner: str = Field(max_length=1200)
    record: str  # the original envelope with its statement signature (canonical JSON)
    published_at: float = 0.0  # when this seeder last published its archived copy (0: never)

    @property
    def envelope(self) -> Envelope:
        return Envelope.model_validate_json(self.record)

    @property
    def ident(self) -> tuple[str, str, str]:
        return self.key, self.owner, subkey_suffix(self.envelope.body)


class Ledger(BaseModel):
    """What a seeder keeps alive for one run, on its own disk: after a restart (or after every copy in the DHT
    expired while it was away) it re-publishes from here."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    entries: list[LedgerEntry] = []

    @classmethod
    def load(cls, path: Path, run_id: str) -> Ledger:
        """The ledger at `path`, or an empty one if there is none. A damaged ledger is an error (it is ours)."""
        if not path.exists():
            return cls(run_id=run_id)
        try:
            ledger = cls.model_validate_json(path.read_bytes())
        except ValidationError as e:
            raise IntegrityError(f"archive ledger {path} is damaged ({e.errors()[0]['msg']}); remove it and "
                                 "the seeder rebuilds it from the DHT") from None
        if ledger.run_id != run_id:
            raise IntegrityError(f"archive ledger {path} belongs to run {ledger.run_id}, not {run_id}")
        return ledger

    def save(self, path: Path) -> None:
        atomic_write_bytes(path, self.model_dump_json(indent=1).encode())

    def add(self, pairs: Iterable[tuple[str, Signed]]) -> bool:
        """Record new facts (a newer version of a record replaces the older). True if anything changed."""
        index = {e.ident: i for i, e in enumerate(self.entries)}
        changed = False
        for key, rec in pairs:
            entry = LedgerEntry(key=key, owner=rec.owner.decode("ascii"), record=canonical_json(rec.envelope).decode())
            i = index.get(entry.ident)
            if i is None:
                index[entry.ident] = len(self.entries)
                self.entries.append(entry)
                changed = True
            elif self.entries[i].record != entry.record and _ts(entry) > _ts(self.entries[i]):
                self.entries[i] = entry
                changed = True
        return changed

    def due(self, now: float, refresh: float) -> list[int]:
        """Indexes of entries whose archived copy was never published or was published `refresh` ago."""
        return [i for i, e in enumerate(self.entries) if now - e.published_at >= refresh]

    def mark_published(self, i: int, now: float) -> None:
        self.entries[i] = self.entries[i].model_copy(update={"published_at": now})

    def signed(self, i: int) -> Signed:
        e = self.entries[i]
        return Signed(owner=e.owner.encode("ascii"), envelope=e.envelope, expiration_time=0.0)


def _ts(entry: LedgerEntry) -> float:
    return float(getattr(entry.envelope.body, "ts", 0.0))
