"""The gossip worker: py-libp2p gossipsub in a process of its own (libp2p and hivemind cannot share a
process, docs/design.md §6), driven by the daemon over JSON lines on stdin/stdout (protocol.swarm_gossip frames).

It receives messages that are already signed by the daemon and publishes them; it checks every message it
receives (size, schema, signature, sender key, freshness), drops duplicates and senders over their rate, and
hands only valid ones to the daemon. Nothing a peer sends can crash it: bad input is dropped and counted.

    python -m swarm.gossip_worker --topic TOPIC [--listen MADDR] [--settings JSON] [--key-file PATH]

Never import this module (or libp2p) from a process that imports hivemind.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import time

import multiaddr
import trio
from libp2p import new_host
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub import pubsub as pubsub_module
from libp2p.pubsub.gossipsub import PROTOCOL_ID, PROTOCOL_ID_V11, GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from pydantic import ValidationError

from protocol.swarm_gossip import (
    MAX_FRAME_BYTES,
    ConnectCmd,
    ConnectedReply,
    ErrorReply,
    GossipMessage,
    GossipSettings,
    MessageReply,
    PublishCmd,
    ReadyReply,
    StatsCmd,
    StatsReply,
    StopCmd,
    decode_command,
    message_id,
)
from swarm.gossip_gate import Gate

log = logging.getLogger("swarm.gossip_worker")


def emit(frame) -> None:
    sys.stdout.write(frame.model_dump_json() + "\n")
    sys.stdout.flush()


def gossip_key(path: str | None):
    """The worker's libp2p key pair: from the 32-byte seed in `path` (created, mode 0600, if missing), so
    that its peer id and its announced address survive restarts; a fresh one without a path."""
    if path is None:
        return create_new_key_pair()
    try:
        seed = open(path, "rb").read()  # noqa: SIM115 (short read)
    except FileNotFoundError:
        seed = os.urandom(32)
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(seed)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    if len(seed) != 32:
        raise SystemExit(f"gossip key {path} is damaged ({len(seed)} bytes, expected 32): remove it")
    return create_new_key_pair(seed)


async def run(topic: str, listen: str, settings: GossipSettings, key_file: str | None = None) -> None:
    pubsub_module.SUBSCRIPTION_CHANNEL_SIZE = settings.queue_size  # default 32 drops bursts
    host = new_host(key_pair=gossip_key(key_file), listen_addrs=[multiaddr.Multiaddr(listen)],
                    enable_mDNS=False, enable_upnp=False)
    router = GossipSub(
        protocols=[PROTOCOL_ID_V11, PROTOCOL_ID], degree=settings.degree, degree_low=settings.degree_low,
        degree_high=settings.degree_high, heartbeat_interval=settings.heartbeat_interval,
        heartbeat_initial_delay=0.1, spam_protection_enabled=True,
        max_messages_per_topic_per_second=settings.router_msgs_per_topic_per_s,
        eclipse_protection_enabled=False,  # every peer is on 127.0.0.1 in tests and small swarms
    )
    # RPCs may batch many messages, so the RPC cap stays at the library's 1 MiB; each message is capped below
    pubsub = Pubsub(host, router, msg_id_constructor=lambda m: message_id(m.data))
    gate = Gate(settings)
    published = 0

    def relay_validator(_peer, msg) -> bool:
        """Authenticate, dedup and rate-limit before gossipsub delivers or forwards: an invalid message or a
        flood stops at the first honest hop instead of crossing the swarm."""
        try:
            return gate.check(msg.data, time.time()) is not None
        except Exception:  # whatever a hostile peer manages to send, the worker survives it
            gate.dropped["malformed"] += 1
            return False

    pubsub.set_topic_validator(topic, relay_validator, False)
    async with host.run(listen_addrs=[multiaddr.Multiaddr(listen)]), background_trio_service(pubsub), \
            background_trio_service(router):
        await pubsub.wait_until_ready()
        sub = await pubsub.subscribe(topic)
        me = host.get_id().to_string()
        maddrs = tuple(f"{a}/p2p/{me}" if "/p2p/" not in str(a) else str(a) for a in host.get_addrs())
        emit(ReadyReply(peer_id=me, maddrs=maddrs))

        async def receive() -> None:
            while True:
                msg = await sub.get()  # only messages that passed relay_validator
                try:
                    checked = GossipMessage.model_validate_json(msg.data)
                except ValidationError:
                    continue
                emit(MessageReply(message=checked, received_at=time.time()))

        async def connect(maddrs: tuple[str, ...]) -> None:
            ok, failed = [], []
            for m in maddrs:
                try:
                    info = info_from_p2p_addr(multiaddr.Multiaddr(m))
                    if info.peer_id == host.get_id():
                        continue
                    with trio.fail_after(10):
                        await host.connect(info)
                    ok.append(m)
                except Exception as e:  # unreachable or malformed address: report, keep going
                    log.debug("connect to %s failed: %r", m, e)
                    failed.append(m)
            emit(ConnectedReply(ok=tuple(ok), failed=tuple(failed)))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
            buf = b""
            while True:
                data = await stdin.receive_some(65536)
                if not data:
                    break
                buf += data
                if len(buf) > MAX_FRAME_BYTES and b"\n" not in buf:
                    emit(ErrorReply(detail="frame too long"))
                    buf = b""
                    continue
                *lines, buf = buf.split(b"\n")
                stop = False
                for line in lines:
                    if not line.strip():
                        continue
                    try:
                        cmd = decode_command(line)
                    except (ValidationError, ValueError) as e:
                        emit(ErrorReply(detail=f"bad command: {str(e)[:200]}"))
                        continue
                    if isinstance(cmd, PublishCmd):
                        try:
                            await pubsub.publish(topic, cmd.data.encode())
                            published += 1
                        except Exception as e:  # a publish failure is reported, never fatal
                            emit(ErrorReply(detail=f"publish failed: {e!r}"))
                    elif isinstance(cmd, ConnectCmd):
                        nursery.start_soon(connect, cmd.maddrs)
                    elif isinstance(cmd, StatsCmd):
                        emit(StatsReply(peers=len(host.get_connected_peers()), delivered=gate.delivered,
                                        published=published, dropped=dict(gate.dropped)))
                    elif isinstance(cmd, StopCmd):
                        stop = True
                if stop:
                    break
            nursery.cancel_scope.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description="paris-node gossip worker (started by the daemon)")
    ap.add_argument("--topic", required=True)
    ap.add_argument("--listen", default="/ip4/127.0.0.1/tcp/0")
    ap.add_argument("--key-file", default=None, help="seed of the worker's identity (created if missing)")
    ap.add_argument("--settings", default="{}")
    args = ap.parse_args()
    # a terminal Ctrl-C reaches the whole foreground group; the daemon stops us itself (StopCmd or EOF) after
    # it has announced that it is leaving
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    settings = GossipSettings.model_validate_json(args.settings)
    with contextlib.suppress(KeyboardInterrupt):
        trio.run(run, args.topic, args.listen, settings, args.key_file)


if __name__ == "__main__":
    main()
