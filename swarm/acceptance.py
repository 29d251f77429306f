"""Which published checkpoints count: one pure function over a snapshot of checkpoint and attestation
records, in the manner of claim_logic, so that every rule is unit-tested without a network.

A trainer's checkpoint record is a claim (its CID, step, parent and validation loss); an attestation is a
verifier's signed verdict on a CID, with what it found inside and the loss it recomputed. A claim is
ACCEPTED when all of these hold:

1. lineage: its parent is an ACCEPTED claim (or the step-0 initialisation, parent None), and its step is
   1..`max_interval` steps past the parent's (an honest trainer publishes at least every `max_interval`);
2. its validation loss is finite and no worse than the *best* of its accepted ancestors' (and of the
   initialisation's, when known) by more than `loss_tolerance` (relative) plus `loss_slack` (absolute): a
   chain of children each a little worse than its parent cannot compound (the router's policy bounds it by
   its parent's only: an honest router keeps training while experts train, and its held-out loss drifts);
3. no verifier other than its trainer published a failed replay of it: a replay is deterministic, so its
   failure is decisive whatever the number of accepts (a node that doubts it replays the interval itself,
   and only its own *replay* overrides it, never its own loss check; while a node whose own check found the
   content sound has not replayed it, the claim is PENDING for that node, not REJECTED: it is disputed, and
   its replay settles it, so that a failed replay minted against a finished slot's head does not make the
   slot free to train again before then);
4. at least `attestations` verifiers other than its trainer accept it, agreeing with its step, parent and
   loss; and no more verifiers reject it (or disagree with it) than accept it.

A claim that fails 1–4 for good is REJECTED (and so is everything that descends from it); one that only
lacks attestations, or whose parent does, is PENDING. A node's own check of a CID (`local`: what it found
inside, as a vote) overrides the attestations for that node: a claim it confirmed needs no quorum, and a
claim it contradicts (bad weights, another step or parent, another loss) is rejected.
Attestations rank what to download; every consumer still recomputes the loss before use, so identities
minted to attest (Sybils) can at most hide honest progress from nodes that did not check it themselves.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from enum import Enum
from math import isfinite


class Status(str, Enum):
    ACCEPTED = "accepted"
    PENDING = "pending"
    REJECTED = "rejected"


@dataclass(frozen=True)
class Policy:
    """The run's acceptance parameters (from its swarm manifest) for one slot."""

    attestations: int = 1
    max_interval: int = 100
    loss_tolerance: float = 0.1
    loss_slack: float = 0.0  # absolute allowance on top (the router's cross-entropy is noisy near zero)
    val_rtol: float = 1e-3
    init_loss: float | None = None  # the step-0 initialisation's validation loss, where the reader knows it
    # the bound holds against the lineage's best loss (experts), or against the parent's only (the router,
    # which an honest trainer keeps training while experts train, and whose held-out loss then drifts up)
    bound_to_best: bool = True


@dataclass(frozen=True)
class Claim:
    """A trainer's checkpoint record (seeders' replica records are not claims)."""

    trainer: str
    cid: str
    step: int
    parent: str | None
    val_loss: float | None
    ts: float = 0.0


@dataclass(frozen=True)
class Vote:
    """An attestation: `verifier` found `cid` to hold `step` and `parent` and recomputed `val_loss`."""

    verifier: str
    cid: str
    step: int
    parent: str | None
    val_loss: float | None
    accept: bool
    reason: str = ""
    replayed: bool = False


@dataclass(frozen=True)
class Judgement:
    claim: Claim
    status: Status
    reason: str
    accepts: int = 0
    rejects: int = 0
    replayed: int = 0
    awaiting: bool = False  # PENDING only for want of attestations (its lineage is complete and checked)
    best_loss: float | None = None  # the lowest validation loss on its lineage, itself and init included

    @property
    def complete(self) -> bool:
        """ACCEPTED, or PENDING only for want of attestations: a lineage that reaches the initialisation."""
        return self.status == Status.ACCEPTED or (self.status == Status.PENDING and self.awaiting)

    @property
    def accepted(self) -> bool:
        return self.status == Status.ACCEPTED


def _agree(a: float | None, b: float | None, rtol: float) -> bool:
    return (a is not None and b is not None and isfinite(a) and isfinite(b)
            and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12))


def lineage_problem(step: int, parent_step: int, val_loss: float, parent_loss: float | None, policy: Policy) -> str:
    """Why a checkpoint at `step` with `val_loss` cannot follow a parent at `parent_step` with `parent_loss`
    ("" if it can): the rule's step and loss conditions, shared by the rule and by every local check."""
    if not 1 <= step - parent_step <= policy.max_interval:
        return f"step {step} is not 1..{policy.max_interval} steps past its parent's step {parent_step}"
    if parent_loss is not None and val_loss > parent_loss * (1 + policy.loss_tolerance) + policy.loss_slack + 1e-9:
        slack = f" + {policy.loss_slack:.3g}" if policy.loss_slack else ""
        ref = "the best on its lineage" if policy.bound_to_best else "its parent's"
        return (f"validation loss {val_loss:.6g} is worse than {ref} ({parent_loss:.6g}) by more than "
                f"{policy.loss_tolerance:.0%}{slack}")
    return ""


def _found_sound(check: Vote | bool | None) -> bool:
    """This node's own check found the content sound (without replaying it: a replay is decisive by itself)."""
    return isinstance(check, Vote) and check.accept and not check.replayed


def _objection(claim: Claim, v: Vote, rtol: float) -> str:
    """Why vote `v` contradicts `claim` ("" if it supports it)."""
    if not v.accept:
        return f"rejected by a verifier: {v.reason or 'no reason given'}"
    if v.step != claim.step or v.parent != claim.parent:
        return f"the record says step {claim.step}, the checkpoint holds step {v.step} (or another parent)"
    if not _agree(v.val_loss, claim.val_loss, rtol):
        return f"claimed validation loss {claim.val_loss} but it recomputes to {v.val_loss}"
    return ""


@dataclass(frozen=True)
class _Tally:
    accepts: int
    rejects: int
    replayed: int  # accepts backed by a replay
    reason: str  # the first reject's reason
    replay_failed: str  # the reason of the first failed replay ("" if none)


def _tally(claim: Claim, votes: Iterable[Vote], rtol: float) -> _Tally:
    """Among distinct verifiers other than the trainer: accepts, rejects, replayed accepts, the first reject
    reason and the first failed replay's; a verifier that both supports and contradicts a claim counts once,
    against it."""
    verdicts: dict[str, tuple[str, bool]] = {}
    failed: list[str] = []
    for v in sorted(votes, key=lambda v: (v.verifier, v.accept, v.step, v.parent or "", v.reason, v.replayed,
                                          _loss_rank(v.val_loss))):
        if v.verifier == claim.trainer or v.cid != claim.cid:
            continue
        why = _objection(claim, v, rtol)
        if v.replayed and not v.accept:
            failed.append(why)
        if v.verifier not in verdicts or (why and not verdicts[v.verifier][0]):
            verdicts[v.verifier] = (why, v.replayed)
    accepts = sum(1 for why, _ in verdicts.values() if not why)
    replayed = sum(1 for why, r in verdicts.values() if not why and r)
    reasons = sorted(why for why, _ in verdicts.values() if why)
    return _Tally(accepts, len(verdicts) - accepts, replayed, reasons[0] if reasons else "",
                  sorted(failed)[0] if failed else "")


def _loss_rank(loss: float | None) -> tuple[int, float]:
    """A loss as a sort key with a total order: a NaN (a record may say anything) compares false with every
    number, and a sort keyed on it would follow the order the records were read in."""
    return (2, 0.0) if loss is None else (1, 0.0) if math.isnan(loss) else (0, loss)


def _order(c: Claim) -> tuple:
    return (c.step, c.ts, c.trainer, c.cid, c.parent or "", _loss_rank(c.val_loss))


def judge(claims: Iterable[Claim], votes: Iterable[Vote], policy: Policy,
          local: Mapping[str, Vote | bool] | None = None, anchors: Mapping[str, float] | None = None
          ) -> list[Judgement]:
    """Judge every claim of one slot; returned most advanced first (step, then newest record). The result does
    not depend on the order of `claims` or `votes`. `local`: this node's own checks (CID → what it found, as
    a vote; or a plain True/False when the caller vouches for, or refutes, every claim of that CID).
    `anchors`: CIDs whose acceptance a checked quorum certificate proves (swarm.layout), with the best loss
    known on their lineage: where the records read leave such a claim PENDING (its ancestors' records have
    expired), the certificate stands in for what is missing; a claim the records reject stays rejected, and a
    failed replay or this node's own refutation rejects an anchor too."""
    claims = sorted(claims, key=_order)
    local = local or {}
    anchors = anchors or {}
    by_cid: dict[str, list[Claim]] = {}
    for c in claims:
        by_cid.setdefault(c.cid, []).append(c)
    votes_by_cid: dict[str, list[Vote]] = {}
    for v in votes:
        votes_by_cid.setdefault(v.cid, []).append(v)
    memo: dict[Claim, Judgement] = {}

    def parent_of(c: Claim) -> tuple[Judgement | None, str]:
        """The best-judged claim of the parent's CID (accepted > pending > rejected; then a fixed order). Only
        claims at a lower step can be a parent (any other fails the step rule anyway), so the recursion always
        descends in step: no cycle, and a forged claim of a parent's CID at a later step cannot drag an honest
        lineage into a false cycle."""
        if c.parent is None:
            return None, ""
        if c.parent == c.cid:
            return Judgement(c, Status.REJECTED, "names itself as its parent"), ""
        announced = by_cid.get(c.parent, [])
        options = [j(p) for p in announced if p.step < c.step]
        if not options:
            if announced:
                return Judgement(c, Status.REJECTED, f"step {c.step} is not after its parent's"), ""
            return None, "its parent checkpoint is not announced"
        rank = {Status.ACCEPTED: 0, Status.PENDING: 1, Status.REJECTED: 2}
        return min(options, key=lambda x: (rank[x.status], _order(x.claim))), ""

    def j(c: Claim) -> Judgement:
        if c not in memo:
            memo[c] = _certified(c, _judge_one(c))
        return memo[c]

    def _certified(c: Claim, plain: Judgement) -> Judgement:
        """A certified claim that the records read leave PENDING (its ancestors' records expired, or the
        attestations that accepted it did): the certificate supplies what is missing. It never overrides a
        rejection, nor a failed replay (decisive, unless this node replayed it itself)."""
        if c.cid not in anchors or plain.status != Status.PENDING or c.val_loss is None:
            return plain
        check = local.get(c.cid)
        replayed_here = isinstance(check, Vote) and check.accept and check.replayed
        failed = _tally(c, votes_by_cid.get(c.cid, []), policy.val_rtol).replay_failed
        if failed and not replayed_here:
            if _found_sound(check):  # disputed here: this node's replay settles it (rule 3)
                return plain
            return replace(plain, status=Status.REJECTED, reason=failed, awaiting=False)
        best = min(c.val_loss, anchors[c.cid]) if policy.bound_to_best else c.val_loss
        return replace(plain, status=Status.ACCEPTED, reason="certified by a quorum certificate", awaiting=False,
                       best_loss=best)

    def _judge_one(c: Claim) -> Judgement:
        t = _tally(c, votes_by_cid.get(c.cid, []), policy.val_rtol)
        best: float | None = None

        def out(status: Status, reason: str, awaiting: bool = False) -> Judgement:
            return Judgement(c, status, reason, t.accepts, t.rejects, t.replayed, awaiting, best)

        check = local.get(c.cid)
        if check is False:
            return out(Status.REJECTED, "refuted by this node's own check")
        if isinstance(check, Vote) and (why := _objection(c, check, policy.val_rtol)):
            return out(Status.REJECTED, f"refuted by this node's own check: {why}")
        mine = check is True or isinstance(check, Vote)
        if c.val_loss is None or not isfinite(c.val_loss):
            return out(Status.REJECTED, "no finite validation loss")
        parent, missing = parent_of(c)
        if missing:
            return out(Status.PENDING, missing)
        parent_step = 0 if parent is None else parent.claim.step
        reference = policy.init_loss if parent is None else parent.best_loss  # the best on the lineage
        best = c.val_loss if reference is None or not policy.bound_to_best else min(c.val_loss, reference)
        if parent is not None and parent.status == Status.REJECTED:
            return out(Status.REJECTED, parent.reason if parent.claim is c else "descends from a rejected checkpoint")
        if why := lineage_problem(c.step, parent_step, c.val_loss, reference, policy):
            return out(Status.REJECTED, why)
        replayed_here = isinstance(check, Vote) and check.accept and check.replayed
        if t.replay_failed and not replayed_here:  # decisive: only this node's own replay outweighs it
            if _found_sound(check):  # disputed here until this node replays it
                return out(Status.PENDING, f"disputed ({t.replay_failed}): this node's replay settles it", True)
            return out(Status.REJECTED, t.replay_failed)
        if not mine and t.rejects > t.accepts:
            return out(Status.REJECTED, t.reason)
        if parent is not None and parent.status == Status.PENDING:
            return out(Status.PENDING, "its parent is not accepted yet", parent.awaiting)
        if mine or t.accepts >= policy.attestations:
            return out(Status.ACCEPTED, "verified by this node" if mine else f"{t.accepts} attestation(s)")
        return out(Status.PENDING, f"{t.accepts} of {policy.attestations} attestation(s)", True)

    judged = [j(c) for c in claims]  # ascending step: every parent is judged before its children (no recursion)
    return sorted(judged, key=lambda x: (x.claim.step, x.claim.ts), reverse=True)


def contested_replays(judgements: Iterable[Judgement], votes: Iterable[Vote], policy: Policy) -> list[Claim]:
    """The disputes that only a replay settles: REJECTED claims that a failed replay rejects directly (not an
    ancestor's failure, not their content, not this node's own check) while another verifier's replay of the
    same CID matched. A replay is deterministic, so one side lied; a reader that replays the interval itself
    learns which (its own replay overrides any number of votes, rule 3), where counting identities could not.
    Claims nobody vouched for by a replay are left out: a reader spends no replay on weights that every
    replay failed. Oldest first: a descendant's dispute matters only once its ancestor's is settled."""
    by_cid: dict[str, list[Vote]] = {}
    for v in votes:
        by_cid.setdefault(v.cid, []).append(v)
    out = []
    for j in judgements:
        if j.status != Status.REJECTED:
            continue
        t = _tally(j.claim, by_cid.get(j.claim.cid, []), policy.val_rtol)
        if t.replay_failed and j.reason == t.replay_failed and t.replayed >= 1:
            out.append(j.claim)
    return sorted(out, key=_order)


def known_facts(judgements: Iterable[Judgement]) -> dict[str, tuple[int, float | None]]:
    """CID → (step, the best validation loss on its lineage) of accepted checkpoints: what a local check
    compares a child with."""
    return {j.claim.cid: (j.claim.step, j.best_loss if j.best_loss is not None else j.claim.val_loss)
            for j in judgements if j.accepted}


def credited_steps(judgements: Iterable[Judgement]) -> dict[str, tuple[int, int]]:
    """trainer → (steps, checkpoints) it contributed by the acceptance rule: each accepted claim credits its
    trainer with the steps past its parent (from step 0 for a first checkpoint). What a peer announced but
    nobody accepted earns nothing; two branches of a healed partition both count (both were trained)."""
    judged = list(judgements)
    steps = {j.claim.cid: j.claim.step for j in judged if j.accepted}
    out: dict[str, tuple[int, int]] = {}
    for j in judged:
        if j.accepted:
            done = j.claim.step - (steps.get(j.claim.parent, 0) if j.claim.parent else 0)
            had = out.get(j.claim.trainer, (0, 0))
            out[j.claim.trainer] = (had[0] + max(done, 0), had[1] + 1)
    return out


def accepted(judgements: Iterable[Judgement]) -> list[Judgement]:
    """The accepted ones, most advanced first (judge's order kept)."""
    return [x for x in judgements if x.status == Status.ACCEPTED]


def reached(judgements: Iterable[Judgement], target: int) -> Status | None:
    """Whether the slot reached `target`: ACCEPTED if an accepted claim at or past it exists, PENDING if only
    a claim that awaits attestations does (a complete, checked lineage: a dangling parent or a cycle does not
    count), None otherwise."""
    best = None
    for x in judgements:
        if x.claim.step >= target:
            if x.status == Status.ACCEPTED:
                return Status.ACCEPTED
            if x.status == Status.PENDING and x.awaiting:
                best = Status.PENDING
    return best
