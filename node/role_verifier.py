"""The verifier: checks newly announced checkpoints and publishes signed attestations, in its own loop beside
whatever else the node does (training an expert or the router, seeding), so that no role ever keeps a node
from verifying what only it can verify (two `auto` nodes check each other while both train).

A check fetches the checkpoint (bounded by what the slot can hold), loads it into a trainer of its slot
(hashes, run, cluster, kind, preset, optimizer and RNG state), checks finiteness, recomputes the run's
validation loss on the held-out clips and checks that the step and loss can follow the checkpoint's own parent
(or the initialisation). Any failure to load what a peer served is a reject, never an exception that skips
the verdict. The attestation states what was found inside (step, parent, loss), so the acceptance rule can
contradict a record that misstates it.

Which checkpoints this node checks, and which intervals it replays (re-trains from the parent and compares the
whole state bit for bit), are its own keyed draws (swarm.verify_plan): a trainer cannot foresee or grind them.
Checkpoints that cannot be fetched are backed off per CID and never block the queue; the slot's current
leaseholder's lineage is checked first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace

from hivemind.utils.timed_storage import get_dht_time

from node.checker import CheckpointChecker
from node.context import NodeContext
from node.keeper import OwnRecords
from node.logs import event
from node.run_data import slot_training_data
from protocol.errors import ParisError
from protocol.swarm_records import (
    AttestationBody,
    CheckpointBody,
    claimant_peer,
    expert_slot,
    run_slots,
    slot_cluster,
)
from protocol.swarm_run import Schedule
from swarm.acceptance import known_facts
from swarm.dht import SwarmNode
from swarm.state import RunView, publish_attestation, record_key
from swarm.verify_plan import VerifyPlan, verifier_secret

log = logging.getLogger("node.verifier")

PER_SLOT_PER_ROUND = 8  # a flood of announcements cannot keep a verifier from its other slots
MARGIN = 2  # checkers per checkpoint beyond the quorum (some leave, some are slow)
VERIFYING_ROLES = frozenset({"auto", "expert", "router", "verifier"})  # every role but `seeder` verifies


def to_verify(view: RunView, me: str, slot: str, done: set[str] | frozenset[str] = frozenset()
              ) -> list[CheckpointBody]:
    """Trainers' records of `slot` whose CID we have not attested yet (nor checked: `done`) and did not train
    ourselves, on the lineage frontier: the parent is the initialisation, or a checkpoint we checked or that is
    accepted. Oldest first, so an honest chain becomes accepted from its root up (nothing is accepted until its
    parent is), and claims with a dangling lineage cost no verification (the rule never accepts them).
    Accepted checkpoints that an accepted descendant supersedes are left out: what consumers use is the
    newest accepted one, so a newcomer to a long (or finished) run checks that, not its whole history."""
    mine = {a.cid for peer, a in view.attestations if peer == me} | set(done)
    accepted = view.accepted_checkpoints(slot)
    known = mine | {c.cid for c in accepted}
    superseded = {c.cid for c in accepted} - ({accepted[0].cid} if accepted else set())
    seen, out = set(), []
    for peer, c in sorted(view.checkpoints, key=lambda pc: (pc[1].step, pc[1].ts)):
        if (c.slot == slot and not c.replica and peer != me and c.cid not in mine and c.cid not in seen
                and c.cid not in superseded and (c.parent is None or c.parent in known)):
            seen.add(c.cid)
            out.append(c)
            known.add(c.cid)  # its children may follow in the same round, after it
    return out


def eligible_verifiers(view: RunView, trainer: str, me: str) -> int:
    """How many members could check a checkpoint of `trainer`: those that verify (by their member record),
    other than the trainer; this node counts whatever its record says (it is asking)."""
    peers = {p for p, m in view.members.items() if getattr(m, "role", None) in VERIFYING_ROLES}
    return len((peers | {me}) - {trainer})


def lease_verdict(seen: dict[str, float], watching_since: float | None, trainer: str, first_seen: float, now: float,
                  *, window: float, defer: float, kept: Mapping[str, float] | None = None,
                  continues: bool = False) -> str:
    """Whether `trainer` could write a checkpoint of a slot whose leaseholders this verifier watched since
    `watching_since` (`seen`: peer → when it last saw that peer hold the lease): "ok" if it held the lease
    within `window` seconds before this verifier first saw the record, or if the record was already there when
    this verifier began to watch (it cannot judge what it did not see); "ok" too for a record that `continues`
    the trainer's own checkpoint that this verifier accepted, if the trainer then held an earned, renewed
    lease on the slot within `window`, winning or not (`kept`: peer → when this verifier last saw that):
    owners tied on progress are all incumbents (claim_logic.displaced: a tie displaces nobody), and a late
    joiner ranks them by the progress that *it* has verified, so an honest trainer whose checkpoints it had not
    checked yet can lose every one of its rankings to a lease an attacker wrote, and release before winning
    one; "wait" while the record is younger than `defer` (the lease may not have reached this node's reads
    yet); else "reject": copies and forks by peers that never held the slot are ignored, whatever their step
    (the start of a segment, a first checkpoint or a takeover, still needs the winning lease)."""
    if watching_since is None or first_seen <= watching_since:
        return "ok"
    if seen.get(trainer, float("-inf")) >= first_seen - window:
        return "ok"
    if continues and (kept or {}).get(trainer, float("-inf")) >= first_seen - window:
        return "ok"
    return "wait" if now - first_seen < defer else "reject"


def lease_sightings(view: RunView, dht_now: float, renewed_within: float
                    ) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """Who holds each slot's lease in `view`: slot → the peers that win it (`view.owners`), and slot → the
    peers whose lease on it is earned (an incumbent's: TRAINING or DONE, making progress) and renewed within
    `renewed_within` seconds, winning or not. A lease written once and back-dated, or stale, may still win a
    cluster nobody else holds: it makes its writer neither."""
    owners: dict[str, set[str]] = {}
    kept: dict[str, set[str]] = {}
    for lease in view.leases:
        if not lease.incumbent or dht_now - lease.ts > renewed_within:
            continue
        slot, peer = expert_slot(lease.cluster), claimant_peer(lease.peer_id)
        kept.setdefault(slot, set()).add(peer)
        if view.owners.get(lease.cluster) == lease.peer_id:
            owners.setdefault(slot, set()).add(peer)
    return owners, kept


def disputed(view: RunView, me: str, slot: str, replayed: set[str] | frozenset[str]) -> list[CheckpointBody]:
    """Checkpoints of `slot` that another peer (not their trainer) says failed a replay, and that this node has
    not replayed itself: a failed replay is decisive in the rule, so a verifier re-runs it (it is deterministic)
    rather than let a minted one stall honest work. Oldest first."""
    trainers = {c.cid: peer for peer, c in view.checkpoints if c.slot == slot and not c.replica}
    failed = {a.cid for peer, a in view.attestations if a.slot == slot and a.replayed and a.verdict == "reject"
              and peer != me and trainers.get(a.cid) not in (None, peer)}
    out, seen = [], set()
    for peer, c in sorted(view.checkpoints, key=lambda pc: (pc[1].step, pc[1].ts)):
        if (c.cid in failed and c.cid not in replayed and c.cid not in seen and c.slot == slot and not c.replica
                and peer != me):
            seen.add(c.cid)
            out.append(c)
    return out


def stale_takeover(view: RunView | None, slot: str, body: CheckpointBody, trainer: str, me: str | None = None) -> bool:
    """Whether `body` starts a new segment (its parent is another trainer's) from a checkpoint that an accepted
    checkpoint already follows: a takeover starts from the slot's newest accepted checkpoint, so a fork from an
    older one (copies of an early checkpoint by whoever holds the slot later) is no takeover.

    What `me` (the node asking) trained counts here only as the attestations judge it, never by its own
    vouching (node.checker.vouch): a trainer's reading of the rule counts its own checkpoints accepted whatever
    the verifiers said, so its own checkpoint that they rejected would make an honest takeover from its parent
    look like a fork to it alone, and two nodes could each reject the other's checkpoint at the target for good."""
    if view is None or body.parent is None:
        return False
    parent_trainers = {peer for peer, c in view.checkpoints if c.cid == body.parent and not c.replica}
    if not parent_trainers or trainer in parent_trainers:
        return False
    if me is not None:
        own = {c.cid for peer, c in view.checkpoints if peer == me and not c.replica}
        view = replace(view, local=tuple((cid, v) for cid, v in view.local if cid not in own))
    return any(c.parent == body.parent and c.cid != body.cid for c in view.accepted_checkpoints(slot))


@dataclass
class Backoff:
    """CIDs that could not be fetched: retried after a delay that doubles with each failure (capped), so a
    record nobody serves costs one attempt per window instead of a place in every round's queue."""

    base: float
    cap: float
    _until: dict[str, tuple[int, float]] = field(default_factory=dict)

    def waiting(self, cid: str, now: float) -> bool:
        return cid in self._until and now < self._until[cid][1]

    def failed(self, cid: str, now: float) -> int:
        n = self._until.get(cid, (0, 0.0))[0] + 1
        self._until[cid] = (n, now + min(self.cap, self.base * 2 ** (n - 1)))
        return n

    def forget(self, cid: str) -> None:
        self._until.pop(cid, None)


def choose(candidates: list[CheckpointBody], trainers: dict[str, str], *, plan: VerifyPlan, view: RunView, me: str,
           owner: str | None, first_seen: dict[str, float], backoff: Backoff, now: float, per_checker: float = 0.0,
           limit: int = PER_SLOT_PER_ROUND) -> list[CheckpointBody]:
    """Of one slot's frontier (`candidates`, oldest first; `trainers`: CID → its trainer's peer id), what this
    node checks this round: the CIDs it is assigned (its keyed draw, with how long it has seen the CID wait)
    whose keyed start delay has passed, not backed off, the slot's leaseholder (`owner`) first, at most
    `limit`. Records when each CID was first seen (`first_seen`, updated in place).

    The start delay (`VerifyPlan.start_delay` over a spread of `per_checker` seconds per checker, at most the
    spread; none when this node is the only one that can check it) staggers the checkers of a checkpoint in an
    order nobody else can compute: a checker re-serves what it fetched (node.checker), so one that starts after
    an earlier one has it fetches from it, not from the trainer, and the trainer uploads each checkpoint about
    once instead of once per checker."""
    picked = []
    for c in candidates:
        seen = first_seen.setdefault(c.cid, now)
        if backoff.waiting(c.cid, now):
            continue
        eligible = eligible_verifiers(view, trainers[c.cid], me)
        checkers = plan.checkers(eligible)
        spread = per_checker * checkers if checkers > 1 else 0.0
        if (plan.assigned(c.cid, eligible, now - seen)
                and now - seen >= min(plan.start_delay(c.cid, eligible, spread), spread)):
            picked.append(c)
    picked.sort(key=lambda c: (trainers[c.cid] != owner, c.step, c.ts))
    return picked[:limit]


class Verifier:
    """The verifier's state (what it attested, what it could not fetch, when it first saw each CID) and its
    rounds. Receives what it uses: the DHT node, the checker, the run, the record keeper, its keyed plan."""

    def __init__(self, node: SwarmNode, checker: CheckpointChecker, schedule: Schedule, run_id: str,
                 num_clusters: int, plan: VerifyPlan, keeper: OwnRecords, *, period: float, lease_window: float,
                 training_data: Callable[[str], Awaitable[tuple]], stopping: asyncio.Event) -> None:
        self.node, self.checker, self.schedule = node, checker, schedule
        self.run_id, self.num_clusters, self.plan, self.keeper = run_id, num_clusters, plan, keeper
        self.training_data, self.stopping = training_data, stopping
        self.attested: dict[str, AttestationBody] = {}  # CID → our attestation
        self.replayed: set[str] = set()  # CIDs this node replayed (whatever the outcome)
        self.first_seen: dict[str, float] = {}
        self.holders: dict[str, dict[str, float]] = {}  # slot → peer → when this node last saw it hold the lease
        self.watching: dict[str, float] = {}  # slot → when this node first saw anyone hold its lease
        self.kept: dict[str, dict[str, float]] = {}  # slot → peer → when last seen with an earned lease, winning or not
        self.cleared: dict[str, str] = {}  # CID → the trainer whose record of it this node accepted
        self.lease_window, self.defer = lease_window, 3 * max(period, 1.0)
        self.renewed_within = max(6 * period, 30.0)  # a lease renewed this recently is one its owner keeps
        self.period = max(period, 1.0)
        self.check_seconds: dict[str, float] = {}  # slot → how long our last fetch-and-check of it took
        self.backoff = Backoff(base=max(period, 1.0), cap=max(period, 1.0) * 32)
        self._said: set[str] = set()  # CIDs whose fetch failure was logged (once each)
        self._last_view: RunView | None = None

    def observe(self, view: RunView) -> None:
        """Note who holds each slot's lease now, and when each checkpoint record first reached this node. Fed
        by every read of the run the node makes (its lease renewals, seed rounds, these rounds), so a long
        round of checks does not leave gaps in what the leaseholder check knows."""
        now = time.monotonic()
        owners, kept = lease_sightings(view, get_dht_time(), self.renewed_within)
        for slot, peers in owners.items():
            self.watching.setdefault(slot, now)
            for peer in peers:
                self.holders.setdefault(slot, {})[peer] = now
        for slot, peers in kept.items():
            for peer in peers:
                self.kept.setdefault(slot, {})[peer] = now
        for _, c in view.checkpoints:  # when each record first reached this node (the trainer's ts is its own)
            self.first_seen.setdefault(c.cid, now)

    async def round(self, view: RunView) -> int:
        """Check what is new and assigned to us in every slot; one attestation per checkpoint. Returns how many."""
        me = self.node.peer_id
        visible = {a.cid for peer, a in view.attestations if peer == me}
        for cid, att in list(self.attested.items())[-64:]:  # a write that no peer stored is retried, not redone
            if cid not in visible:
                await publish_attestation(self.node, self.run_id, att.model_copy(update={"ts": get_dht_time()}))
        done = 0
        self.observe(view)
        self._last_view = view
        now = time.monotonic()
        for slot in run_slots(self.num_clusters):
            trainers = {c.cid: peer for peer, c in view.checkpoints if c.slot == slot and not c.replica}
            cluster = slot_cluster(slot)
            owner = view.owners.get(cluster) if cluster is not None else None
            todo = choose(to_verify(view, me, slot, set(self.attested)), trainers, plan=self.plan, view=view, me=me,
                          owner=None if owner is None else claimant_peer(owner), first_seen=self.first_seen,
                          backoff=self.backoff, now=now, per_checker=self.spread(slot))
            again = [c for c in disputed(view, me, slot, self.replayed) if not self.backoff.waiting(c.cid, now)]
            todo += again[:2]  # bounded: minted disputes cost each verifier at most two replays a round
            parents = known_facts(view.judged(slot)) if todo else {}
            for body in todo:
                if self.stopping.is_set():
                    return done
                try:
                    att = await self._attest(slot, body, parents, trainers[body.cid], force_replay=body in again)
                except Exception as e:  # our own side failed (the clips to replay on, say): not a verdict on the
                    # checkpoint, and never a stop: backed off like a fetch, so the queue moves on
                    n = self.backoff.failed(body.cid, time.monotonic())
                    log.warning("checking %s step %d (%s) failed (attempt %d; backing off): %s", slot, body.step,
                                body.cid, n, e, exc_info=not isinstance(e, ParisError | OSError))
                    continue
                if att is None:
                    continue
                self.attested[body.cid] = att
                if await publish_attestation(self.node, self.run_id, att):
                    self.keeper.add(record_key(self.run_id, att), att)
                done += 1
                event(log, f"attested {slot} checkpoint", step=body.step, cid=body.cid, verdict=att.verdict,
                      val_loss=None if att.val_loss is None else round(att.val_loss, 6), replayed=att.replayed,
                      replay_exact=att.replay_exact, reason=att.reason or None)
        return done

    def spread(self, slot: str) -> float:
        """Seconds per checker over which the checkers of one of `slot`'s checkpoints start (see `choose`): two
        of our fetch-and-checks of it, so that an earlier checker has usually fetched it (and re-serves it) when
        the next starts (with c checkers starting uniformly over 2·c·T, the next one starts within T of the
        first with probability 1 − (1 − 1/(2c))^c, about 0.42 for c = 3); at least one period, at most two
        minutes."""
        return min(120.0, max(self.period, 2 * self.check_seconds.get(slot, 0.0)))

    async def _attest(self, slot: str, body: CheckpointBody, parents, trainer: str, *,
                      force_replay: bool = False) -> AttestationBody | None:
        """Check one checkpoint (and replay it when our draw says so, or `force_replay`); None when it could not
        be fetched, or when its trainer's lease has not reached this node's reads yet."""
        now = time.monotonic()
        result = await self.checker.check(body, parents, trainer=trainer)
        if result.reason.startswith("not fetchable"):
            n = self.backoff.failed(body.cid, now)
            if body.cid not in self._said:  # said once per CID: a verifier that waits says what it waits for
                self._said.add(body.cid)
                log.info("cannot check %s step %d (%s) yet: %s; backing off (attempt %d)", slot, body.step,
                         body.cid, result.reason, n)
            return None  # not a verdict: try again after the back-off
        self.backoff.forget(body.cid)
        self.check_seconds[slot] = time.monotonic() - now
        replayed, exact = False, None
        cluster = slot_cluster(slot)
        if result.content_ok and cluster is not None:
            continues = body.parent is not None and self.cleared.get(body.parent) == trainer
            lease = lease_verdict(self.holders.get(slot, {}), self.watching.get(slot), trainer,
                                  self.first_seen.get(body.cid, now), now, window=self.lease_window, defer=self.defer,
                                  kept=self.kept.get(slot, {}), continues=continues)
            if lease == "wait":
                self.checker.hold(body)
                self.backoff.failed(body.cid, now)
                return None
            why = ""
            if lease == "reject":
                why = "published by a peer that did not hold the slot's lease (a copy or a fork by another)"
            elif stale_takeover(self._last_view, slot, body, trainer, self.node.peer_id):
                why = "takes over from a checkpoint the slot had already moved past (a fork)"
            if why:
                self.checker.refute(body, why)
                result = replace(result, ok=False, content_ok=False, reason=why)
        eligible = eligible_verifiers(self._last_view, trainer, self.node.peer_id) if self._last_view else 0
        if result.content_ok and (force_replay or self.plan.replays(body.cid, eligible)):
            replay = await self.checker.replay(body, *await self.training_data(slot), trainer=trainer)
            if replay.reason.startswith("not fetchable"):  # the parent: not a verdict either
                self.backoff.failed(body.cid, now)
                return None
            self.replayed.add(body.cid)
            replayed, exact = True, replay.replay_exact
            if not replay.ok:
                result = replace(replay, step=result.step, parent=result.parent, val_loss=result.val_loss)
        # the verdict is about the checkpoint itself, with what was found inside: a record that misstates an honest
        # checkpoint (another step, parent or loss) is contradicted by these facts under the acceptance rule,
        # without a reject that would also count against the honest record of the same CID
        found = result.step is not None
        good = result.content_ok  # a failed replay clears it
        if good:
            self.cleared[body.cid] = trainer
        return AttestationBody(slot=slot, cid=body.cid, step=result.step if found else body.step,
                               parent=result.parent if found else body.parent, val_loss=result.val_loss,
                               verdict="accept" if good else "reject", reason="" if good else result.reason[:300],
                               replayed=replayed, replay_exact=exact, ts=get_dht_time())


def make_verifier(ctx: NodeContext) -> Verifier:
    """This node's verifier of the run: its keyed plan (swarm.verify_plan), the run's schedule, the context's
    checker and record keeper, and the clips a replay trains on (node.run_data)."""
    schedule = ctx.schedule
    plan = VerifyPlan(verifier_secret(ctx.node.identity.private_key_der()),
                      wanted=max(schedule.attestations, 1) + MARGIN, replay_every=schedule.replay_every,
                      patience=3 * ctx.period)
    return Verifier(ctx.node, ctx.checker, schedule, ctx.spec.run_id, ctx.spec.num_clusters, plan, ctx.keeper,
                    period=ctx.period, lease_window=max(60.0, 6 * ctx.period), stopping=ctx.stopping,
                    training_data=lambda slot: slot_training_data(ctx.store, ctx.run, slot))
