"""`ClaimManager`: the thin I/O loop around `claim_logic`: read, announce, settle, re-read, renew, release.

A lease is the owner's `claims` subkey of one lane (one of its devices) with a DHT expiration of
`lease_periods` renewal periods; a node that dies simply stops renewing and its cluster becomes claimable once
the record expires. A node has one subkey per lane, so it can hold one cluster per device, never two on one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable

from hivemind.utils.timed_storage import get_dht_time

from protocol.swarm_records import ClaimBody, ClaimState, ClusterState, DoneBody, claimant, claimant_peer, run_key
from swarm.claim_logic import ClaimView, Snapshot, choose_cluster, cluster_states, displaced, winner
from swarm.clock import clock_verdict
from swarm.dht import SwarmNode

log = logging.getLogger(__name__)



class ClaimManager:
    """Claims one cluster of a run for this node and keeps the lease alive.

    `period`: renewal interval; the lease expires after `lease_periods` missed renewals. `settle`: how long to
    wait after announcing before deciding (must exceed DHT store latency). `max_delay`: random delay before
    each attempt, so simultaneous joiners do not move in lockstep. `on_lost(cluster)` is called if a renewal
    finds that another node owns our cluster (after a partition heals, say); the manager then owns nothing.
    `done_oracle()` says which clusters reached their target by the run's acceptance rule and who is making
    progress (a swarm.state.VerifiedState, or a bare cluster → ACCEPTED/PENDING/None dict); without one, DONE
    records are taken at their word and leases are kept by renewal alone (tests of the lease protocol).
    """

    def __init__(self, node: SwarmNode, run_id: str, num_clusters: int, *, period: float = 10.0,
                 lease_periods: float = 3.0, settle: float = 2.0, max_delay: float = 1.0,
                 on_lost: Callable[[int], None] | None = None, rng: random.Random | None = None,
                 done_oracle: Callable[[], Awaitable[object]] | None = None,
                 clock: Callable[[], float] = get_dht_time, max_skew: float | None = None, lane: int | None = None):
        self.node, self.run_id, self.num_clusters = node, run_id, num_clusters
        self.lane = lane or None  # which of this node's devices holds the lease (None: its first)
        self.period, self.lease = period, period * lease_periods
        self.settle, self.max_delay = settle, max_delay
        self.on_lost = on_lost
        self.done_oracle = done_oracle
        self.clock = clock  # injectable, to test a node whose clock is off
        self.max_skew = self.lease if max_skew is None else max_skew
        self.clock_problem = ""  # set while our clock is too far from our peers' to hold leases
        self._rng = rng or random.Random()
        self._key = run_key(run_id, "claims")
        self._done_key = run_key(run_id, "done")
        self._last_expiration = 0.0
        self._last_cluster: int | None = None
        self._since = 0.0
        self._renewer: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.cluster: int | None = None
        self.state: ClaimState | None = None

    @property
    def me(self) -> str:
        """This lease's claimant: our peer id, or `peer/lane` for a further device (protocol.swarm_records)."""
        return claimant(self.node.peer_id, self.lane)

    async def snapshot(self) -> Snapshot:
        if self.done_oracle is not None:
            from swarm.state import verified_snapshot

            claims, state = await asyncio.gather(self.node.get(self._key), self.done_oracle())
            return verified_snapshot(self.num_clusters, self._leases(claims), state)
        claims, done = await asyncio.gather(self.node.get(self._key), self.node.get(self._done_key))
        views = tuple(self._leases(claims))
        done_set = frozenset(r.body.cluster for r in done.records
                             if isinstance(r.body, DoneBody) and r.body.cluster < self.num_clusters)
        return Snapshot(self.num_clusters, views, done_set)

    def _leases(self, claims) -> list[ClaimView]:
        return [ClaimView(claimant(r.body.peer_id, r.body.lane), r.body.cluster, r.body.state, r.body.since,
                          ts=r.body.ts)
                for r in claims.records if isinstance(r.body, ClaimBody) and r.body.cluster < self.num_clusters]

    def check_clock(self, snap: Snapshot) -> str:
        """Estimate our clock offset from the other owners' leases (renewed every period) and say whether it is
        too large to hold a lease ("" if fine or unknown)."""
        freshest: dict[str, float] = {}  # one sample per peer, however many leases (lanes) it writes
        for c in snap.claims:  # TRAINING leases are renewed every period
            peer = claimant_peer(c.peer_id)
            # with the run's rule, only owners that made accepted progress: a lease costs nothing to write
            earned = self.done_oracle is None or c.progress > 0
            if peer != self.node.peer_id and c.ts > 0 and c.state == ClaimState.TRAINING and earned:
                freshest[peer] = max(freshest.get(peer, 0.0), c.ts)
        samples = [(ts, self.period) for ts in freshest.values()]
        problem = clock_verdict(self.clock(), samples, self.max_skew)
        if problem and problem != self.clock_problem:
            log.warning(problem)
        self.clock_problem = problem
        return problem

    async def cluster_states(self) -> list[ClusterState]:
        return cluster_states(await self.snapshot(), self.run_id)

    async def claim(self, *, wait: bool = True, timeout: float | None = None) -> int | None:
        """Take a cluster and start renewing it. Returns it, or None if every cluster is DONE, or (with
        `wait=False`) if every unfinished cluster has an owner, or when `timeout` runs out."""
        if self.cluster is not None:
            return self.cluster
        deadline = None if timeout is None else asyncio.get_running_loop().time() + timeout
        exclude: set[int] = set()
        while deadline is None or asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(self._rng.uniform(0, self.max_delay))
            snap = await self.snapshot()
            if len(snap.done | snap.awaiting) == self.num_clusters:
                return None
            if self.check_clock(snap):
                await self._withdraw()
                return None
            choice = choose_cluster(snap, self.me, self.run_id, exclude)
            if choice is None:
                await self._withdraw()
                if not wait and not _contested(snap):
                    return None
                exclude.clear()
                await asyncio.sleep(self.period if wait else self.settle)
                continue
            mine = next((c for c in snap.claims if c.peer_id == self.me and c.cluster == choice), None)
            restarted = mine is not None and mine.state == ClaimState.TRAINING
            state = ClaimState.TRAINING if restarted else ClaimState.JOINING
            self._since = mine.since if mine is not None else self.clock()
            await self._write(choice, state)
            await asyncio.sleep(self.settle)
            snap = await self.snapshot()
            if winner(snap, choice, self.run_id) == self.me and choice not in snap.done:
                async with self._lock:
                    self.cluster = choice
                    await self._write(choice, ClaimState.TRAINING)
                self._renewer = asyncio.create_task(self._renew_loop())
                log.info("claimed cluster %d of run %s", choice, self.run_id)
                return choice
            exclude.add(choice)  # lost this race: choose again among the others
        await self._withdraw()
        return None

    async def mark_done(self, step: int, checkpoint_cid: str | None = None) -> None:
        """Record that our cluster reached its target (a long-lived record) and show DONE in our lease."""
        cluster = self.cluster
        if cluster is None:
            raise RuntimeError("mark_done called without a claimed cluster")
        now = self.clock()
        body = DoneBody(cluster=cluster, step=step, checkpoint_cid=checkpoint_cid, ts=now)
        await self.node.put(self._done_key, body, now + self.node.record_ttl)
        async with self._lock:
            # the renewal may have let the lease go while the record was stored: the DONE record stands (the
            # target was reached; acceptance decides), and a lease this node no longer holds is not written
            if self.cluster == cluster:
                await self._write(cluster, ClaimState.DONE)

    async def release(self) -> None:
        """Clean exit: stop renewing and overwrite the lease with OFFLINE so the cluster is free at once."""
        await self._stop_renewing()
        async with self._lock:
            if self.cluster is not None:
                await self._write(self.cluster, ClaimState.OFFLINE, ttl=self.period)
            self.cluster = None

    async def close(self) -> None:
        await self.release()

    async def _withdraw(self) -> None:
        """Retract a losing JOINING announcement so that it stops counting as coverage."""
        if self.state == ClaimState.JOINING and self._last_cluster is not None:
            await self._write(self._last_cluster, ClaimState.OFFLINE, ttl=self.period)

    async def _write(self, cluster: int, state: ClaimState, ttl: float | None = None) -> bool:
        now = self.clock()
        # a DHT write wins only with a strictly later expiration than the record it replaces
        expiration = max(now + (self.lease if ttl is None else ttl), self._last_expiration + 1e-3)
        body = ClaimBody(cluster=cluster, state=state, peer_id=self.node.peer_id, since=self._since or now, ts=now,
                         lane=self.lane)
        self._last_expiration = expiration  # before the await: a cancelled put may still land
        ok = await self.node.put(self._key, body, expiration)
        self._last_cluster, self.state = cluster, state
        return ok

    async def _renew_loop(self) -> None:
        while self.cluster is not None:
            await asyncio.sleep(self.period)
            try:
                snap = await self.snapshot()
                async with self._lock:
                    cluster = self.cluster
                    if cluster is None:
                        return
                    if self.check_clock(snap):
                        log.warning("releasing cluster %d of run %s: %s", cluster, self.run_id, self.clock_problem)
                        self.cluster = None
                        await self._write(cluster, ClaimState.OFFLINE, ttl=self.period)
                        if self.on_lost is not None:
                            self.on_lost(cluster)
                        return
                    if displaced(snap, cluster, self.me, self.run_id):
                        log.warning("lost cluster %d of run %s to another owner: %s", cluster, self.run_id,
                                    _why_displaced(snap, cluster, self.me, self.run_id))
                        self.cluster = None
                        await self._write(cluster, ClaimState.OFFLINE, ttl=self.period)
                        if self.on_lost is not None:
                            self.on_lost(cluster)
                        return
                    await self._write(cluster, self.state or ClaimState.TRAINING)
            except asyncio.CancelledError:
                raise
            except Exception:  # a transient DHT failure must not end the lease; the next period retries
                log.exception("lease renewal failed; retrying next period")

    async def _stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None


def _why_displaced(snap: Snapshot, cluster: int, me: str, salt: str) -> str:
    """The leases that decided a displacement, for the log line an operator reads."""
    def show(c: ClaimView | None) -> str:
        if c is None:
            return "none seen"
        return (f"{c.peer_id} {c.state.value}, progress {c.progress}" + (", stale" if c.stale else "")
                + f", since {c.since:.0f}")

    w = winner(snap, cluster, salt)
    return (f"winner {show(next((c for c in snap.on(cluster) if c.peer_id == w), None))}; "
            f"this node's lease {show(next((c for c in snap.on(cluster) if c.peer_id == me), None))}")


def _contested(snap: Snapshot) -> bool:
    """True while an unfinished cluster has joiners but no incumbent (waiting a moment may free it)."""
    for k in range(snap.num_clusters):
        states = {c.state for c in snap.on(k)}
        if k not in snap.done and ClaimState.JOINING in states and not states & {ClaimState.TRAINING,
                                                                                 ClaimState.DONE}:
            return True
    return False
