"""What `status` shows, as one typed snapshot built from the DHT (and the gossip feed): the same object is
drawn by the dashboard and printed by `--json`."""

from __future__ import annotations

import asyncio
import time

from hivemind.utils.timed_storage import get_dht_time
from pydantic import BaseModel

from protocol.swarm_records import ROUTER, ClusterState, MemberBody, expert_slot, run_slots
from protocol.swarm_run import router_lease_id
from swarm.acceptance import contested_replays, credited_steps
from swarm.cas import ContentStore
from swarm.dht import SwarmNode
from swarm.state import RunRules, RunView, read_run

CLOCK_NOTE_S = 10.0  # a member record dated further than this in the future is flagged


class SlotRow(BaseModel):
    slot: str  # expert-<k> or router
    cluster: int | None
    state: str
    owner: str | None = None
    step: int | None = None
    target: int | None = None
    loss: float | None = None
    samples_per_s: float | None = None
    checkpoint_cid: str | None = None
    checkpoint_step: int | None = None
    checkpoint_age_s: float | None = None
    providers: int = 0
    verified_step: int | None = None  # the newest accepted checkpoint (acceptance rule, with the run's rules)
    verified_cid: str | None = None  # its CID: which of two checkpoints at one step (two lineages) is accepted
    claimed_step: int | None = None  # the newest checkpoint anyone announced, accepted or not
    attestations: int = 0  # accepting verifiers of the verified checkpoint
    pending: int = 0  # claims awaiting attestations
    rejected: list[str] = []  # "step N (cid): reason" for refused claims, newest first (at most 3)
    # "step N (cid)" of checkpoints a failed replay rejects while another verifier's replay matched: only a
    # replay settles it (`fetch` replays them; see node.disputes), newest first (at most 3)
    contested: list[str] = []
    note: str | None = None  # why the state is what it is, where it is not obvious (a stalled lease)
    eta_s: float | None = None  # time to the target at the current rate (None: not training, or no rate yet)
    loss_history: list[float] = []  # the dashboard's recent readings of `loss`, oldest first


class PeerRow(BaseModel):
    peer_id: str
    role: str
    software: str
    age_s: float
    clock_note: str | None = None  # its record is dated in our future: its clock (or ours) is off
    samples_trained: int | None = None  # by its accepted checkpoints (None: the run's rules are unknown here)
    checkpoints_accepted: int = 0
    served_bytes: int = 0  # what its member record says it sent to peers: its own claim, not checked


class EventRow(BaseModel):
    ts: float
    sender: str
    type: str
    detail: str


class SwarmStatus(BaseModel):
    run_id: str
    name: str | None = None
    num_clusters: int
    preset: str | None = None
    target_steps: int | None = None
    router_target_steps: int | None = None
    clips: int | None = None
    progress: float  # 0..1 toward every target (experts and router)
    eta_s: float | None = None  # until every slot reaches its target (None: some slot has no rate yet)
    peers: list[PeerRow]
    slots: list[SlotRow]
    events: list[EventRow] = []
    foreign: list[str] = []
    at: float


async def gather_status(node: SwarmNode, run_id: str, *, spec=None, schedule=None, events: list[EventRow] | None = None,
                        store: ContentStore | None = None, trainers: tuple[str, ...] | None = None) -> SwarmStatus:
    """Read the run (and the router's lease) from the DHT and count providers of each newest checkpoint."""
    k = spec.num_clusters if spec is not None else None
    rules = RunRules.of(spec, schedule, trainers) if spec is not None and schedule is not None else None
    view, router_view = await asyncio.gather(read_run(node, run_id, k, rules=rules),
                                             read_run(node, router_lease_id(run_id), 1, with_members=False))
    now = get_dht_time()
    slots = [_slot_row(view, expert_slot(c), c, view.states[c].value if c < len(view.states) else "free",
                       view.owners.get(c), now) for c in range(view.num_clusters)]
    router_state = router_view.states[0].value if router_view.states else "free"
    slots.append(_slot_row(view, ROUTER, None, router_state, router_view.owners.get(0), now))
    target = spec.preset.train.target_steps if spec is not None else None
    rtarget = schedule.router_target_steps if schedule is not None else None
    per_step = spec.preset.train.batch_size * spec.preset.train.grad_accum if spec is not None else None
    for row in slots:
        row.target = row.target or (rtarget if row.cluster is None else target)
        if row.cluster is not None and row.state == ClusterState.DONE.value and row.step is None:
            row.step = row.checkpoint_step
        if row.state == ClusterState.TRAINING.value:
            row.eta_s = eta_seconds(row.step, row.target, row.samples_per_s, per_step)
    if store is not None:
        counts = await asyncio.gather(*(store.find_providers(r.checkpoint_cid) for r in slots if r.checkpoint_cid))
        for row, peers in zip([r for r in slots if r.checkpoint_cid], counts, strict=True):
            row.providers = len(peers)
    credit: dict[str, tuple[int, int]] = {}
    if view.rules is not None:
        for slot in run_slots(view.num_clusters):
            for peer, (steps, n) in credited_steps(view.judged(slot)).items():
                had = credit.get(peer, (0, 0))
                credit[peer] = (had[0] + steps, had[1] + n)
    peers = [PeerRow(peer_id=m.peer_id, role=m.role, software=m.software, age_s=max(0.0, now - m.ts),
                     clock_note=f"clock {m.ts - now:.0f} s ahead of this one" if m.ts - now > CLOCK_NOTE_S else None,
                     samples_trained=None if per_step is None or view.rules is None
                     else credit.get(m.peer_id, (0, 0))[0] * per_step,
                     checkpoints_accepted=credit.get(m.peer_id, (0, 0))[1], served_bytes=m.served_bytes)
             for m in view.members.values() if isinstance(m, MemberBody)]
    return SwarmStatus(
        run_id=run_id, name=spec.name if spec is not None else None, num_clusters=view.num_clusters,
        preset=spec.preset.name if spec is not None else None, target_steps=target, router_target_steps=rtarget,
        clips=spec.data.total_clips if spec is not None else None, progress=_overall(slots), eta_s=run_eta(slots),
        peers=sorted(peers, key=lambda p: p.peer_id), slots=slots, events=list(events or [])[-12:],
        foreign=[f"{f.peer_id} runs {f.software} (protocol v{f.protocol})" for f in view.foreign], at=time.time())


def _slot_row(view: RunView, slot: str, cluster: int | None, state: str, owner: str | None, now: float) -> SlotRow:
    row = SlotRow(slot=slot, cluster=cluster, state=state, owner=owner)
    newest = view.latest_checkpoint(slot)
    claimed = view.latest_claimed(slot)
    row.claimed_step = None if claimed is None else claimed.step
    if view.rules is not None:
        judged = view.judged(slot)
        best = next((j for j in judged if j.accepted), None)
        row.verified_step = None if best is None else best.claim.step
        row.verified_cid = None if best is None else best.claim.cid
        row.attestations = 0 if best is None else best.accepts
        row.pending = sum(j.status.value == "pending" for j in judged)
        row.rejected = [f"step {j.claim.step} ({j.claim.cid[-8:]}): {j.reason}" for j in judged
                        if j.status.value == "rejected"][:3]
        contested = contested_replays(judged, view.slot_votes(slot), view.rules.for_slot(slot))
        row.contested = [f"step {c.step} ({c.cid[-8:]})" for c in reversed(contested)][:3]
    stalled = [c for c in view.leases if c.cluster == cluster and c.stale] if cluster is not None else []
    if stalled and state == ClusterState.STALLED.value and view.rules is not None and view.rules.lease_grace:
        row.note = (f"owner {stalled[0].peer_id[-8:]} published no progress within {view.rules.lease_grace:.0f}s: "
                    "the cluster is claimable")
    if newest is not None:
        row.checkpoint_cid, row.checkpoint_step = newest.cid, newest.step
        row.checkpoint_age_s, row.loss = max(0.0, now - newest.ts), newest.loss
        row.step = newest.step
    prog = view.progress.get(owner) if owner else None
    if prog is not None and prog.cluster == cluster:
        row.step, row.target, row.loss, row.samples_per_s = prog.step, prog.target, prog.loss, prog.samples_per_s
    return row


def eta_seconds(step: int | None, target: int | None, samples_per_s: float | None,
                samples_per_step: int | None) -> float | None:
    """Seconds to `target` at `samples_per_s` (None when any of them is unknown or the rate is zero)."""
    if None in (step, target, samples_per_s, samples_per_step) or not samples_per_s or not samples_per_step:
        return None
    return max(0.0, (target - step) * samples_per_step / samples_per_s)


def run_eta(slots: list[SlotRow]) -> float | None:
    """Until every slot is at its target: the slowest slot's ETA, 0 when all are there, None while a slot
    that is not done has no rate (free, joining, stalled, or no progress record yet). Slots train in
    parallel, on different nodes, so it is the maximum, not the sum."""
    open_ = [r for r in slots if not (r.target and (r.step or 0) >= r.target)]
    if any(r.eta_s is None for r in open_):
        return None
    return max((r.eta_s for r in open_), default=0.0)


class LossHistory:
    """The status command's memory of each slot's loss across refreshes (for the dashboard's sparkline)."""

    def __init__(self, keep: int = 40) -> None:
        self.keep = keep
        self._seen: dict[str, list[float]] = {}

    def apply(self, status: SwarmStatus) -> SwarmStatus:
        for row in status.slots:
            past = self._seen.setdefault(row.slot, [])
            if row.loss is not None and (not past or past[-1] != row.loss):
                past.append(row.loss)
                del past[:-self.keep]
            row.loss_history = list(past)
        return status


def _overall(slots: list[SlotRow]) -> float:
    parts = [min(1.0, (r.step or 0) / r.target) if r.target else 0.0 for r in slots]
    return round(sum(parts) / len(parts), 4) if parts else 0.0
