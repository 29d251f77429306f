"""DHT record schemas of the swarm: what every key holds, how a value is encoded, and how it is checked.

Every value in the DHT is an `Envelope` (protocol version + the exact key it was written under + a typed
body), encoded as canonical JSON. Binding the key into the value lets a validator that only sees the key's
hash (as hivemind's validators do) check that a claim was not replayed under a progress key, and so on.
Ownership is not here: the subkey carries the owner's RSA key and hivemind's RSASignatureValidator checks
the signature.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from enum import Enum
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from protocol.canonical import canonical_json, sha256_hex
from protocol.data import Frozen
from protocol.errors import IntegrityError, ParisError

PROTOCOL_VERSION = 2  # 2: archivable records carry their writer's statement signature (`Envelope.sig`)
MAX_RECORD_BYTES = 4 * 1024
MAX_FUTURE_S = 300.0  # a record dated further ahead of the reader's clock is refused (a lie, or a clock far off)
MAX_ARCHIVE_BYTES = 12 * 1024  # an archive embeds one record (≤ MAX_RECORD_BYTES) and its writer's key
MAX_RECORD_TTL = 30 * 24 * 3600.0
EPOCH_STEPS = 16_384  # a sharded key holds one slot's records of one step range (swarm.layout)
MEMBER_BUCKETS = 64  # member records spread over this many keys by a hash of the peer id (swarm.layout)
MAX_CERT_ATTESTATIONS = 8  # a quorum certificate embeds at most this many attestations
MAX_CERTIFICATE_BYTES = 24 * 1024  # a certificate embeds its checkpoint record and its attestations

RUN_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}"
CID_PATTERN = r"b[a-z2-7]{20,120}"
_PEER_ID = r"^[1-9A-HJ-NP-Za-km-z]{20,80}$"  # base58btc libp2p peer id
_MADDR = r"^/[A-Za-z0-9/._:%-]{1,200}$"

Maddr = Annotated[str, Field(pattern=_MADDR)]
PeerIdStr = Annotated[str, Field(pattern=_PEER_ID)]
Cid = Annotated[str, Field(pattern=rf"^{CID_PATTERN}$")]
Timestamp = Annotated[float, Field(ge=0, le=1e11, allow_inf_nan=False)]
Cluster = Annotated[int, Field(ge=0, lt=1024)]
RunId = Annotated[str, Field(pattern=rf"^{RUN_ID_PATTERN}$")]


class ClaimState(str, Enum):
    """The states a lease record can announce. FREE is never written: it is the absence of a live claim."""

    JOINING = "joining"
    TRAINING = "training"
    DONE = "done"
    OFFLINE = "offline"


class ClusterState(str, Enum):
    """What a reader concludes about a cluster from all records (see swarm.claim_logic.cluster_states)."""

    FREE = "free"
    JOINING = "joining"
    TRAINING = "training"
    VERIFYING = "verifying"  # a checkpoint at the target awaits the attestations that would accept it
    STALLED = "stalled"  # its owner published no progress within the grace window: claimable
    DONE = "done"  # an accepted checkpoint at or beyond the target exists
    OFFLINE = "offline"


class MemberBody(Frozen):
    """`paris/{run}/members`: who is in the swarm, how to reach its gossip process, what it speaks."""

    kind: Literal["member"] = "member"
    protocol: int = Field(ge=1)
    software: str = Field(max_length=64)
    peer_id: PeerIdStr
    maddrs: tuple[Maddr, ...] = Field(default=(), max_length=16)
    gossip_maddrs: tuple[Maddr, ...] = Field(default=(), max_length=16)
    role: Literal["auto", "expert", "router", "seeder", "verifier", "observer"] = "auto"
    served_bytes: int = Field(default=0, ge=0, le=2**60)  # content it says it sent to peers (a claim)
    ts: Timestamp


class RunPointerBody(Frozen):
    """`paris/{run}/spec`: where the run spec's bytes can be fetched (its CID in the content store)."""

    kind: Literal["spec"] = "spec"
    run_id: str = Field(pattern=rf"^{RUN_ID_PATTERN}$")
    spec_cid: Cid
    num_clusters: int = Field(ge=1, le=1024)
    ts: Timestamp


MAX_LANES = 16  # devices one identity may train on at once (`join --gpu 0,1,…`): lanes 0..15
Lane = Annotated[int, Field(ge=1, lt=MAX_LANES)]


def claimant(peer_id: str, lane: int | None) -> str:
    """Who holds a lease: the peer, or `peer/lane` for a node's second and further devices."""
    return f"{peer_id}/{lane}" if lane else peer_id


def claimant_peer(claimant_id: str) -> str:
    """The peer id of a claimant (`claimant`'s inverse, without the lane)."""
    return claimant_id.split("/", 1)[0]


class ClaimBody(Frozen):
    """`paris/{run}/claims`: one lease per owner and lane (the subkey: `owner` for lane 0, `owner#lane{n}` for a
    node's further devices), so a node holds at most one cluster per device, and at most MAX_LANES."""

    kind: Literal["claim"] = "claim"
    cluster: Cluster
    state: ClaimState
    peer_id: PeerIdStr
    since: Timestamp
    ts: Timestamp
    lane: Lane | None = None


class DoneBody(Frozen):
    """`paris/{run}/done`, subkey `owner#cluster`: a cluster reached its target. Long-lived, unlike leases."""

    kind: Literal["done"] = "done"
    cluster: Cluster
    step: int = Field(ge=0)
    checkpoint_cid: Cid | None = None
    ts: Timestamp


class ProgressBody(Frozen):
    """`paris/{run}/progress`: the owner's latest training progress (generic: no tensors here)."""

    kind: Literal["progress"] = "progress"
    cluster: Cluster | None = None  # None: the router
    step: int = Field(ge=0)
    target: int = Field(ge=0)
    loss: float | None = Field(default=None, allow_inf_nan=False)
    samples_per_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    checkpoint_cid: Cid | None = None
    started_at: Timestamp
    ts: Timestamp
    lane: Lane | None = None  # which of the owner's devices (None: its first)


Slot = Annotated[str, Field(pattern=r"^(expert-[0-9]{1,4}|router)$")]
ROUTER = "router"  # the router's slot; expert k's is expert_slot(k)


def expert_slot(cluster: int) -> str:
    """The slot that trains cluster `cluster`'s expert (the one place its name is built)."""
    return f"expert-{cluster}"


def slot_cluster(slot: str) -> int | None:
    """The cluster a slot trains (None for the router); a malformed slot name is a ParisError."""
    if slot == ROUTER:
        return None
    head, _, k = slot.partition("-")
    if head != "expert" or not k.isdigit():
        raise ParisError(f"{slot!r} is not a slot (expert-K or router)")
    return int(k)


def run_slots(num_clusters: int) -> list[str]:
    """Every slot of a run: its experts in cluster order, then the router."""
    return [expert_slot(k) for k in range(num_clusters)] + [ROUTER]


class CheckpointBody(Frozen):
    """`paris/{run}/checkpoints`: a published checkpoint of an expert or the router. A trainer's record has
    subkey `owner#cid` (one per checkpoint, so the lineage stays readable); a seeder's replica record has
    `owner#slot` (the one copy of the slot it holds now). Every field is the writer's claim: see
    swarm.acceptance for what makes a checkpoint count."""

    kind: Literal["checkpoint"] = "checkpoint"
    slot: Slot
    step: int = Field(ge=0)
    cid: Cid
    bytes: int = Field(ge=0)
    loss: float | None = Field(default=None, allow_inf_nan=False)  # training loss (EMA), informative only
    parent: Cid | None = None  # the checkpoint it was trained from; None: the step-0 initialisation
    val_loss: float | None = Field(default=None, allow_inf_nan=False)  # the trainer's validation loss
    replica: bool = False  # True: a seeder announcing a copy it holds, not the trainer announcing its work
    ts: Timestamp


class AttestationBody(Frozen):
    """`paris/{run}/attestations`, subkey `owner#cid`: a verifier's signed verdict on one checkpoint's content
    ("accept": it loads for its slot, is finite, its validation loss recomputes, a first checkpoint beats the
    initialisation, a replayed interval matched), with what it found inside (step, parent) and the loss it
    recomputed. Records that misstate the checkpoint are contradicted by those facts (swarm.acceptance). It
    ranks what consumers download first; it never replaces their own check."""

    kind: Literal["attestation"] = "attestation"
    slot: Slot
    cid: Cid
    step: int = Field(ge=0)
    parent: Cid | None = None
    val_loss: float | None = Field(default=None, allow_inf_nan=False)
    verdict: Literal["accept", "reject"]
    reason: str = Field(default="", max_length=300)
    replayed: bool = False  # the interval from the parent was re-trained and compared
    replay_exact: bool | None = None  # bit for bit (CPU), or only within the replay tolerance
    ts: Timestamp


class ArchivedBody(Frozen):
    """A copy of another writer's long-lived record, re-published by a seeder under the same key (subkey
    `seeder#a<hash of the original owner and subkey>`) so that it outlives the original's DHT expiration.

    `record` is the original envelope as canonical JSON, with the writer's statement signature (`sig`) over it:
    readers check that signature against `owner`, so a seeder can keep a record alive or withhold it, never
    change it. Only ARCHIVABLE_KINDS can be archived (facts, not leases)."""

    kind: Literal["archived"] = "archived"
    owner: str = Field(min_length=16, max_length=1200)  # the original writer's OpenSSH RSA public key
    record: str = Field(min_length=2, max_length=MAX_RECORD_BYTES)
    ts: Timestamp


class ProviderBody(Frozen):
    """`paris/cas/{cid}`: the owner can serve this CID from the listed peer."""

    kind: Literal["provider"] = "provider"
    cid: Cid
    peer_id: PeerIdStr
    maddrs: tuple[Maddr, ...] = Field(default=(), max_length=16)
    bytes: int = Field(ge=0)
    ts: Timestamp


class CertificateBody(Frozen):
    """`paris/{run}/heads/{slot}`: a quorum certificate, the compact summary that lets superseded records
    expire: the accepted head of a slot (its trainer's checkpoint record) and the attestations that accepted
    it, each with its writer's statement signature. Its writer vouches for nothing: a reader re-checks every
    embedded record (swarm.layout.check_certificate), so a certificate is exactly as strong as its quorum."""

    kind: Literal["certificate"] = "certificate"
    slot: Slot
    cid: Cid
    step: int = Field(ge=0)
    checkpoint: ArchivedBody
    attestations: tuple[ArchivedBody, ...] = Field(min_length=1, max_length=MAX_CERT_ATTESTATIONS)
    ts: Timestamp


Body = Annotated[
    MemberBody | RunPointerBody | ClaimBody | DoneBody | ProgressBody | CheckpointBody | AttestationBody
    | ProviderBody | ArchivedBody | CertificateBody,
    Field(discriminator="kind"),
]

ARCHIVABLE_KINDS = frozenset({"spec", "done", "checkpoint", "attestation"})  # facts worth keeping past a TTL


class Envelope(Frozen):
    """`sig`: the writer's RSA signature (base64) of the envelope without it, on ARCHIVABLE_KINDS only. hivemind
    already signs every record with its expiration; this second signature is over the content alone, so that
    the record stays verifiable when a seeder re-publishes it with a new expiration (ArchivedBody)."""

    v: int
    key: str = Field(max_length=256)
    body: Body
    sig: str | None = Field(default=None, max_length=1024, pattern=r"^[A-Za-z0-9+/=]+$")

    def statement(self) -> bytes:
        """The bytes `sig` signs: the canonical envelope without its signature."""
        return canonical_json(self, exclude={"sig"})


class _LooseHeader(BaseModel):
    """What is read from a value of any protocol version, before the body is trusted."""

    model_config = ConfigDict(extra="ignore")
    v: int
    key: str = Field(max_length=256)


class _LooseMember(BaseModel):
    """A member record of another protocol version: only what a mismatch message needs."""

    model_config = ConfigDict(extra="ignore")
    kind: Literal["member"]
    protocol: int
    software: str = Field(max_length=64)
    peer_id: str = Field(max_length=80)


class ForeignMember(Frozen):
    """A peer that speaks another protocol version; readers turn it into a clear error message."""

    protocol: int
    software: str
    peer_id: str


# ---- keys -------------------------------------------------------------------------------------------------

_KEY_KINDS = {"members": "member", "spec": "spec", "claims": "claim", "done": "done", "progress": "progress",
              "checkpoints": "checkpoint", "attestations": "attestation", "heads": "certificate"}
SHARD_PATTERN = r"(expert-[0-9]{1,4}|router|b[0-9]{1,4})(?:/e([0-9]{1,7}))?"
_RUN_KEY_RE = re.compile(rf"^paris/({RUN_ID_PATTERN})/([a-z]+)(?:/{SHARD_PATTERN})?$")
_CAS_KEY_RE = re.compile(rf"^paris/cas/({CID_PATTERN})$")
RUNS_KEY = "paris/runs"  # every run's spec pointer, one per creator: how a joiner with no --run finds one


RunKeyName = Literal["members", "spec", "claims", "done", "progress", "checkpoints", "attestations"]


def run_key(run_id: str, what: RunKeyName) -> str:
    if not re.fullmatch(RUN_ID_PATTERN, run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    return f"paris/{run_id}/{what}"


def provider_key(cid: str) -> str:
    if not re.fullmatch(CID_PATTERN, cid):
        raise ValueError(f"invalid CID {cid!r}")
    return f"paris/cas/{cid}"


def key_kinds(key: str) -> frozenset[str]:
    """The body kinds a key may hold (its own kind, and archived copies where that kind is archivable)."""
    kind = key_kind(key)
    if kind is None:
        return frozenset()
    return frozenset({kind, "archived"}) if kind in ARCHIVABLE_KINDS else frozenset({kind})


def key_kind(key: str) -> str | None:
    """The body kind a key holds, or None if the key is not one of ours."""
    if key == RUNS_KEY:
        return "spec"
    if m := _CAS_KEY_RE.match(key):
        return "provider"
    if (m := _RUN_KEY_RE.match(key)) and m.group(1) != "cas":
        return _KEY_KINDS.get(m.group(2))
    return None


def subkey_suffix(body: Body) -> str:
    """The part after the owner in the subkey: records that one owner may hold several of get a slot."""
    if isinstance(body, DoneBody):
        return f"#{body.cluster}"
    if isinstance(body, ClaimBody | ProgressBody) and body.lane:
        return f"#lane{body.lane}"
    if isinstance(body, CheckpointBody):
        return f"#{body.slot}" if body.replica else f"#{body.cid}"
    if isinstance(body, AttestationBody):
        return f"#{body.cid}"
    if isinstance(body, ArchivedBody):
        return archive_suffix(body)
    return ""


def archive_suffix(body: ArchivedBody) -> str:
    """One archive per original record (owner + subkey) per seeder: a newer version of it replaces the older."""
    try:
        inner = Envelope.model_validate_json(body.record)
    except ValidationError:
        return "#a-invalid"  # never matches a stored subkey: decode_envelope refuses the record
    digest = sha256_hex(body.owner.encode() + b"\n" + subkey_suffix(inner.body).encode())
    return f"#a{digest[:32]}"


# ---- encoding ---------------------------------------------------------------------------------------------


def max_bytes(kind: str) -> int:
    return {"archived": MAX_ARCHIVE_BYTES, "certificate": MAX_CERTIFICATE_BYTES}.get(kind, MAX_RECORD_BYTES)


def member_bucket(peer_id: str) -> int:
    """Which of the MEMBER_BUCKETS keys holds a peer's member record: a hash of its id, so nobody chooses."""
    return int(sha256_hex(peer_id.encode())[:8], 16) % MEMBER_BUCKETS


def shard_problem(key: str, body: Body) -> str:
    """Why `body` does not belong in the shard its (sharded) key names ("" if it does, or the key is not
    sharded): a slot shard holds that slot's records only, an epoch shard the steps of that epoch only, so
    that a validator keeps every key within the bound that swarm.layout states."""
    m = _RUN_KEY_RE.match(key)
    if m is None or m.group(3) is None or isinstance(body, ArchivedBody):
        return ""
    shard, epoch = m.group(3), m.group(4)
    slot, step = getattr(body, "slot", None), getattr(body, "step", None)
    if shard.startswith("b"):
        if not isinstance(body, MemberBody) or epoch is not None:
            return f"a {body.kind} record cannot live in a member bucket"
        want = member_bucket(body.peer_id)
        return "" if int(shard[1:]) == want else f"member {body.peer_id} belongs in bucket b{want}, not {shard}"
    if slot != shard:
        return f"a record of {slot} cannot live in the shard of {shard}"
    if epoch is not None and (step is None or step // EPOCH_STEPS != int(epoch)):
        return f"step {step} is not in epoch {epoch} ({EPOCH_STEPS} steps each)"
    return ""


def encode_envelope(key: str, body: Body, sign: Callable[[bytes], bytes] | None = None) -> bytes:
    """The value stored under `key`; archivable bodies are signed with `sign` (the writer's key)."""
    env = Envelope(v=PROTOCOL_VERSION, key=key, body=body)
    if body.kind in ARCHIVABLE_KINDS:
        if sign is None:
            raise ValueError(f"a {body.kind} record must carry its writer's statement signature")
        env = env.model_copy(update={"sig": sign(env.statement()).decode("ascii")})
    data = canonical_json(env)
    if len(data) > max_bytes(body.kind):
        raise ValueError(f"record for {key} is {len(data)} bytes, over the {max_bytes(body.kind)}-byte limit")
    return data


def decode_envelope(data: bytes, *, subkey_suffix_seen: str | None = None) -> Envelope | ForeignMember:
    """Parse and check one value. Raises IntegrityError with a one-line reason for anything we would refuse.

    A member record of another protocol version decodes to `ForeignMember` (so that the mismatch can be
    reported); any other record of another version is refused.
    """
    if not isinstance(data, bytes | bytearray):
        raise IntegrityError(f"record value is {type(data).__name__}, expected bytes")
    if len(data) > MAX_CERTIFICATE_BYTES:
        raise IntegrityError(f"record of {len(data)} bytes is over the {MAX_CERTIFICATE_BYTES}-byte limit")
    try:
        header = _LooseHeader.model_validate_json(data)
    except ValidationError as e:
        raise IntegrityError(f"malformed record: {_first_error(e)}") from None
    expected_kind = key_kind(header.key)
    if expected_kind is None:
        raise IntegrityError(f"record under unknown key {header.key!r}")
    if header.v != PROTOCOL_VERSION:
        if expected_kind != "member":
            raise IntegrityError(f"record of protocol v{header.v} (this node speaks v{PROTOCOL_VERSION})")
        try:
            loose = _LooseMember.model_validate(json.loads(data)["body"])
        except (ValidationError, ValueError, KeyError, TypeError) as e:
            raise IntegrityError(f"malformed foreign member record: {e}") from None
        return ForeignMember(protocol=loose.protocol, software=loose.software, peer_id=loose.peer_id)
    try:
        env = Envelope.model_validate_json(data)
    except ValidationError as e:
        raise IntegrityError(f"malformed record: {_first_error(e)}") from None
    if env.body.kind not in key_kinds(env.key):
        raise IntegrityError(f"a {env.body.kind} record cannot live under {env.key!r}")
    if len(data) > max_bytes(env.body.kind):
        raise IntegrityError(f"record of {len(data)} bytes is over the {max_bytes(env.body.kind)}-byte limit")
    if (env.body.kind in ARCHIVABLE_KINDS) != (env.sig is not None):
        raise IntegrityError(f"a {env.body.kind} record {'needs' if env.sig is None else 'cannot carry'} "
                             "a statement signature")
    if why := shard_problem(env.key, env.body):
        raise IntegrityError(why)
    if isinstance(env.body, ProviderBody) and not env.key.endswith("/" + env.body.cid):
        raise IntegrityError("provider record names another CID than its key")
    if subkey_suffix_seen is not None and subkey_suffix_seen != subkey_suffix(env.body):
        raise IntegrityError("record subkey does not match its body")
    return env


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    return f"{err['msg']} at {'.'.join(str(p) for p in err['loc'])}"
