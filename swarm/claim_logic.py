"""Which cluster should I train? Pure functions over a snapshot of the DHT, in the manner of Petals'
block_selection: no I/O, so every rule here is unit-tested without a network.

The DHT has no compare-and-swap, so the protocol tolerates races: everyone may announce, and after a settle
window everyone applies the same deterministic `winner` rule to what they read; losers choose again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from protocol.swarm_records import ClaimState, ClusterState

_CONTENDING = (ClaimState.JOINING, ClaimState.TRAINING)


@dataclass(frozen=True)
class ClaimView:
    """One live lease as read from the DHT (expired leases are already gone from the DHT). `progress`: the
    step of the newest checkpoint this peer published on this cluster on a complete lineage (accepted, or
    awaiting only attestations: a record naming a parent nobody announced earns nothing); `stale`: an
    incumbent that published none within the run's grace window (its lease is no longer earned: anyone may
    claim the cluster, and a joiner beats it)."""

    peer_id: str
    cluster: int
    state: ClaimState
    since: float = 0.0
    progress: int = 0
    stale: bool = False
    ts: float = 0.0  # when the owner last wrote it (its clock)

    @property
    def incumbent(self) -> bool:
        """Holds the cluster by right: TRAINING or DONE and making progress."""
        return self.state in (ClaimState.TRAINING, ClaimState.DONE) and not self.stale


@dataclass(frozen=True)
class Snapshot:
    num_clusters: int
    claims: tuple[ClaimView, ...] = ()
    done: frozenset[int] = field(default_factory=frozenset)
    # clusters whose checkpoint at the target awaits attestations: not DONE yet, not claimable either
    awaiting: frozenset[int] = field(default_factory=frozenset)

    def on(self, cluster: int) -> list[ClaimView]:
        return [c for c in self.claims if c.cluster == cluster]


def rendezvous(peer_id: str, cluster: int, salt: str = "") -> int:
    """A stable pseudo-random rank of (peer, cluster): spreads simultaneous joiners across clusters and breaks
    ties the same way on every node. Smaller wins contests."""
    return int.from_bytes(hashlib.sha256(f"{salt}|{peer_id}|{cluster}".encode()).digest()[:8], "big")


def _rank(c: ClaimView, salt: str) -> tuple:
    """Smaller wins: an incumbent making progress (more progress first: a healed partition keeps the owner
    that did more) > a joiner > an incumbent gone stale; then the rendezvous rank."""
    tier = 0 if c.incumbent else 1 if c.state == ClaimState.JOINING else 2
    return (tier, -c.progress if tier == 0 else 0, rendezvous(c.peer_id, c.cluster, salt))


def winner(snapshot: Snapshot, cluster: int, salt: str = "") -> str | None:
    """The one owner of `cluster`. A fresh identity never evicts an incumbent that is making progress,
    however its hash ranks; it does beat one that stopped (see `_rank`)."""
    contenders = [c for c in snapshot.on(cluster) if c.state in (*_CONTENDING, ClaimState.DONE)]
    if not contenders:
        return None
    return min(contenders, key=lambda c: _rank(c, salt)).peer_id


def displaced(snapshot: Snapshot, cluster: int, me: str, salt: str = "") -> bool:
    """Whether `me`, holding `cluster`, must let it go: another wins it and `me` is no incumbent, or the winner
    made strictly more progress. A tie among incumbents (a fresh lease that names no progress yet, against
    an owner that has not published its first checkpoint) displaces nobody: the owner goes on until progress
    decides, so a lease written by an identity that never trains cannot stop an honest trainer."""
    w = winner(snapshot, cluster, salt)
    if w in (me, None):
        return False
    mine = next((c for c in snapshot.on(cluster) if c.peer_id == me), None)
    theirs = next(c for c in snapshot.on(cluster) if c.peer_id == w)
    return mine is None or not mine.incumbent or theirs.progress > mine.progress


def cluster_states(snapshot: Snapshot, salt: str = "") -> list[ClusterState]:
    """What a dashboard shows: DONE > VERIFYING > TRAINING > STALLED (an owner without progress: claimable) >
    JOINING > OFFLINE (recently released) > FREE."""
    states = []
    for k in range(snapshot.num_clusters):
        seen = {c.state for c in snapshot.on(k)}
        if k in snapshot.done or ClaimState.DONE in seen:
            states.append(ClusterState.DONE)
        elif k in snapshot.awaiting:
            states.append(ClusterState.VERIFYING)
        elif any(c.state == ClaimState.TRAINING and not c.stale for c in snapshot.on(k)):
            states.append(ClusterState.TRAINING)
        elif ClaimState.TRAINING in seen:
            states.append(ClusterState.STALLED)
        elif ClaimState.JOINING in seen:
            states.append(ClusterState.JOINING)
        elif ClaimState.OFFLINE in seen:
            states.append(ClusterState.OFFLINE)
        else:
            states.append(ClusterState.FREE)
    return states


def owners(snapshot: Snapshot, salt: str = "") -> dict[int, str]:
    """cluster → its winning owner, for clusters that have one."""
    out = {}
    for k in range(snapshot.num_clusters):
        if (w := winner(snapshot, k, salt)) is not None:
            out[k] = w
    return out


def choose_cluster(snapshot: Snapshot, me: str, salt: str = "", exclude: Iterable[int] = ()) -> int | None:
    """The cluster `me` should announce, or None if every unfinished cluster already has an owner.

    1. My own live lease that I still win (a restarted node takes its cluster back).
    2. Otherwise a cluster that is not DONE (nor awaiting the attestations that would make it DONE) and has
       no incumbent, preferring the least covered one (joiners
       count as coverage), ties broken by rendezvous hash so simultaneous joiners spread out.
    """
    excluded = set(exclude)
    excluded |= snapshot.awaiting
    for c in snapshot.claims:
        if (c.peer_id == me and c.state in _CONTENDING and c.cluster not in snapshot.done
                and c.cluster not in excluded and winner(snapshot, c.cluster, salt) == me):
            return c.cluster
    candidates = []
    for k in range(snapshot.num_clusters):
        if k in snapshot.done or k in excluded:
            continue
        others = [c for c in snapshot.on(k) if c.peer_id != me]
        if any(c.incumbent for c in others):
            continue
        coverage = sum(c.state == ClaimState.JOINING for c in others)
        candidates.append((coverage, rendezvous(me, k, salt), k))
    return min(candidates)[2] if candidates else None


def all_done(snapshot: Snapshot) -> bool:
    return all(k in snapshot.done for k in range(snapshot.num_clusters))
