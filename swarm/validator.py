"""The record validator every node runs: a DHT value is accepted only if it is a well-formed `Envelope` for
the key it is stored under, in an owner subkey that hivemind's RSASignatureValidator has already verified, and
names the owner's own peer id. Honest nodes refuse (do not store, do not return) anything else.

Both validators remember the records that passed (`PassedRecords`): a DHT node sees the same records in every
reply to every read and store, and checked them again each time (an RSA verification, a public key parsed from
text, an envelope decoded: 59 µs a record here, 8 µs remembered). It was the largest cost of the DHT processes
in a profile of the hostile-peer end-to-end test."""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict

from hivemind.dht.crypto import RSASignatureValidator
from hivemind.dht.routing import DHTID
from hivemind.dht.validation import DHTRecord, RecordValidatorBase
from hivemind.utils.serializer import MSGPackSerializer
from hivemind.utils.timed_storage import get_dht_time

from protocol.errors import IntegrityError
from protocol.swarm_records import (
    ARCHIVABLE_KINDS,
    MAX_FUTURE_S,
    MAX_RECORD_TTL,
    ArchivedBody,
    ClaimBody,
    Envelope,
    ForeignMember,
    MemberBody,
    ProviderBody,
    decode_envelope,
)
from swarm.identity import peer_id_of_public_key, verify_signature

log = logging.getLogger(__name__)

_OWNER_PREFIX = b"[owner:"


def split_subkey(subkey: object) -> tuple[bytes, str]:
    """`[owner:ssh-rsa …]#slot` → (OpenSSH public key, "#slot"). Raises IntegrityError if not of that form."""
    if not isinstance(subkey, bytes) or not subkey.startswith(_OWNER_PREFIX):
        raise IntegrityError("record subkey is not an owner key")
    end = subkey.find(b"]")
    if end < 0:
        raise IntegrityError("record subkey is not an owner key")
    try:
        suffix = subkey[end + 1 :].decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError("record subkey suffix is not ASCII") from None
    return subkey[len(_OWNER_PREFIX) : end], suffix


def check_record(key_id: bytes, subkey: object, value: object, expiration_time: float,
                 now: float | None = None) -> Envelope | ForeignMember:
    """The whole check on already-deserialized parts; raises IntegrityError with the reason."""
    owner, suffix = split_subkey(subkey)
    if not isinstance(value, bytes):
        raise IntegrityError("record value is not bytes")
    env = decode_envelope(value, subkey_suffix_seen=suffix)
    if isinstance(env, ForeignMember):
        return env
    if DHTID.generate(source=env.key).to_bytes() != key_id:
        raise IntegrityError(f"record says key {env.key!r} but is stored under another key")
    now = get_dht_time() if now is None else now
    if expiration_time > now + MAX_RECORD_TTL:
        raise IntegrityError("record expires too far in the future")
    dated = max(getattr(env.body, "ts", 0.0), getattr(env.body, "since", 0.0) or 0.0)
    if dated > now + MAX_FUTURE_S:  # it would count as progress, or hold a lease, long before its time
        raise IntegrityError(f"record is dated {dated - now:.0f} s in the future (at most {MAX_FUTURE_S:.0f} s)")
    if isinstance(env.body, MemberBody | ClaimBody | ProviderBody):
        try:
            owner_peer = peer_id_of_public_key(owner)
        except (ValueError, TypeError):
            raise IntegrityError("record owner is not an RSA public key") from None
        if env.body.peer_id != owner_peer:
            raise IntegrityError("record names a peer id that is not its owner's")
    if env.body.kind in ARCHIVABLE_KINDS:
        check_statement(owner, env)
    if isinstance(env.body, ArchivedBody):
        open_archive(env)
    return env


def check_statement(owner: bytes, env: Envelope) -> None:
    """The writer's own signature over the envelope's content (what lets a seeder re-publish it)."""
    if env.sig is None or not verify_signature(owner, env.statement(), env.sig.encode("ascii")):
        raise IntegrityError(f"{env.body.kind} record's statement signature is not its owner's")


def open_archive(env: Envelope) -> tuple[bytes, Envelope]:
    """The original writer's key and record inside an archived copy, after checking that the writer signed
    it, that it is of a kind worth archiving and that it belongs under the key the copy is stored under."""
    body = env.body
    if not isinstance(body, ArchivedBody):
        raise IntegrityError("not an archived record")
    owner = body.owner.encode("ascii", errors="replace")
    inner = decode_envelope(body.record.encode())
    if isinstance(inner, ForeignMember) or inner.body.kind not in ARCHIVABLE_KINDS:
        raise IntegrityError("an archive may hold only a spec, done, checkpoint or attestation record")
    if inner.key != env.key:
        raise IntegrityError("archived record belongs under another key")
    check_statement(owner, inner)
    return owner, inner


PASSED_RECORDS = 65536  # record versions each validator remembers as passed (about 7 MB)


class PassedRecords:
    """Digests of the records that passed a validator, the least recently seen forgotten first.

    A record is its key, subkey, value and expiration: the same bytes pass the same checks again. The checks
    that read the clock (dated too far ahead, expiring too far ahead) can only turn a refusal into a pass as
    time goes on, never a pass into a refusal, so a pass may be remembered; a refusal never is."""

    def __init__(self, size: int = PASSED_RECORDS) -> None:
        self.size = size
        self._seen: OrderedDict[bytes, None] = OrderedDict()

    @staticmethod
    def digest(record: DHTRecord) -> bytes:
        subkey = b"-" if record.subkey is None else b"+" + record.subkey  # no subkey is not an empty one
        parts = (record.key, subkey, record.value, repr(float(record.expiration_time)).encode())
        h = hashlib.blake2b(digest_size=20)
        for part in parts:  # length-prefixed: no two records share an encoding
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.digest()

    def passed(self, digest: bytes) -> bool:
        if digest in self._seen:
            self._seen.move_to_end(digest)
            return True
        return False

    def add(self, digest: bytes) -> None:
        self._seen[digest] = None
        if len(self._seen) > self.size:
            self._seen.popitem(last=False)


class ParisRecordValidator(RecordValidatorBase):
    """Schema check for every paris record (runs after the signature check, which has a higher priority)."""

    def __init__(self, size: int = PASSED_RECORDS) -> None:
        self.passed = PassedRecords(size)

    def validate(self, record: DHTRecord) -> bool:
        digest = PassedRecords.digest(record)
        if self.passed.passed(digest):
            return True
        if not self._check(record):
            return False
        self.passed.add(digest)
        return True

    def _check(self, record: DHTRecord) -> bool:
        try:
            subkey = MSGPackSerializer.loads(record.subkey)
            value = MSGPackSerializer.loads(record.value)
            check_record(record.key, subkey, value, record.expiration_time)
        except IntegrityError as e:
            log.debug("refused DHT record: %s", e)
            return False
        except Exception as e:  # msgpack raises many types on random bytes; never let one reach the DHT
            log.debug("refused undecodable DHT record: %r", e)
            return False
        return True

    @property
    def priority(self) -> int:
        return 5  # below RSASignatureValidator (10): it strips the signature before we parse

    def merge_with(self, other: RecordValidatorBase) -> bool:
        return isinstance(other, ParisRecordValidator)


class RememberingSignatureValidator(RSASignatureValidator):
    """hivemind's owner-signature check, run once per record version."""

    def __init__(self, private_key=None, size: int = PASSED_RECORDS) -> None:
        super().__init__(private_key)
        self.passed = PassedRecords(size)

    def validate(self, record: DHTRecord) -> bool:
        digest = PassedRecords.digest(record)
        if self.passed.passed(digest):
            return True
        ok = super().validate(record)
        if ok:
            self.passed.add(digest)
        return ok


def make_validators(identity_private_key) -> list[RecordValidatorBase]:
    """The validator set every node must run (a node lacking it would hang on signed reads)."""
    return [RememberingSignatureValidator(identity_private_key), ParisRecordValidator()]
