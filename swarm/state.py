"""Run-level records for the daemon and the dashboard: publish the run-spec pointer, progress and checkpoint
refs, and read a whole run back as one typed view. Thin I/O over SwarmNode; decisions live elsewhere.

Checkpoint records and attestations live in keys sharded by slot and epoch (swarm.layout): a read takes each
slot's quorum certificates (`heads/{slot}`), then only the epochs from the certified head on, so its cost and
every reply stay bounded however long the run."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, replace

from hivemind.utils.timed_storage import get_dht_time

from protocol.errors import IntegrityError
from protocol.swarm_records import (
    EPOCH_STEPS,
    ROUTER,
    RUNS_KEY,
    AttestationBody,
    CertificateBody,
    CheckpointBody,
    ClaimBody,
    ClaimState,
    ClusterState,
    DoneBody,
    Envelope,
    ForeignMember,
    MemberBody,
    ProgressBody,
    RunPointerBody,
    claimant,
    claimant_peer,
    expert_slot,
    run_key,
    run_slots,
)
from protocol.swarm_run import Schedule
from swarm import layout
from swarm.acceptance import Claim, Judgement, Policy, Status, Vote, accepted, judge, reached
from swarm.archive import archived_body
from swarm.claim_logic import ClaimView, Snapshot, cluster_states, owners
from swarm.dht import DHTReadError, RecordSet, Signed, SwarmNode
from swarm.identity import peer_id_of_public_key, verify_signature
from swarm.members import Members

PROGRESS_TTL = 120.0


@dataclass(frozen=True)
class RunRules:
    """What makes a checkpoint of this run count (swarm.acceptance.Policy) and each slot's target. Built from
    the verified bundle; `init_losses` holds the initialisation's validation loss of slots this node knows."""

    policy: Policy
    expert_target: int
    router_target: int
    init_losses: tuple[tuple[str, float], ...] = ()
    lease_grace: float | None = None  # seconds an owner may go without progress before its lease is claimable
    trainers: frozenset[str] | None = None  # a permissioned run's allowlist (None: open)
    router_slack: float = 0.0  # absolute loss allowance for the router (nats)

    def may_train(self, peer_id: str) -> bool:
        return self.trainers is None or peer_id in self.trainers

    @classmethod
    def of(cls, spec, schedule: Schedule, trainers: tuple[str, ...] | None = None) -> RunRules:
        policy = Policy(attestations=schedule.attestations, max_interval=schedule.checkpoint_every,
                        loss_tolerance=schedule.loss_tolerance, val_rtol=spec.validation.rtol)
        grace = schedule.progress_intervals * schedule.checkpoint_minutes * 60.0
        return cls(policy, spec.preset.train.target_steps, schedule.router_target_steps, lease_grace=grace,
                   trainers=None if trainers is None else frozenset(trainers),
                   router_slack=schedule.router_loss_slack * math.log(max(spec.num_clusters, 2)))

    def for_slot(self, slot: str) -> Policy:
        policy = (replace(self.policy, loss_slack=self.router_slack, bound_to_best=False) if slot == ROUTER
                  else self.policy)
        init = dict(self.init_losses).get(slot)
        return policy if init is None else replace(policy, init_loss=init)

    def target(self, slot: str) -> int:
        return self.router_target if slot == ROUTER else self.expert_target

    def with_init_loss(self, slot: str, loss: float) -> RunRules:
        return replace(self, init_losses=tuple(sorted({**dict(self.init_losses), slot: loss}.items())))


async def publish_spec_pointer(node: SwarmNode, run_id: str, spec_cid: str, num_clusters: int) -> bool:
    """Under the run's own key, and in the swarm-wide list of runs (so joiners need no run id)."""
    now = get_dht_time()
    body = RunPointerBody(run_id=run_id, spec_cid=spec_cid, num_clusters=num_clusters, ts=now)
    ok = await asyncio.gather(node.put(run_key(run_id, "spec"), body, now + node.record_ttl),
                              node.put(RUNS_KEY, body, now + node.record_ttl))
    return all(ok)


async def list_runs(node: SwarmNode) -> list[RunPointerBody]:
    """Every run announced in this swarm, newest first."""
    found = await node.get(RUNS_KEY)
    runs = {r.body.run_id: r.body for r in sorted(found.records, key=lambda r: r.body.ts)
            if isinstance(r.body, RunPointerBody)}
    return sorted(runs.values(), key=lambda b: b.ts, reverse=True)


async def publish_progress(node: SwarmNode, run_id: str, body: ProgressBody, ttl: float = PROGRESS_TTL) -> bool:
    return await node.put(run_key(run_id, "progress"), body, get_dht_time() + ttl)


def record_key(run_id: str, body: CheckpointBody | AttestationBody | CertificateBody) -> str:
    """The key a checkpoint record, an attestation or a certificate lives under (swarm.layout)."""
    if isinstance(body, CheckpointBody):
        return layout.checkpoint_key(run_id, body.slot, body.step)
    if isinstance(body, AttestationBody):
        return layout.attestation_key(run_id, body.slot, body.step)
    return layout.head_key(run_id, body.slot)


async def publish_checkpoint(node: SwarmNode, run_id: str, body: CheckpointBody) -> bool:
    return await node.put(record_key(run_id, body), body, get_dht_time() + node.record_ttl)


async def publish_attestation(node: SwarmNode, run_id: str, body: AttestationBody) -> bool:
    return await node.put(record_key(run_id, body), body, get_dht_time() + node.record_ttl)


async def publish_certificate(node: SwarmNode, run_id: str, body: CertificateBody) -> bool:
    return await node.put(record_key(run_id, body), body, get_dht_time() + node.record_ttl)


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
    attestations: tuple[tuple[str, AttestationBody], ...] = ()
    rules: RunRules | None = None
    local: tuple[tuple[str, Vote], ...] = ()  # this node's own checks (CID → what it found), see acceptance
    leases: tuple[ClaimView, ...] = ()  # the live leases as judged (progress, staleness)
    failed: tuple[str, ...] = ()  # reads that failed: those keys hold what this node last saw there, still live
    # member buckets that never read well: reported, never blocking (members decide nothing; a verifier that
    # undercounts them checks more, not less), so flooding one bucket hides members and stalls nothing
    member_failures: tuple[str, ...] = ()
    anchors: tuple[tuple[str, str, float], ...] = ()  # (slot, CID, its loss) of each slot's certified head
    signed: tuple[Signed, ...] = ()  # the checkpoint and attestation records read, as signed (for certificates)
    shard_keys: tuple[str, ...] = ()  # the sharded keys this view read (what a seeder archives from)

    def decidable(self) -> RunView:
        """This view, if every read behind it succeeded; else DHTReadError: nothing (DONE, leases, a takeover)
        is decided on a view that failed, though it may still be shown, with the reason."""
        if self.failed:
            raise DHTReadError(f"not deciding on a partial view of run {self.run_id}: {self.failed[0]}")
        return self

    def slot_claims(self, slot: str) -> list[Claim]:
        """The trainers' checkpoint records of `slot` as acceptance claims (seeders' replicas left out)."""
        return [Claim(peer, c.cid, c.step, c.parent, c.val_loss, c.ts) for peer, c in self.checkpoints
                if c.slot == slot and not c.replica and (self.rules is None or self.rules.may_train(peer))]

    def slot_votes(self, slot: str) -> list[Vote]:
        return [Vote(peer, a.cid, a.step, a.parent, a.val_loss, a.verdict == "accept", a.reason, a.replayed)
                for peer, a in self.attestations if a.slot == slot]

    def judged(self, slot: str) -> list[Judgement]:
        """Every claim of `slot` judged by the run's acceptance rule, most advanced first."""
        if self.rules is None:
            raise ValueError("judging checkpoints needs the run's rules (read_run(..., rules=...))")
        return judge(self.slot_claims(slot), self.slot_votes(slot), self.rules.for_slot(slot), dict(self.local),
                     self.slot_anchors(slot))

    def slot_anchors(self, slot: str) -> dict[str, float]:
        return {cid: loss for s, cid, loss in self.anchors if s == slot}

    def accepted_checkpoints(self, slot: str) -> list[CheckpointBody]:
        """The accepted checkpoints of `slot`, most advanced first: what takeover, seeders and fetch try, each
        checking the weights itself before use."""
        bodies: dict[tuple, list[CheckpointBody]] = {}
        for peer, c in sorted(self.checkpoints, key=lambda pc: pc[1].ts):
            if c.slot == slot and not c.replica and (self.rules is None or self.rules.may_train(peer)):
                same = bodies.setdefault((c.cid, c.step, c.parent), [])
                if all(b.bytes != c.bytes for b in same):  # a re-announcement may misstate the size: try each
                    same.append(c)
        out, seen = [], set()
        for j in accepted(self.judged(slot)):
            key = (j.claim.cid, j.claim.step, j.claim.parent)
            if key not in seen:
                seen.add(key)
                out.extend(bodies[key])
        return out

    def latest_checkpoint(self, slot: str) -> CheckpointBody | None:
        """The most advanced accepted checkpoint of `slot` (with rules), else the most advanced announced one."""
        cands = self.accepted_checkpoints(slot) if self.rules is not None else self.checkpoint_candidates(slot)
        return cands[0] if cands else None

    def latest_claimed(self, slot: str) -> CheckpointBody | None:
        """The most advanced checkpoint of `slot` that anyone announced, accepted or not (the claimed step)."""
        cands = self.checkpoint_candidates(slot)
        return cands[0] if cands else None

    def checkpoint_candidates(self, slot: str) -> list[CheckpointBody]:
        """Every distinct checkpoint of `slot` announced by a trainer or a seeder, most advanced first, with no
        judgement at all (for display; consumers use accepted_checkpoints)."""
        best: dict[str, CheckpointBody] = {}
        for _, c in self.checkpoints:
            if c.slot == slot and (c.cid not in best or not c.replica):
                best[c.cid] = c
        return sorted(best.values(), key=lambda c: (c.step, c.ts), reverse=True)

    def trainers(self, slot: str) -> list[str]:
        """Peers that announced checkpoints of `slot` as their own work (seeders' replicas left out)."""
        return sorted({peer for peer, c in self.checkpoints if c.slot == slot and not c.replica})


def verified_done(rules: RunRules, claims: list[Claim], votes: list[Vote], slot: str,
                  local: dict[str, Vote] | None = None) -> Status | None:
    """Whether `slot` reached its target by the acceptance rule: ACCEPTED, PENDING (awaiting attestations), None."""
    return reached(judge(claims, votes, rules.for_slot(slot), local), rules.target(slot))


# (trainer, cluster) → (its newest accepted step, the ts of its newest checkpoint on a complete lineage)
Activity = dict[tuple[str, int], tuple[int, float]]


@dataclass(frozen=True)
class VerifiedState:
    """What the acceptance rule says about every cluster, for a claim snapshot: which reached the target
    (`reach`), and per trainer and cluster (`activity`) its newest *accepted* step (progress: what ranks
    owners) and the time of its newest checkpoint on a complete lineage (accepted, or awaiting only
    attestations: what keeps its lease from going stale while verifiers catch up)."""

    reach: dict[int, Status | None]
    activity: Activity
    grace: float | None = None
    now: float = 0.0
    trainers: frozenset[str] | None = None  # a permissioned run: other peers' leases are ignored


def verified_state(view: RunView, local: dict[str, Vote] | None = None) -> VerifiedState:
    assert view.rules is not None
    reach, activity = {}, {}
    for k in range(view.num_clusters):
        slot = expert_slot(k)
        judged = judge(view.slot_claims(slot), view.slot_votes(slot), view.rules.for_slot(slot), local,
                       view.slot_anchors(slot))
        reach[k] = reached(judged, view.rules.target(slot))
        for j in judged:
            if j.complete:  # a lineage that reaches the initialisation: a dangling or rejected one earns nothing
                key = (j.claim.trainer, k)
                step, ts = activity.get(key, (0, 0.0))
                activity[key] = (max(step, j.claim.step if j.accepted else 0), max(ts, j.claim.ts))
    return VerifiedState(reach, activity, view.rules.lease_grace, get_dht_time(), view.rules.trainers)


MAX_EPOCHS_PER_READ = 64  # a slot whose newest records lie further past its certified head is read in part


@dataclass(frozen=True)
class _SlotRead:
    records: tuple[Signed, ...]  # checkpoint records and attestations, and those a certificate embeds
    anchor: tuple[str, str, float] | None
    keys: tuple[str, ...]
    failed: tuple[str, ...]


async def _read_slot(node: SwarmNode, run_id: str, slot: str, quorum: int, gap: int) -> _SlotRead:
    """A slot's certified head, then its epochs from the head's on, until `gap` epochs in a row hold no
    checkpoint record (a lineage advances at most `max_interval` steps per checkpoint: no honest epoch after
    the newest record is further away)."""
    heads = await node.get(layout.head_key(run_id, slot))
    failed = [heads.failed] if heads.failed else []
    best: tuple[CertificateBody, layout.Certified] | None = None
    for rec in heads.records:
        if isinstance(rec.body, CertificateBody) and rec.body.slot == slot:
            try:
                got = layout.check_certificate(rec.body, quorum, verify_signature, peer_id_of_public_key)
            except IntegrityError:
                continue  # a certificate proves only what its embedded records prove: this one proves nothing
            if best is None or got.claim.step > best[1].claim.step:
                best = (rec.body, got)
    records: list[Signed] = []
    if best is not None:
        cert = best[0]
        for archived in (cert.checkpoint, *cert.attestations):
            env = Envelope.model_validate_json(archived.record)
            records.append(Signed(owner=archived.owner.encode("ascii"), envelope=env, expiration_time=0.0))
    epochs = layout.epochs_to_read(None if best is None else best[1].claim.step, None)
    keys: list[str] = []
    epoch, stop, empty = epochs.start, epochs.start + MAX_EPOCHS_PER_READ, 0
    while epoch < stop:
        batch = [epoch, epoch + 1] if epoch == epochs.start else [epoch]
        pairs = [(layout.checkpoint_key(run_id, slot, e * EPOCH_STEPS), layout.attestation_key(run_id, slot,
                                                                                               e * EPOCH_STEPS))
                 for e in batch]
        sets: list[RecordSet] = await asyncio.gather(*(node.get(k) for pair in pairs for k in pair))
        for key, got in zip([k for pair in pairs for k in pair], sets, strict=True):
            keys.append(key)
            records.extend(got.records)
            if got.failed:
                failed.append(got.failed)
        empty = 0 if any(isinstance(r.body, CheckpointBody) for r in sets[-2].records) else empty + 1
        if empty >= gap:
            break  # nothing honest lies further
        epoch = batch[-1] + 1
    anchor = None if best is None else (slot, best[1].claim.cid, float(best[1].claim.val_loss or 0.0))
    return _SlotRead(tuple(records), anchor, tuple(keys), tuple(failed))


def certify(view: RunView, slot: str, now: float) -> CertificateBody | None:
    """A quorum certificate of `slot`'s most advanced checkpoint accepted by attestations (not by this node's
    own check alone), from the signed records the view read; None if there is none or it lacks the quorum."""
    if view.rules is None:
        return None
    quorum = max(view.rules.for_slot(slot).attestations, 1)
    for j in view.judged(slot):
        if not j.accepted or j.accepts < quorum:
            continue
        ckpt = next((r for r in view.signed if isinstance(r.body, CheckpointBody) and not r.body.replica
                     and r.body.cid == j.claim.cid and _peer_of(r) == j.claim.trainer), None)
        votes = [r for r in view.signed if isinstance(r.body, AttestationBody) and r.body.cid == j.claim.cid
                 and r.body.verdict == "accept" and r.body.step == j.claim.step and _peer_of(r) != j.claim.trainer]
        if ckpt is None or ckpt.envelope.sig is None:
            return None
        atts = [archived_body(r, now) for r in sorted(votes, key=lambda r: r.body.ts) if r.envelope.sig is not None]
        try:
            cert = layout.make_certificate(archived_body(ckpt, now), atts, now)
            layout.check_certificate(cert, quorum, verify_signature, peer_id_of_public_key)
        except (IntegrityError, ValueError):
            return None
        return cert
    return None


async def read_run(node: SwarmNode, run_id: str, num_clusters: int | None = None, *, rules: RunRules | None = None,
                   local: dict[str, Vote] | None = None, with_members: bool = True) -> RunView:
    """One consistent-enough read of every record of a run (all keys fetched concurrently). With `rules`, a
    cluster is DONE only when an accepted checkpoint at or past its target exists (DONE records and DONE
    leases are claims, not facts), and VERIFYING while one awaits attestations. Members come from the node's
    reader of the run's member buckets (swarm.members: the buckets due this read, the rest as last read);
    `with_members=False` leaves them out (a lease-only pseudo-run such as the router's has none)."""
    keys = ("spec", "claims", "progress", "done")

    async def members() -> Members:
        return await node.read_members(run_id) if with_members else Members((), ())

    *got, members_read = await asyncio.gather(*(node.get(run_key(run_id, k)) for k in keys), members())
    sets: dict[str, RecordSet | Members] = {**dict(zip(keys, got, strict=True)), "members": members_read}
    specs = tuple(r.body for r in sets["spec"].records if isinstance(r.body, RunPointerBody))
    if num_clusters is None:
        num_clusters = max((s.num_clusters for s in specs), default=0)
    quorum = 1 if rules is None else max(rules.policy.attestations, 1)
    gap = 1 if rules is None else max(1, math.ceil(rules.policy.max_interval / EPOCH_STEPS))
    slots = await asyncio.gather(*(_read_slot(node, run_id, slot, quorum, gap) for slot in run_slots(num_clusters)))
    signed = _unique(r for sr in slots for r in sr.records)

    def by_peer(kind: type) -> dict[str, object]:
        """Records by their owner's peer id; leases and progress by claimant (`peer/lane` for further devices)."""
        out = {}
        for rec in sets[{MemberBody: "members", ClaimBody: "claims", ProgressBody: "progress"}[kind]].records:
            if isinstance(rec.body, kind):
                out[claimant(_peer_of(rec), getattr(rec.body, "lane", None))] = rec.body
        return out

    claims = by_peer(ClaimBody)
    done = tuple((_peer_of(r), r.body) for r in sets["done"].records if isinstance(r.body, DoneBody))
    checkpoints = tuple((_peer_of(r), r.body) for r in signed if isinstance(r.body, CheckpointBody))
    attestations = tuple((_peer_of(r), r.body) for r in signed if isinstance(r.body, AttestationBody))
    view = RunView(
        run_id=run_id, num_clusters=num_clusters, specs=specs, members=by_peer(MemberBody),
        foreign=members_read.foreign, claims=claims, progress=by_peer(ProgressBody), checkpoints=checkpoints,
        done=done, states=(), owners={}, attestations=attestations, rules=rules,
        local=tuple(sorted((local or {}).items(), key=lambda kv: kv[0])),
        failed=(tuple(got.failed for got in sets.values() if isinstance(got, RecordSet) and got.failed)
                + tuple(f for sr in slots for f in sr.failed)),
        member_failures=members_read.failed,
        anchors=tuple(sr.anchor for sr in slots if sr.anchor is not None), signed=signed,
        shard_keys=tuple(k for sr in slots for k in sr.keys))
    leases = [ClaimView(claimant(c.peer_id, c.lane), c.cluster, c.state, c.since, ts=c.ts) for c in claims.values()
              if c.cluster < num_clusters and (rules is None or rules.may_train(c.peer_id))]
    if rules is None:
        snap = Snapshot(num_clusters, tuple(leases), frozenset(d.cluster for _, d in done if d.cluster < num_clusters))
    else:
        snap = verified_snapshot(num_clusters, leases, verified_state(view, local))
    return replace(view, states=tuple(cluster_states(snap, run_id)), owners=owners(snap, run_id),
                   leases=snap.claims)


def _unique(records) -> tuple[Signed, ...]:
    """One of each (owner, record): a certificate's embedded copy and the live record are the same fact."""
    seen: dict[tuple[bytes, str, str, bool], Signed] = {}
    for r in records:
        key = (r.owner, r.body.kind, getattr(r.body, "cid", ""), getattr(r.body, "replica", False))
        if key not in seen or (seen[key].expiration_time == 0.0 and r.expiration_time):
            seen[key] = r
    return tuple(seen.values())


def verified_snapshot(num_clusters: int, leases: list[ClaimView], state: VerifiedState | dict) -> Snapshot:
    """A claim snapshot whose DONE comes from the acceptance rule (a lease that says DONE for a cluster without
    an accepted checkpoint at its target counts as an ordinary lease), and whose leases are earned by progress:
    an owner whose newest checkpoint on a complete lineage on its cluster (or, before any, its claim) is older than the
    grace window is stale. `state` may be a bare reach dict (no progress rule)."""
    if not isinstance(state, VerifiedState):
        state = VerifiedState(dict(state), {})
    done = frozenset(k for k, r in state.reach.items() if r == Status.ACCEPTED)
    awaiting = frozenset(k for k, r in state.reach.items() if r == Status.PENDING)
    fixed = []
    for c in leases:
        peer = claimant_peer(c.peer_id)  # a device of that peer: its checkpoints are the peer's
        if state.trainers is not None and peer not in state.trainers:
            continue
        if c.state == ClaimState.DONE and c.cluster not in done:
            c = replace(c, state=ClaimState.TRAINING)
        step, ts = state.activity.get((peer, c.cluster), (0, 0.0))
        stale = (state.grace is not None and c.state == ClaimState.TRAINING
                 and state.now - max(c.since, ts) > state.grace)
        fixed.append(replace(c, progress=max(step, 0), stale=stale))
    return Snapshot(num_clusters, tuple(fixed), done, awaiting)


def _peer_of(record: Signed) -> str:
    return peer_id_of_public_key(record.owner)
