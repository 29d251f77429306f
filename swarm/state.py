"""Run-level records for the daemon and the dashboard: publish the run-spec pointer, progress and checkpoint
refs, and read a whole run back as one typed view. Thin I/O over SwarmNode; decisions live elsewhere."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hivemind.utils.timed_storage import get_dht_time

from protocol.swarm_records import (
    RUNS_KEY,
    CheckpointBody,
    ClaimBody,
    ClusterState,
    DoneBody,
    ForeignMember,
    MemberBody,
    ProgressBody,
    RunPointerBody,
    run_key,
)
from swarm.claim_logic import ClaimView, Snapshot, cluster_states, owners
from swarm.dht import Signed, SwarmNode
from swarm.identity import peer_id_of_public_key

SPEC_TTL = 30 * 24 * 3600.0
PROGRESS_TTL = 120.0
CHECKPOINT_TTL = 14 * 24 * 3600.0


async def publish_spec_pointer(node: SwarmNode, run_id: str, spec_cid: str, num_clusters: int) -> bool:
    """Under the run's own key, and in the swarm-wide list of runs (so joiners need no run id)."""
    now = get_dht_time()
    body = RunPointerBody(run_id=run_id, spec_cid=spec_cid, num_clusters=num_clusters, ts=now)
    ok = await asyncio.gather(node.put(run_key(run_id, "spec"), body, now + SPEC_TTL),
                              node.put(RUNS_KEY, body, now + SPEC_TTL))
    return all(ok)


async def list_runs(node: SwarmNode) -> list[RunPointerBody]:
    """Every run announced in this swarm, newest first."""
    found = await node.get(RUNS_KEY)
    runs = {r.body.run_id: r.body for r in sorted(found.records, key=lambda r: r.body.ts)
            if isinstance(r.body, RunPointerBody)}
    return sorted(runs.values(), key=lambda b: b.ts, reverse=True)


async def publish_progress(node: SwarmNode, run_id: str, body: ProgressBody, ttl: float = PROGRESS_TTL) -> bool:
    return await node.put(run_key(run_id, "progress"), body, get_dht_time() + ttl)


async def publish_checkpoint(node: SwarmNode, run_id: str, body: CheckpointBody,
                             ttl: float = CHECKPOINT_TTL) -> bool:
    return await node.put(run_key(run_id, "checkpoints"), body, get_dht_time() + ttl)


@dataclass(frozen=True)
class RunView:
    """Everything the DHT says about a run, validated, keyed by the owners' peer ids."""

    run_id: str
    num_clusters: int
    specs: tuple[RunPointerBody, ...]
    members: dict[str, MemberBody]
    foreign: tuple[ForeignMember, ...]
    claims: dict[str, ClaimBody]
    progress: dict[str, ProgressBody]
    checkpoints: tuple[tuple[str, CheckpointBody], ...]
    done: tuple[tuple[str, DoneBody], ...]
    states: tuple[ClusterState, ...]
    owners: dict[int, str]

    def latest_checkpoint(self, slot: str) -> CheckpointBody | None:
        """The most advanced published checkpoint of `slot` (`expert-<k>` or `router`)."""
        cands = self.checkpoint_candidates(slot)
        return cands[0] if cands else None

    def checkpoint_candidates(self, slot: str) -> list[CheckpointBody]:
        """Every distinct checkpoint of `slot` announced by a trainer or a seeder, most advanced first: if the
        newest one's only holder is gone, the next one may still be fetchable."""
        best: dict[str, CheckpointBody] = {}
        for _, c in self.checkpoints:
            if c.slot == slot and (c.cid not in best or not c.replica):
                best[c.cid] = c
        return sorted(best.values(), key=lambda c: (c.step, c.ts), reverse=True)

    def trainers(self, slot: str) -> list[str]:
        """Peers that announced checkpoints of `slot` as their own work (seeders' replicas left out)."""
        return sorted({peer for peer, c in self.checkpoints if c.slot == slot and not c.replica})


async def read_run(node: SwarmNode, run_id: str, num_clusters: int | None = None) -> RunView:
    """One consistent-enough read of every record of a run (all keys fetched concurrently)."""
    keys = ("spec", "members", "claims", "progress", "checkpoints", "done")
    sets = dict(zip(keys, await asyncio.gather(*(node.get(run_key(run_id, k)) for k in keys)), strict=True))
    specs = tuple(r.body for r in sets["spec"].records if isinstance(r.body, RunPointerBody))
    if num_clusters is None:
        num_clusters = max((s.num_clusters for s in specs), default=0)

    def by_peer(kind: type) -> dict[str, object]:
        out = {}
        for rec in sets[{MemberBody: "members", ClaimBody: "claims", ProgressBody: "progress"}[kind]].records:
            if isinstance(rec.body, kind):
                out[_peer_of(rec)] = rec.body
        return out

    claims = by_peer(ClaimBody)
    done = tuple((_peer_of(r), r.body) for r in sets["done"].records if isinstance(r.body, DoneBody))
    snap = Snapshot(num_clusters,
                    tuple(ClaimView(c.peer_id, c.cluster, c.state, c.since) for c in claims.values()
                          if c.cluster < num_clusters),
                    frozenset(d.cluster for _, d in done if d.cluster < num_clusters))
    return RunView(
        run_id=run_id, num_clusters=num_clusters, specs=specs, members=by_peer(MemberBody),
        foreign=sets["members"].foreign, claims=claims, progress=by_peer(ProgressBody),
        checkpoints=tuple((_peer_of(r), r.body) for r in sets["checkpoints"].records
                          if isinstance(r.body, CheckpointBody)),
        done=done, states=tuple(cluster_states(snap, run_id)), owners=owners(snap, run_id),
    )


def _peer_of(record: Signed) -> str:
    return peer_id_of_public_key(record.owner)
