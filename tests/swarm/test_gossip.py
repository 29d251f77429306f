"""Gossip without a network: signatures and sender keys, the admission gate (dedup, rate limit, drop counts),
the daemon↔worker frames, and random bytes into every decoder. The worker module itself (libp2p) is never
imported here: this process imports hivemind."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
import tempfile

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from protocol.errors import IntegrityError
from protocol.swarm_gossip import (
    MAX_GOSSIP_BYTES,
    GossipSettings,
    ProgressEvent,
    PublishCmd,
    decode_command,
    decode_reply,
    peer_id_from_public_der,
    sign_message,
    verify_message,
)
from swarm.gossip_gate import Gate

NOW = 1_800_000_000.0
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EV = ProgressEvent(run_id="r", cluster=2, step=5, target=10, loss=0.25, samples_per_s=3.0)


def test_peer_id_matches_hivemind_derivation():
    from swarm.identity import load_identity

    ident = load_identity(tempfile.mkdtemp())
    der = ident.private_key._private_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert peer_id_from_public_der(der) == ident.peer_id


def test_sign_verify_and_tampering():
    data = sign_message(KEY, EV, 1, NOW)
    msg = verify_message(data, NOW + 1)
    assert msg.event == EV and msg.seq == 1
    raw = json.loads(data)
    cases = {
        "bad_signature": {**raw, "event": {**raw["event"], "step": 6}},
        "bad_key": {**raw, "sender": verify_message(sign_message(OTHER, EV, 1, NOW), NOW).sender},
    }
    with pytest.raises(IntegrityError, match="bad_signature"):
        verify_message(json.dumps(cases["bad_signature"]).encode(), NOW)
    with pytest.raises(IntegrityError, match="bad_key"):
        verify_message(json.dumps(cases["bad_key"]).encode(), NOW)
    with pytest.raises(IntegrityError, match="stale"):
        verify_message(data, NOW + 3600)
    swapped = {**raw, "public_key": json.loads(sign_message(OTHER, EV, 1, NOW))["public_key"]}
    with pytest.raises(IntegrityError, match="bad_key"):
        verify_message(json.dumps(swapped).encode(), NOW)
    with pytest.raises(IntegrityError, match="oversized"):
        verify_message(data + b" " * MAX_GOSSIP_BYTES, NOW)


def test_gate_dedups_rate_limits_and_counts():
    gate = Gate(GossipSettings(sender_rate=10, sender_burst=5))
    msgs = [sign_message(KEY, EV, i, NOW) for i in range(8)]
    assert gate.check(msgs[0], NOW) is not None
    assert gate.check(msgs[0], NOW) is None and gate.dropped["duplicate"] == 1
    passed = sum(gate.check(m, NOW) is not None for m in msgs[1:])
    assert passed == 4 and gate.dropped["rate_limited"] == 3  # burst of 5 in all
    assert gate.check(sign_message(KEY, EV, 100, NOW + 0.15), NOW + 0.15) is not None  # refilled at 10/s
    assert gate.check(sign_message(OTHER, EV, 1, NOW), NOW) is not None  # other senders unaffected
    assert gate.check(b"garbage", NOW) is None and gate.dropped["malformed"] == 1
    assert gate.delivered == 7


def test_frames():
    cmd = decode_command(PublishCmd(data="x").model_dump_json())
    assert isinstance(cmd, PublishCmd)
    with pytest.raises(ValidationError):
        decode_command('{"op": "publish", "data": "x", "extra": 1}')
    with pytest.raises(ValueError):
        decode_command(b"{" + b" " * (4 * MAX_GOSSIP_BYTES) + b"}")
    reply = decode_reply('{"op": "stats", "peers": 1, "delivered": 2, "published": 3, "dropped": {"x": 1}}')
    assert reply.peers == 1


def test_worker_module_is_not_imported_here():
    assert "libp2p" not in sys.modules  # hivemind and libp2p cannot share a process (docs/design.md §6)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes_never_crash_gossip_decoders(data):
    gate = Gate(GossipSettings())
    assert gate.check(data, NOW) is None
    for decode in (decode_command, decode_reply):
        with contextlib.suppress(ValidationError, ValueError):
            decode(data)


signed = json.loads(sign_message(KEY, EV, 1, NOW))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["v", "sender", "public_key", "seq", "ts", "event", "signature"]),
                       st.none() | st.integers() | st.floats() | st.text(max_size=50)
                       | st.just(signed["event"]) | st.just(base64.b64encode(b"x" * 300).decode()), max_size=7))
def test_valid_looking_messages_never_crash(fields):
    data = json.dumps({**signed, **fields}).encode()
    with contextlib.suppress(IntegrityError):
        verify_message(data, NOW)
    Gate(GossipSettings()).check(data, NOW)
