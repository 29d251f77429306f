"""This daemon's link to its gossip worker process (swarm.gossip): started, restarted when it dies, told our
events, and turning the swarm's events into wake-ups (a seeder replicates, a waiting node claims, a verifier
checks a new checkpoint at once). Gossip is a courtesy: the DHT records are the truth, so every failure here is
logged and the node goes on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from node.options import DaemonOptions
from protocol.errors import ParisError
from protocol.swarm_gossip import CheckpointEvent, DoneEvent, GossipMessage, LeavingEvent
from swarm.dht import SwarmNode, tcp_maddr

log = logging.getLogger("node.daemon")


class GossipLink:
    def __init__(self, opts: DaemonOptions, home: Path, node: SwarmNode, run_id: str,
                 wakes: tuple[asyncio.Event, ...] = ()) -> None:
        self.opts, self.home, self.node, self.run_id, self.wakes = opts, home, node, run_id, wakes
        self.client = None  # swarm.gossip.GossipClient while the worker runs

    @property
    def maddrs(self) -> tuple[str, ...]:
        return tuple(self.client.maddrs) if self.client is not None else ()

    @property
    def ttl(self) -> float:
        return max(180.0, 6 * self.opts.period)

    async def start(self, served_bytes: int = 0) -> None:
        """Start the worker and announce it in our member record; off for this session if it cannot start."""
        if not self.opts.gossip:
            return
        from swarm.gossip import GossipClient, join_gossip

        o = self.opts
        announce = tcp_maddr(o.gossip_announce, o.gossip_port) if o.gossip_announce else None
        client = GossipClient(self.node.identity, self.run_id, listen=tcp_maddr(o.gossip_host, o.gossip_port),
                              on_message=self._on_message, key_file=self.home / "gossip.key", announce=announce)
        try:
            await client.start()
        except ParisError as e:
            log.warning("gossip is off for this session: %s", e)
            return
        self.client = client
        await join_gossip(self.node, client, role=o.role, ttl=self.ttl, served_bytes=served_bytes)

    async def refresh(self, served_bytes: int = 0) -> bool:
        """Restart a worker that died (True: it was restarted), or refresh our member record and meet
        newcomers' gossip processes."""
        from swarm.gossip import join_gossip

        if self.opts.gossip and (self.client is None or not self.client.alive):
            log.warning("the gossip process is not running; starting it again (same identity and port)")
            if self.client is not None:
                with contextlib.suppress(Exception):
                    await self.client.close()
                self.client = None
            await self.start(served_bytes)
            return True
        if self.client is not None:
            await join_gossip(self.node, self.client, role=self.opts.role, served_bytes=served_bytes, ttl=self.ttl)
        return False

    async def say(self, ev) -> None:
        """Publish one event, if the worker runs."""
        if self.client is None:
            return
        try:
            await self.client.publish(ev)
        except Exception as e:  # gossip is a courtesy: the DHT records are the truth
            log.debug("gossip publish failed: %s", e)

    async def stats(self) -> dict | None:
        return None if self.client is None else (await self.client.stats()).model_dump()

    async def close(self, cluster: int | None = None) -> None:
        """Say we leave (the cluster we held), then stop the worker."""
        if self.client is None:
            return
        with contextlib.suppress(Exception):
            await self.client.publish(LeavingEvent(run_id=self.run_id, cluster=cluster))
        with contextlib.suppress(Exception):
            await self.client.close()
        self.client = None

    def _on_message(self, msg: GossipMessage) -> None:
        if isinstance(msg.event, CheckpointEvent | DoneEvent | LeavingEvent):
            for wake in self.wakes:
                wake.set()
        log.debug("gossip from %s: %s", msg.sender, msg.event.type)
