"""The daemon's background loops, each given what it uses: progress publication while training, the member
record and gossip worker, reconnection after a partition, re-announcing our records and the archive, the run
pointer, gossip counters for the metrics, and verification beside every role."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import numpy as np
from hivemind.utils.timed_storage import get_dht_time

from node.context import NodeContext
from node.driver import TrainingDriver
from node.gossip_link import GossipLink
from node.keeper import OwnRecords, RunPointer
from node.lane import Lane
from node.logs import event
from node.members import MemberBook
from node.role_seeder import Seeder
from node.role_verifier import Verifier
from protocol.errors import ParisError
from protocol.swarm_gossip import ProgressEvent
from protocol.swarm_records import ProgressBody, slot_cluster
from swarm.dht import SwarmNode
from swarm.state import publish_progress

log = logging.getLogger("node.daemon")


async def progress_loop(ctx: NodeContext, lanes: list[Lane], say) -> None:
    """While training: each lane's progress record in the DHT and a gossip event, every period."""
    last_log = 0.0
    while True:
        await asyncio.sleep(ctx.period)
        loud = time.monotonic() - last_log >= 30
        for lane in lanes:
            driver, slot = lane.driver, lane.current_slot
            if driver is None or driver.latest is None or slot is None:
                continue
            await publish_lane_progress(ctx, lane.index, driver, slot, say, loud)
        if loud:
            last_log = time.monotonic()


async def publish_lane_progress(ctx: NodeContext, lane: int, driver: TrainingDriver, slot: str, say,
                                loud: bool) -> None:
    p = driver.latest
    assert p is not None
    run_id, cluster = ctx.spec.run_id, slot_cluster(slot)
    cid = ctx.publisher.published.get(slot, (None, 0))[0]
    loss = None if p.loss_ema is None or not np.isfinite(p.loss_ema) else float(p.loss_ema)
    sps = float(p.samples_per_s) if np.isfinite(p.samples_per_s) else None
    body = ProgressBody(cluster=cluster, step=p.step, target=driver.target, loss=loss, samples_per_s=sps,
                        checkpoint_cid=cid, started_at=driver.started, ts=get_dht_time(), lane=lane or None)
    try:
        await publish_progress(ctx.node, run_id, body, ttl=max(120.0, 4 * ctx.period))
        await say(ProgressEvent(run_id=run_id, cluster=cluster, step=p.step, target=driver.target, loss=loss,
                                samples_per_s=sps))
    except Exception:
        log.exception("progress publication failed; retrying next period")
    if loud:
        event(log, f"{slot} step {p.step}/{driver.target}", loss=None if loss is None else round(loss, 4),
              samples_per_s=None if sps is None else round(sps, 1))


async def member_loop(gossip: GossipLink, served_bytes, period: float, on_restart) -> None:
    """Refresh our member record and meet newcomers' gossip processes; restart a gossip worker that died."""
    while True:
        await asyncio.sleep(max(30.0, 3 * period))
        try:
            if await gossip.refresh(served_bytes()):
                on_restart()
        except Exception:
            log.exception("member refresh failed; retrying next period")


async def reconnect_loop(node: SwarmNode, book: MemberBook, initial_peers: tuple[str, ...], period: float) -> None:
    """Every period, ping the initial peers and known members that our DHT routing table lost (hivemind drops
    peers that stop answering and never bootstraps again): after a partition heals, or a network outage ends,
    both sides find each other within a period instead of staying split."""
    while True:
        await asyncio.sleep(min(max(period, 1.0), 30.0))
        try:
            back = await node.reconnect(book.dial_list(initial_peers), timeout=max(2.0, min(period, 10.0)))
            if back:
                event(log, "reconnected to peers the DHT had lost", peers=len(back))
        except Exception:
            log.debug("reconnect round failed", exc_info=True)


async def keep_loop(node: SwarmNode, keeper: OwnRecords, seeder: Seeder) -> None:
    """Re-announce our own checkpoint records and attestations (node.keeper), and the archived copies of the
    run's outcome this node keeps (node.role_seeder), before their TTL runs out."""
    while True:
        await asyncio.sleep(min(max(node.record_ttl / 6, 1.0), 300.0))
        try:
            await keeper.refresh()
            await seeder.keep()
        except Exception:
            log.exception("re-announcing our records or the archive failed; retrying")


async def pointer_loop(ctx: NodeContext) -> None:
    """Keep the pointer to the run we created in the DHT (node.keeper.RunPointer): every 3 periods (at least
    30 s), or a third of the record TTL if that is sooner."""
    spec = ctx.spec
    pointer = RunPointer(ctx.node, spec.run_id, ctx.run.bundle_cid, spec.num_clusters,
                         every=max(30.0, 3 * ctx.period))
    while True:
        try:
            await pointer.refresh()
        except Exception:
            log.exception("re-announcing the run pointer failed; retrying")
        await asyncio.sleep(max(1.0, min(pointer.interval / 2, 30.0)))


async def gossip_stats_loop(gossip: GossipLink, metrics, period: float) -> None:
    """Keep the gossip worker's counters fresh for the metrics endpoint."""
    while True:
        with contextlib.suppress(Exception):  # a slow or restarting worker only delays the numbers
            metrics.gossip = await gossip.stats()
        await asyncio.sleep(max(5.0, period))


async def verify_loop(ctx: NodeContext, verifier: Verifier, wake: asyncio.Event) -> None:
    """Check the checkpoints assigned to this node every period (or as soon as gossip announces one), beside
    whatever the lanes do: no role keeps a node from verifying (two `auto` nodes that both train still check
    each other, and a node training the router still checks the experts it waits for)."""
    woken = False  # by an announcement: read anew rather than share a read that may predate it
    while not ctx.stopping.is_set():
        wake.clear()
        try:
            view = await ctx.read_view(fresh=woken)
            await ctx.unless_stopped(verifier.round(view))
        except (ParisError, OSError) as e:
            log.warning("verification round incomplete: %s", e)
        except Exception:  # what a peer serves must never end the node: log it and go on next period
            log.exception("verification round failed; retrying next period")
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(wake.wait(), ctx.period)
        woken = wake.is_set()
