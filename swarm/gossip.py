"""`GossipClient`: the daemon's handle on its gossip worker process. Starts `python -m swarm.gossip_worker`,
signs events with the node's key, publishes them, and delivers verified events from peers to a callback or
an async iterator. Gossip peers are found through the DHT member records (`join_gossip`), so a user only ever
gives hivemind initial peers. Gossip is ephemeral: DHT records remain the truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa
from hivemind.utils.timed_storage import get_dht_time
from pydantic import BaseModel, ValidationError

from protocol.errors import ParisError
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
    decode_reply,
    gossip_topic,
    sign_message,
)
from protocol.swarm_records import PROTOCOL_VERSION, MemberBody
from swarm.dht import SwarmNode
from swarm.identity import Identity

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


class GossipClient:
    """One gossip worker for one run. `start()`, then `publish(event)`; received events go to `on_message`
    (called in the event loop) and to `messages()` iterators. `close()` stops the worker (killing it if it
    does not stop within a few seconds)."""

    def __init__(self, identity: Identity, run_id: str, *, listen: str = "/ip4/127.0.0.1/tcp/0",
                 settings: GossipSettings | None = None,
                 on_message: Callable[[GossipMessage], None] | None = None, key_file: Path | None = None,
                 announce: str | None = None):
        self.identity, self.run_id, self.listen = identity, run_id, listen
        self.key_file = key_file  # the worker's identity seed: its peer id survives restarts
        self.announce = announce  # a multiaddr (without /p2p) others dial, instead of the listen address
        self.settings = settings or GossipSettings()
        self.on_message = on_message
        self.topic = gossip_topic(run_id)
        self.peer_id: str | None = None
        self.maddrs: tuple[str, ...] = ()
        self._proc: asyncio.subprocess.Process | None = None
        self._reader_task: asyncio.Task | None = None
        self._queues: list[asyncio.Queue[GossipMessage]] = []
        self._waiters: dict[str, asyncio.Queue] = {"stats": asyncio.Queue(), "connected": asyncio.Queue()}
        self._seq = time.time_ns()  # strictly increasing across restarts too
        self._key: rsa.RSAPrivateKey = identity.private_key._private_key

    async def start(self, timeout: float = 60.0) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "swarm.gossip_worker", "--topic", self.topic, "--listen", self.listen,
            "--settings", self.settings.model_dump_json(),
            *(["--key-file", str(self.key_file)] if self.key_file is not None else []), cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=MAX_FRAME_BYTES * 2,
        )
        ready = asyncio.get_running_loop().create_future()
        self._reader_task = asyncio.create_task(self._read(ready))
        try:
            reply = await asyncio.wait_for(ready, timeout)
        except (asyncio.TimeoutError, ParisError):
            await self.close()
            raise ParisError("the gossip worker did not start (see its stderr)") from None
        self.peer_id, self.maddrs = reply.peer_id, reply.maddrs
        if self.announce:
            self.maddrs = (f"{self.announce}/p2p/{reply.peer_id}",)

    @property
    def alive(self) -> bool:
        """Whether the worker process is running (the daemon restarts it when it is not)."""
        return self._proc is not None and self._proc.returncode is None

    async def _read(self, ready: asyncio.Future) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            while line := await self._proc.stdout.readline():
                try:
                    reply = decode_reply(line)
                except (ValidationError, ValueError):
                    log.warning("unparsable line from the gossip worker: %r", line[:200])
                    continue
                if isinstance(reply, ReadyReply) and not ready.done():
                    ready.set_result(reply)
                elif isinstance(reply, MessageReply):
                    self._deliver(reply.message)
                elif isinstance(reply, StatsReply):
                    self._waiters["stats"].put_nowait(reply)
                elif isinstance(reply, ConnectedReply):
                    self._waiters["connected"].put_nowait(reply)
                elif isinstance(reply, ErrorReply):
                    log.warning("gossip worker: %s", reply.detail)
        finally:
            if not ready.done():
                ready.set_exception(ParisError("gossip worker exited"))

    def _deliver(self, msg: GossipMessage) -> None:
        if msg.sender == self.identity.peer_id:
            return  # our own publication, echoed by the local subscription
        if self.on_message is not None:
            try:
                self.on_message(msg)
            except Exception:  # a faulty callback must not stop delivery
                log.exception("gossip callback failed")
        for q in self._queues:
            if q.qsize() < self.settings.queue_size:
                q.put_nowait(msg)

    async def messages(self) -> AsyncIterator[GossipMessage]:
        """Every verified message from now on (bounded buffer: a consumer that falls behind loses the oldest)."""
        q: asyncio.Queue[GossipMessage] = asyncio.Queue()
        self._queues.append(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._queues.remove(q)

    async def _send(self, frame: BaseModel) -> None:
        if self._proc is None or self._proc.stdin is None or self._proc.returncode is not None:
            raise ParisError("the gossip worker is not running")
        self._proc.stdin.write(frame.model_dump_json().encode() + b"\n")
        await self._proc.stdin.drain()

    async def publish(self, event: BaseModel) -> None:
        """Sign `event` with the node's key and publish it to the run's topic."""
        self._seq += 1
        data = sign_message(self._key, event, self._seq, time.time())
        await self._send(PublishCmd(data=data.decode()))

    async def connect(self, maddrs: list[str] | tuple[str, ...], timeout: float = 30.0) -> ConnectedReply:
        await self._send(ConnectCmd(maddrs=tuple(maddrs)[:64]))
        return await asyncio.wait_for(self._waiters["connected"].get(), timeout)

    async def stats(self, timeout: float = 10.0) -> StatsReply:
        await self._send(StatsCmd())
        return await asyncio.wait_for(self._waiters["stats"].get(), timeout)

    async def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.write(StopCmd().model_dump_json().encode() + b"\n")
                await proc.stdin.drain()
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task


async def join_gossip(node: SwarmNode, client: GossipClient, role: str = "auto", ttl: float = 120.0,
                      software: str = "paris-node", served_bytes: int = 0) -> ConnectedReply:
    """Publish our member record (with gossip addresses) in the DHT and connect to a random sample of the
    members' gossip addresses. Call it again periodically (before `ttl` runs out) to refresh and to meet
    newcomers (the member buckets due now are read again, swarm.members)."""
    now = get_dht_time()
    body = MemberBody(protocol=PROTOCOL_VERSION, software=software, peer_id=node.peer_id,
                      maddrs=tuple(node.visible_maddrs()[:16]), gossip_maddrs=client.maddrs[:16], role=role,
                      served_bytes=min(max(served_bytes, 0), 2**60), ts=now)
    await node.announce_member(client.run_id, body, ttl)
    found = await node.read_members(client.run_id)  # the buckets due now, the others as last read
    members = [r.body for r in found.records if isinstance(r.body, MemberBody) and r.body.peer_id != node.peer_id
               and r.body.gossip_maddrs]
    # a random sample of members, not the first in DHT order: every node dialling the same 64 made hot spots
    targets = [m for b in fanout(members, MAX_DIALS) for m in b.gossip_maddrs[:2]]
    if not targets:
        return ConnectedReply(ok=(), failed=())
    return await client.connect(targets)


MAX_DIALS = 32  # members a node dials per refresh (two addresses each: the worker takes at most 64)


def fanout(items: list, k: int, rng: random.Random | None = None) -> list:
    """At most `k` of `items`, drawn uniformly at random (all of them when there are no more): spreads
    every node's dials and pings over the swarm instead of the same first few."""
    return list(items) if len(items) <= k else (rng or random).sample(list(items), k)
