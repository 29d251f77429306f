"""Gossip events and the frames between the daemon and its gossip worker process.

A gossip message carries a typed event, the sender's peer id and RSA public key, a sequence number and an
RSA-PSS signature by the node's own key (the same key as its DHT records and hivemind peer id), so a receiver
checks who sent it without asking the DHT. This module must not import hivemind or libp2p: both the daemon
(hivemind) and the gossip worker (libp2p) import it, and the two cannot share a process (docs/design.md §6).
"""

from __future__ import annotations

import base64
import hashlib
from typing import Annotated, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from multiformats import multibase, multihash
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from protocol.canonical import canonical_json
from protocol.data import Frozen
from protocol.errors import IntegrityError
from protocol.swarm_records import PROTOCOL_VERSION, Cid, Cluster, RunId, Timestamp

MAX_GOSSIP_BYTES = 8 * 1024
MAX_CLOCK_SKEW = 60.0
MAX_AGE = 300.0

_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)


def gossip_topic(run_id: str) -> str:
    return f"paris/{run_id}/events/v{PROTOCOL_VERSION}"


# ---- events -----------------------------------------------------------------------------------------------


class ClaimedEvent(Frozen):
    type: Literal["claimed"] = "claimed"
    run_id: RunId
    cluster: Cluster


class ProgressEvent(Frozen):
    type: Literal["progress"] = "progress"
    run_id: RunId
    cluster: Cluster | None = None  # None: the router
    step: int = Field(ge=0)
    target: int = Field(ge=0)
    loss: float | None = Field(default=None, allow_inf_nan=False)
    samples_per_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)


class CheckpointEvent(Frozen):
    type: Literal["checkpoint"] = "checkpoint"
    run_id: RunId
    slot: str = Field(pattern=r"^(expert-[0-9]{1,4}|router)$")
    step: int = Field(ge=0)
    cid: Cid


class DoneEvent(Frozen):
    type: Literal["done"] = "done"
    run_id: RunId
    cluster: Cluster
    step: int = Field(ge=0)
    checkpoint_cid: Cid | None = None


class LeavingEvent(Frozen):
    type: Literal["leaving"] = "leaving"
    run_id: RunId
    cluster: Cluster | None = None


Event = Annotated[ClaimedEvent | ProgressEvent | CheckpointEvent | DoneEvent | LeavingEvent,
                  Field(discriminator="type")]


class GossipMessage(Frozen):
    v: Literal[2] = PROTOCOL_VERSION  # the swarm protocol version (protocol.swarm_records)
    sender: str = Field(pattern=r"^[1-9A-HJ-NP-Za-km-z]{20,80}$")
    public_key: str = Field(max_length=1024)  # base64 DER SubjectPublicKeyInfo (RSA)
    seq: int = Field(ge=0, lt=2**63)
    ts: Timestamp
    event: Event
    signature: str = Field(default="", max_length=1024)

    def signing_bytes(self) -> bytes:
        return canonical_json(self, exclude={"signature"})


# ---- keys and signatures ----------------------------------------------------------------------------------


def peer_id_from_public_der(der: bytes) -> str:
    """The libp2p peer id of an RSA key (protobuf PublicKey{RSA, der} → sha2-256 multihash → base58btc), as
    hivemind's p2pd derives it. Written out here so that processes without hivemind can check it."""
    encoded = b"\x08\x00\x12" + _varint(len(der)) + der
    return multibase.encode(multihash.digest(encoded, "sha2-256"), "base58btc")[1:]


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def sign_message(key: rsa.RSAPrivateKey, event: BaseModel, seq: int, ts: float) -> bytes:
    """A complete, signed, encoded gossip message from this node."""
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    unsigned = GossipMessage(sender=peer_id_from_public_der(der), public_key=base64.b64encode(der).decode(),
                             seq=seq, ts=ts, event=event)
    sig = key.sign(unsigned.signing_bytes(), _PSS, hashes.SHA256())
    data = canonical_json(unsigned.model_copy(update={"signature": base64.b64encode(sig).decode()}))
    if len(data) > MAX_GOSSIP_BYTES:
        raise ValueError(f"gossip message of {len(data)} bytes is over the {MAX_GOSSIP_BYTES}-byte limit")
    return data


def verify_message(data: bytes, now: float) -> GossipMessage:
    """Parse and authenticate one received message; IntegrityError with the reason (a drop-counter key)."""
    if len(data) > MAX_GOSSIP_BYTES:
        raise IntegrityError("oversized")
    try:
        msg = GossipMessage.model_validate_json(data)
    except ValidationError:
        raise IntegrityError("malformed") from None
    if not now - MAX_AGE <= msg.ts <= now + MAX_CLOCK_SKEW:
        raise IntegrityError("stale")
    try:
        der = base64.b64decode(msg.public_key, validate=True)
        key = serialization.load_der_public_key(der)
        sig = base64.b64decode(msg.signature, validate=True)
    except (ValueError, TypeError):
        raise IntegrityError("bad_key") from None
    if not isinstance(key, rsa.RSAPublicKey) or peer_id_from_public_der(der) != msg.sender:
        raise IntegrityError("bad_key")
    try:
        key.verify(sig, msg.signing_bytes(), _PSS, hashes.SHA256())
    except InvalidSignature:
        raise IntegrityError("bad_signature") from None
    return msg


def message_id(data: bytes) -> bytes:
    """Content-addressed gossipsub message id: the same message relayed twice is seen once."""
    return hashlib.sha256(data).digest()[:20]


# ---- daemon ↔ worker frames (JSON lines) -------------------------------------------------------------------


class GossipSettings(Frozen):
    """Gossipsub tuned for our traffic (docs/design.md §6: the defaults silently drop it)."""

    degree: int = Field(default=6, ge=1, le=32)
    degree_low: int = Field(default=4, ge=1, le=32)
    degree_high: int = Field(default=12, ge=1, le=64)
    heartbeat_interval: float = Field(default=1.0, gt=0, le=60)
    queue_size: int = Field(default=1024, ge=32, le=1 << 16)
    router_msgs_per_topic_per_s: float = Field(default=500.0, gt=0)
    sender_rate: float = Field(default=20.0, gt=0)  # per sender, messages/s sustained (ours: ~1/s)
    sender_burst: float = Field(default=100.0, gt=0)
    dedup_window: int = Field(default=8192, ge=16)


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PublishCmd(_Frame):
    op: Literal["publish"] = "publish"
    data: str = Field(max_length=2 * MAX_GOSSIP_BYTES)  # the encoded, signed message (UTF-8 JSON)


class ConnectCmd(_Frame):
    op: Literal["connect"] = "connect"
    maddrs: tuple[str, ...] = Field(max_length=64)


class StatsCmd(_Frame):
    op: Literal["stats"] = "stats"


class StopCmd(_Frame):
    op: Literal["stop"] = "stop"


Command = Annotated[PublishCmd | ConnectCmd | StatsCmd | StopCmd, Field(discriminator="op")]


class ReadyReply(_Frame):
    op: Literal["ready"] = "ready"
    peer_id: str
    maddrs: tuple[str, ...]


class MessageReply(_Frame):
    op: Literal["message"] = "message"
    message: GossipMessage
    received_at: float


class StatsReply(_Frame):
    op: Literal["stats"] = "stats"
    peers: int
    delivered: int
    published: int
    dropped: dict[str, int]


class ConnectedReply(_Frame):
    op: Literal["connected"] = "connected"
    ok: tuple[str, ...]
    failed: tuple[str, ...]


class ErrorReply(_Frame):
    op: Literal["error"] = "error"
    detail: str


Reply = Annotated[ReadyReply | MessageReply | StatsReply | ConnectedReply | ErrorReply, Field(discriminator="op")]


_COMMANDS: TypeAdapter[Command] = TypeAdapter(Command)
_REPLIES: TypeAdapter[Reply] = TypeAdapter(Reply)
MAX_FRAME_BYTES = 4 * MAX_GOSSIP_BYTES


def decode_command(line: bytes | str) -> Command:
    """One JSON line from the daemon; pydantic.ValidationError or ValueError if it is not a valid command."""
    return _COMMANDS.validate_json(_frame(line))


def decode_reply(line: bytes | str) -> Reply:
    """One JSON line from the worker; pydantic.ValidationError or ValueError if it is not a valid reply."""
    return _REPLIES.validate_json(_frame(line))


def _frame(line: bytes | str) -> bytes:
    raw = line.encode() if isinstance(line, str) else line
    if len(raw) > MAX_FRAME_BYTES:
        raise ValueError("frame too long")
    return raw
