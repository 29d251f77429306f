"""The pure acceptance rule: judge, accepted and reached over hand-made lineages (each rule of the module
docstring), plus random forests of claims and votes that must keep every accepted claim's lineage sound."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from itertools import combinations
from math import inf, isfinite, nan

import pytest
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from swarm.acceptance import Claim, Judgement, Policy, Status, Vote, accepted, judge, reached

A, P, R = Status.ACCEPTED, Status.PENDING, Status.REJECTED
Q1 = Policy(attestations=1)
Q2 = Policy(attestations=2)
Q0 = Policy(attestations=0)


def claim(cid: str, step: int, parent: str | None = None, loss: float | None = 1.0, trainer: str = "peerA",
          ts: float = 0.0) -> Claim:
    return Claim(trainer, cid, step, parent, loss, ts)


def vote(c: Claim, verifier: str, accept: bool = True, **over) -> Vote:
    """A verifier's vote that agrees with everything `c` says, unless `over` changes a field."""
    return replace(Vote(verifier, c.cid, c.step, c.parent, c.val_loss, accept), **over)


def by_cid(judgements: list[Judgement]) -> dict[str, Judgement]:
    """For hand-made snapshots with one claim per CID."""
    out = {j.claim.cid: j for j in judgements}
    assert len(out) == len(judgements)
    return out


def statuses(claims, votes=(), policy=Q1, local=None) -> dict[str, Status]:
    return {cid: j.status for cid, j in by_cid(judge(claims, votes, policy, local)).items()}


# --- quorum ---------------------------------------------------------------------------------------------------


def test_first_checkpoint_accepted_with_quorum_pending_without():
    """A first checkpoint with a sane step and loss needs exactly `attestations` other verifiers."""
    c = claim("cid1", 100, None, 2.0)
    j = judge([c], [vote(c, "v1"), vote(c, "v2")], Q2)[0]
    assert j.status == A and j.accepts == 2 and j.rejects == 0 and not j.awaiting
    j = judge([c], [vote(c, "v1")], Q2)[0]
    assert j.status == P and j.awaiting and j.accepts == 1
    j = judge([c], [], Q2)[0]
    assert j.status == P and j.awaiting


def test_trainer_self_attestations_do_not_count():
    """A trainer vouching for its own work is no evidence, for or against."""
    c = claim("cid1", 10, trainer="peerA")
    j = judge([c], [vote(c, "peerA"), vote(c, "peerA"), vote(c, "v1")], Q2)[0]
    assert j.status == P and j.awaiting and j.accepts == 1
    j = judge([c], [vote(c, "peerA", False), vote(c, "peerA", False), vote(c, "v1")], Q1)[0]
    assert j.status == A and j.rejects == 0


def test_zero_quorum_accepts_without_votes():
    """attestations=0 (a private swarm that trusts its trainers) accepts on lineage alone."""
    c1 = claim("cid1", 50)
    c2 = claim("cid2", 100, "cid1")
    assert statuses([c1, c2], [], Q0) == {"cid1": A, "cid2": A}


def test_votes_for_other_cids_are_ignored_and_replays_counted():
    """Only votes naming this CID count; replayed accepts are tallied separately."""
    c = claim("cid1", 10)
    other = claim("cid9", 10)
    j = judge([c], [vote(other, "v1"), vote(other, "v2", False), vote(c, "v3", replayed=True)], Q1)[0]
    assert (j.status, j.accepts, j.rejects, j.replayed) == (A, 1, 0, 1)


# --- step / lineage -------------------------------------------------------------------------------------------


def test_step_too_far_past_parent_is_rejected():
    """An honest trainer publishes at least every max_interval steps: a huge step is a lie however attested."""
    fake = claim("random", 10**6, None, 0.1, trainer="evil")
    assert judge([fake], [vote(fake, f"v{i}") for i in range(5)], Q1)[0].status == R
    # an honest CID re-announced by someone else at a huge step, on an honest parent
    c1 = claim("cid1", 100, None, 2.0)
    c2 = claim("cid2", 200, "cid1", 1.9)
    evil = claim("cid2", 10**6, "cid1", 1.9, trainer="evil")
    votes = [vote(c1, "v1"), vote(c2, "v1")]
    js = judge([c1, c2, evil], votes, Q1)
    got = {(j.claim.trainer, j.claim.step): j.status for j in js}
    assert got == {("peerA", 100): A, ("peerA", 200): A, ("evil", 10**6): R}
    assert reached(js, 10**6) is None and reached(js, 200) == A
    assert statuses([claim("cid1", 101, None)], [], Q0) == {"cid1": R}  # first: at most max_interval from 0
    assert statuses([claim("cid1", 100, None)], [], Q0) == {"cid1": A}


def test_step_not_after_parent_is_rejected():
    """A child must be at least one step past its parent (and a first checkpoint past step 0)."""
    c1 = claim("cid1", 50)
    for step in (50, 49, 0):
        assert statuses([c1, claim("cid2", step, "cid1")], [], Q0)["cid2"] == R
    assert statuses([c1, claim("cid2", 51, "cid1")], [], Q0)["cid2"] == A
    assert statuses([claim("cid0", 0, None)], [], Q0) == {"cid0": R}


# --- loss -----------------------------------------------------------------------------------------------------


def test_loss_worse_than_parent_beyond_tolerance_is_rejected():
    """Relative tolerance against the parent's loss; within it (or better) passes."""
    pol = Policy(attestations=0, loss_tolerance=0.1)
    c1 = claim("cid1", 10, None, 2.0)
    assert statuses([c1, claim("cid2", 20, "cid1", 2.3)], [], pol)["cid2"] == R
    assert statuses([c1, claim("cid2", 20, "cid1", 2.19)], [], pol)["cid2"] == A
    assert statuses([c1, claim("cid2", 20, "cid1", 2.2)], [], pol)["cid2"] == A  # the bound itself
    assert statuses([c1, claim("cid2", 20, "cid1", 0.5)], [], pol)["cid2"] == A


def test_init_loss_bounds_a_first_checkpoint():
    """With parent None the initialisation's loss is the reference, when the policy knows it."""
    pol = Policy(attestations=0, loss_tolerance=0.1, init_loss=5.0)
    assert statuses([claim("cid1", 10, None, 5.6)], [], pol) == {"cid1": R}
    assert statuses([claim("cid1", 10, None, 5.4)], [], pol) == {"cid1": A}
    assert statuses([claim("cid1", 10, None, 50.0)], [], Q0) == {"cid1": A}  # init_loss unknown: no bound


@pytest.mark.parametrize("loss", [None, inf, -inf, nan])
def test_missing_or_non_finite_val_loss_is_rejected(loss):
    """A checkpoint without a finite validation loss cannot be compared, so it never counts."""
    c = claim("cid1", 10, None, loss)
    assert judge([c], [vote(c, "v1"), vote(c, "v2")], Q1)[0].status == R
    assert judge([c], [], Q0, {"cid1": True})[0].status == R


# --- descent --------------------------------------------------------------------------------------------------


def test_descendants_of_a_rejected_checkpoint_are_rejected():
    """Rejection is for good and inherited, however well the descendants are attested."""
    bad = claim("cid1", 10**6, None)
    kids = [claim("cid2", 10**6 + 10, "cid1"), claim("cid3", 10**6 + 20, "cid2")]
    votes = [vote(c, v) for c in [bad, *kids] for v in ("v1", "v2")]
    assert statuses([bad, *kids], votes, Q1) == {"cid1": R, "cid2": R, "cid3": R}


def test_child_of_a_pending_parent_is_pending_and_mirrors_awaiting():
    """A child waits for its parent; it awaits attestations only if its parent's lineage is complete."""
    c1 = claim("cid1", 10)
    c2 = claim("cid2", 20, "cid1")
    js = by_cid(judge([c1, c2], [vote(c2, "v1")], Q1))
    assert js["cid1"].status == P and js["cid1"].awaiting
    assert js["cid2"].status == P and js["cid2"].awaiting and js["cid2"].accepts == 1
    d1 = claim("cid1", 10, "ghost")  # dangling: not awaiting, and neither is its child
    js = by_cid(judge([d1, c2], [vote(d1, "v1"), vote(c2, "v1")], Q1))
    assert js["cid1"].status == P and not js["cid1"].awaiting
    assert js["cid2"].status == P and not js["cid2"].awaiting


def test_dangling_parent_is_pending_not_awaiting():
    """A parent CID nobody announced: the lineage cannot be checked, so it is not merely awaiting votes."""
    c = claim("cid2", 20, "cid1")
    j = judge([c], [vote(c, "v1"), vote(c, "v2")], Q1)[0]
    assert j.status == P and not j.awaiting


def test_parent_cycle_terminates_and_is_never_accepted():
    """A parent cycle (impossible for content-addressed CIDs) must not recurse forever or count."""
    a, b = claim("A", 20, "B"), claim("B", 10, "A")
    selfish = claim("S", 5, "S")
    votes = [vote(c, v) for c in (a, b, selfish) for v in ("v1", "v2")]
    for claims in ([a, b, selfish], [selfish, b, a]):
        for pol in (Q0, Q1):
            js = judge(claims, votes, pol)
            assert len(js) == 3
            assert all(j.status != A and not j.awaiting for j in js)
            assert reached(js, 0) is None


# --- votes ----------------------------------------------------------------------------------------------------


def test_disagreeing_votes_count_as_rejects():
    """A verifier that found another step or parent inside, or recomputed another loss, rejects."""
    c1 = claim("cid1", 10, None, 2.0)
    c = claim("cid2", 20, "cid1", 1.0)
    pol = Policy(attestations=1, val_rtol=1e-3)
    for over in ({"step": 21}, {"parent": None}, {"parent": "cid9"}, {"val_loss": 1.01}, {"val_loss": None},
                 {"val_loss": nan}):
        j = by_cid(judge([c1, c], [vote(c1, "v0"), vote(c, "v1", **over)], pol))["cid2"]
        assert (j.status, j.accepts, j.rejects) == (R, 0, 1), over
    j = by_cid(judge([c1, c], [vote(c1, "v0"), vote(c, "v1", val_loss=1.0005)], pol))["cid2"]
    assert (j.status, j.accepts, j.rejects) == (A, 1, 0)  # within val_rtol


def test_more_rejects_than_accepts_is_rejected():
    """Accepts must at least match rejects; a tie still accepts once the quorum is met."""
    c = claim("cid1", 10)
    j = judge([c], [vote(c, "v1"), vote(c, "v2", False, reason="bad weights"), vote(c, "v3", False)], Q1)[0]
    assert j.status == R and "bad weights" in j.reason
    assert judge([c], [vote(c, "v1"), vote(c, "v2", False)], Q1)[0].status == A
    assert judge([c], [vote(c, "v1", False)], Q0)[0].status == R  # even without a quorum to meet


def test_sybil_accepts_win_the_rule_but_not_a_node_that_refuted_locally():
    """Documented limit: minted identities can attest a lie into ACCEPTED; a node's own check overrides."""
    c1 = claim("cid1", 10, None, 2.0)
    lie = claim("cid2", 20, "cid1", 0.01, trainer="evil")
    kid = claim("cid3", 30, "cid2", 0.01, trainer="evil")
    votes = [vote(c1, "v1")] + [vote(c, f"sybil{i}") for c in (lie, kid) for i in range(10)]
    votes.append(vote(lie, "v1", False))
    assert statuses([c1, lie, kid], votes, Q1) == {"cid1": A, "cid2": A, "cid3": A}
    js = judge([c1, lie, kid], votes, Q1, {"cid2": False})
    assert {cid: j.status for cid, j in by_cid(js).items()} == {"cid1": A, "cid2": R, "cid3": R}
    assert reached(js, 30) is None


def test_local_verification_needs_no_quorum_but_keeps_lineage_rules():
    """local True skips the votes (quorum and rejects) for that CID, never the step, loss or lineage."""
    pol = Policy(attestations=5, loss_tolerance=0.1)
    c1 = claim("cid1", 10, None, 2.0)
    c2 = claim("cid2", 20, "cid1", 1.9)
    assert statuses([c1], [vote(c1, "v1", False), vote(c1, "v2", False)], pol, {"cid1": True}) == {"cid1": A}
    # the child still needs its own quorum, or its own local verdict
    assert statuses([c1, c2], [], pol, {"cid1": True}) == {"cid1": A, "cid2": P}
    assert statuses([c1, c2], [], pol, {"cid1": True, "cid2": True}) == {"cid1": A, "cid2": A}
    # locally verified yet on a pending parent: pending
    assert statuses([c1, c2], [], pol, {"cid2": True}) == {"cid1": P, "cid2": P}
    # locally verified yet too far, too early, too lossy, or on a rejected parent: rejected
    local = {"x": True}
    assert statuses([claim("x", 10**6)], [], pol, local) == {"x": R}
    assert statuses([c1, claim("x", 10, "cid1")], [], pol, {"cid1": True, "x": True})["x"] == R
    assert statuses([c1, claim("x", 20, "cid1", 3.0)], [], pol, {"cid1": True, "x": True})["x"] == R
    assert statuses([claim("cid1", 10**6), claim("x", 10**6 + 1, "cid1")], [], pol,
                    {"cid1": True, "x": True}) == {"cid1": R, "x": R}


# --- reached / order ------------------------------------------------------------------------------------------


def test_reached_accepted_pending_or_none():
    """ACCEPTED if an accepted claim at or past target exists; PENDING only for an awaiting one."""
    c1 = claim("cid1", 50)
    c2 = claim("cid2", 100, "cid1")
    js = judge([c1, c2], [vote(c1, "v1")], Q1)  # cid2 awaits its attestation
    assert reached(js, 50) == A and reached(js, 100) == P and reached(js, 101) is None
    js = judge([c1, c2], [vote(c1, "v1"), vote(c2, "v1")], Q1)
    assert reached(js, 100) == A
    js = judge([c1, c2], [vote(c1, "v1"), vote(c2, "v1", False)], Q1)  # cid2 rejected
    assert reached(js, 100) is None and reached(js, 50) == A
    assert reached([], 0) is None


def test_reached_ignores_dangling_and_cyclic_claims():
    """A PENDING claim whose lineage cannot be checked must not hold a cluster as VERIFYING."""
    dangling = claim("cid5", 500, "ghost")
    a, b = claim("A", 600, "B"), claim("B", 590, "A")
    orphan_kid = claim("cid6", 510, "cid5")
    js = judge([dangling, a, b, orphan_kid], [], Q1)
    assert all(j.status == P and not j.awaiting for j in js if j.claim.cid in ("cid5", "cid6"))
    assert reached(js, 500) is None
    c1 = claim("cid1", 50)
    js = judge([c1, dangling, a, b], [], Q1)  # c1 awaits: PENDING comes from it only
    assert reached(js, 50) == P and reached(js, 51) is None


def test_judge_returns_most_advanced_first_and_accepted_keeps_order():
    """Step first, then the newest record; accepted() filters without reordering."""
    c1 = claim("cid1", 10, ts=5.0)
    c2 = claim("cid2", 20, "cid1", ts=1.0)
    c2b = claim("cid2", 20, "cid1", trainer="peerB", ts=2.0)
    c3 = claim("cid3", 30, "cid2", ts=0.0)
    bad = claim("cid4", 25, "ghost", ts=9.0)
    js = judge([c1, c3, bad, c2, c2b], [vote(c, "v1") for c in (c1, c2, c3)], Q1)
    assert [j.claim for j in js] == [c3, bad, c2b, c2, c1]
    assert [j.claim for j in accepted(js)] == [c3, c2b, c2, c1]
    assert all(j.accepted for j in accepted(js)) and not js[1].accepted


# --- defects found by these tests, fixed in acceptance.py: kept as regressions -------------------------------


def test_cycle_statuses_independent_of_claim_order():
    """Every node must reach the same verdicts from the same snapshot, whatever order the DHT returns."""
    a, b = claim("A", 6, "B"), claim("B", 5, "A")
    assert statuses([a, b], [], Q0) == statuses([b, a], [], Q0)  # was {A: P, B: P} vs {A: P, B: R}


def test_claim_descending_from_its_own_cid_is_order_independent():
    """X(step 3, parent Y) -> Y(step 2, parent X) -> X(step 1, root): no content can be its own ancestor."""
    x_root = claim("X", 1, None)
    y = claim("Y", 2, "X")
    x_loop = claim("X", 3, "Y", trainer="peerB")

    def st_of(claims):
        return {(j.claim.trainer, j.claim.cid): j.status for j in judge(claims, [], Q0)}

    assert st_of([x_loop, y, x_root]) == st_of([y, x_loop, x_root])  # was: peerB's X ACCEPTED vs PENDING


def test_parent_choice_independent_of_claim_order():
    """A re-announcement of a verified parent CID with a false low loss must not flip a child by order."""
    honest = claim("P", 10, None, 1.0, trainer="honest")
    evil = claim("P", 10, None, 0.01, trainer="evil")
    kid = claim("C", 20, "P", 0.95, trainer="honest")
    pol, local = Q1, {"P": True}

    def kid_status(claims):
        return next(j.status for j in judge(claims, [], pol, local) if j.claim.cid == "C")

    assert kid_status([honest, evil, kid]) == kid_status([evil, honest, kid])  # was PENDING vs REJECTED


def test_local_verdict_does_not_accept_a_misstated_reannouncement():
    """The node verified the content of P (step 10); a claim that P is step 100 is not what it verified."""
    honest = claim("P", 10, None, 1.0, trainer="honest")
    evil = claim("P", 100, None, 0.01, trainer="evil")
    votes = [vote(honest, "v1")]  # v1 found step 10 inside: a reject of evil's claim
    mine = Vote("local", "P", 10, None, 1.0, True)  # what this node found inside P
    js = judge([honest, evil], votes, Q1, {"P": mine})
    assert reached(js, 100) != A
    assert {j.claim.trainer: j.status for j in js} == {"honest": A, "evil": R}


def test_quorum_counts_distinct_verifiers():
    """The docstring asks for `attestations` verifiers other than the trainer."""
    c = claim("cid1", 10)
    assert judge([c], [vote(c, "v1")] * 3, Policy(attestations=3))[0].status != A


# --- local checks as votes ------------------------------------------------------------------------------------


def test_local_check_vote_confirms_or_refutes_each_claim_of_its_cid():
    """A node's own check is what it found inside: it confirms the claims that match it and refutes the rest."""
    c1 = claim("cid1", 10, None, 2.0)
    pol = Policy(attestations=5)
    assert statuses([c1], [], pol, {"cid1": vote(c1, "me")}) == {"cid1": A}
    for over in ({"accept": False}, {"step": 11}, {"parent": "cid0"}, {"val_loss": 2.5}, {"val_loss": None}):
        j = judge([c1], [vote(c1, f"v{i}") for i in range(5)], pol, {"cid1": vote(c1, "me", **over)})[0]
        assert j.status == R and "own check" in j.reason, over
    kid = claim("cid2", 20, "cid1", 1.9)
    assert statuses([c1, kid], [], pol, {"cid1": vote(c1, "me", False), "cid2": vote(kid, "me")}) == \
        {"cid1": R, "cid2": R}


def test_local_true_vouches_for_every_claim_of_its_cid():
    """Documented: a plain True is the caller vouching for every claim of that CID, misstated or not."""
    honest = claim("P", 10, None, 1.0, trainer="honest")
    evil = claim("P", 100, None, 0.01, trainer="evil")
    js = judge([honest, evil], [vote(honest, "v1")], Q1, {"P": True})
    assert {j.claim.trainer: j.status for j in js} == {"honest": A, "evil": A}


def test_honest_chain_without_forgeries_is_accepted():
    """Control for the forged back-edge case below: Q -> P -> L -> K, each attested twice."""
    chain = [claim("Q", 1), claim("P", 10, "Q"), claim("L", 20, "P"), claim("K", 30, "L")]
    votes = [vote(c, v) for c in chain for v in ("v1", "v2")]
    assert statuses(chain, votes, Q1) == {"Q": A, "P": A, "L": A, "K": A}


def test_forged_back_edge_claim_does_not_reject_honest_lineage():
    """One free record by anyone (no votes, no Sybils) must not reject honest, attested, locally checked work."""
    chain = [claim("Q", 1), claim("P", 10, "Q"), claim("L", 20, "P"), claim("K", 30, "L")]
    votes = [vote(c, v) for c in chain for v in ("v1", "v2")]
    forged = claim("Q", 40, "L", trainer="evil")  # "Q's content descends from L": impossible, and unattested
    local = {c.cid: vote(c, "me") for c in chain[1:]}
    js = judge([*chain, forged], votes, Q1, local)
    got = {(j.claim.trainer, j.claim.cid): j.status for j in js}
    assert got[("peerA", "L")] == A and got[("peerA", "K")] == A  # actual: both REJECTED
    assert reached(js, 30) == A  # actual: None


# --- properties -----------------------------------------------------------------------------------------------

TRAINERS = ["peerA", "peerB", "peerC"]
VERIFIERS = [*TRAINERS, "v1", "v2", "v3", "sybil"]
BAD_DELTAS = [-1, 0, 101, 10**6]
LOSS_FACTORS = [0.5, 0.9, 0.99, 1.0, 1.0, 1.05, 1.1]
BAD_LOSSES = [1.2, 2.0, 3.0, None, inf, nan]
MOSTLY = st.sampled_from([True] * 5 + [False])  # honest five times in six
SOME = st.integers(0, 2 ** len(VERIFIERS) - 1)  # a set of verifiers, as a bit mask
TRIOS = [sum(1 << k for k in trio) for trio in combinations(range(len(VERIFIERS)), 3)]
OBJECTIONS = [{"accept": False}, {"step": 10**7}, {"parent": "elsewhere"}, {"val_loss": 123.0}]

policies = st.builds(Policy, attestations=st.sampled_from([0, 1, 1, 2, 3]), max_interval=st.sampled_from([1, 5, 100]),
                     loss_tolerance=st.sampled_from([0.0, 0.05, 0.1, 0.5]), val_rtol=st.sampled_from([1e-3, 0.1]),
                     init_loss=st.sampled_from([None, 5.0, 6.0]))


@st.composite
def lineages(draw, unique: bool = False, acyclic: bool = False):
    """(claims, votes, policy, local): a random forest (or, unless acyclic, a tangle with cycles) of claims,
    CIDs possibly claimed by several trainers unless unique, some parents dangling; mostly honest steps,
    losses and votes, so that long accepted chains occur next to every kind of fault. `local` holds plain
    verdicts and found-inside votes, confirming or objecting."""
    policy = draw(policies)
    n = draw(st.integers(0, 8))
    claims: list[Claim] = []
    for i in range(n):
        ci = i if unique else draw(st.integers(0, n - 1))
        kind = draw(st.sampled_from(["root", "child", "child", "child", "child", "dangling"]))
        parent = None
        if kind == "dangling":
            parent = "ghost"
        elif kind == "child" and not (acyclic and ci == 0):
            parent = f"cid{draw(st.integers(0, ci - 1)) if acyclic else draw(st.integers(0, n - 1))}"
        bases = [c for c in claims if c.cid == parent]
        base = draw(st.sampled_from(bases)) if bases else None
        base_step = base.step if base else 0 if parent is None else draw(st.integers(0, 300))
        base_loss = (base.val_loss if base and base.val_loss is not None and isfinite(base.val_loss)
                     else 5.0)
        if draw(MOSTLY):
            step = base_step + draw(st.integers(1, policy.max_interval))
        else:
            step = max(0, base_step + draw(st.sampled_from(BAD_DELTAS) | st.integers(-3, 120)))
        factor = draw(st.sampled_from(LOSS_FACTORS) if draw(MOSTLY) else st.sampled_from(BAD_LOSSES))
        loss = factor if factor is None or not isfinite(factor) else base_loss * factor
        claims.append(Claim(draw(st.sampled_from(TRAINERS)), f"cid{ci}", step, parent, loss,
                            float(draw(st.integers(0, 3)))))
    votes: list[Vote] = []
    for c in claims:  # the verifiers that got to it: a quorum, a few, or a dispute
        mood = draw(st.sampled_from(["attested"] * 3 + ["few", "disputed"]))
        ayes = draw(SOME) | (draw(st.sampled_from(TRIOS)) if mood == "attested" else 0)
        votes += [vote(c, v) for k, v in enumerate(VERIFIERS) if ayes >> k & 1]
        if mood == "disputed":
            nays = draw(SOME) | 1 << draw(st.integers(0, len(VERIFIERS) - 1))
            votes += [vote(c, v, False, reason="bad") for k, v in enumerate(VERIFIERS) if nays >> k & 1]
    if claims:  # and noise: refusals, disagreements, replays, duplicates
        for _ in range(draw(st.integers(0, 6))):
            c = draw(st.sampled_from(claims))
            v = vote(c, draw(st.sampled_from(VERIFIERS)), draw(st.booleans()), replayed=draw(st.booleans()))
            how = draw(st.sampled_from(["agree", "agree", "step", "parent", "loss", "noloss", "othercid"]))
            over = {"step": {"step": c.step + 1}, "parent": {"parent": "cid0" if c.parent != "cid0" else None},
                    "loss": {"val_loss": 123.0}, "noloss": {"val_loss": None},
                    "othercid": {"cid": "ghost"}}.get(how, {})
            votes.append(replace(v, **over))
    local: dict[str, Vote | bool] = {}
    for c in draw(st.lists(st.sampled_from(claims), max_size=2, unique=True)) if claims else []:
        kind = draw(st.sampled_from(["true", "false", "confirm", "confirm", "object"]))
        local[c.cid] = {"true": True, "false": False}.get(kind) if kind in ("true", "false") else \
            vote(c, "me", **(draw(st.sampled_from(OBJECTIONS)) if kind == "object" else {}))
    return claims, votes, policy, local


any_lineage = st.one_of(lineages(), lineages(acyclic=True), lineages(unique=True, acyclic=True))


def _loss_ok(loss: float, ref: float | None, policy: Policy) -> bool:
    return ref is None or loss <= ref * (1 + policy.loss_tolerance) + 1e-9


def _valid_parents(c: Claim, ok: list[Claim], policy: Policy) -> list[Claim]:
    return [p for p in ok if p.cid == c.parent and 1 <= c.step - p.step <= policy.max_interval
            and _loss_ok(c.val_loss, p.val_loss, policy)]


def _supports(v: Vote, c: Claim, policy: Policy) -> bool:
    return (v.accept and v.step == c.step and v.parent == c.parent and v.val_loss is not None
            and isfinite(v.val_loss) and abs(v.val_loss - c.val_loss) <= policy.val_rtol * max(abs(v.val_loss),
                                                                                               abs(c.val_loss)))


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
@settings(max_examples=150, deadline=None)
@given(any_lineage)
def test_accepted_claims_have_sound_lineage_and_quorum(case):
    """(1) one judgement per claim, most advanced first; (2) an accepted claim's whole chain down to the
    initialisation is accepted, 1..max_interval steps apart and within loss_tolerance; (3) without a local
    check, `attestations` distinct verifiers other than the trainer support it and no more object."""
    claims, votes, policy, local = case
    js = judge(claims, votes, policy, local)
    assert Counter(j.claim for j in js) == Counter(claims)
    keys = [(j.claim.step, j.claim.ts) for j in js]
    assert keys == sorted(keys, reverse=True)
    ok = [j.claim for j in accepted(js)]
    assert ok == [j.claim for j in js if j.status == A]
    for c in ok:
        cur = c  # walk the accepted chain down to the initialisation; steps strictly decrease, so it ends
        while cur.parent is not None:
            assert cur.val_loss is not None and isfinite(cur.val_loss)
            parents = _valid_parents(cur, ok, policy)
            assert parents, (cur, c)
            cur = max(parents, key=lambda p: p.step)
        assert 1 <= cur.step <= policy.max_interval and _loss_ok(cur.val_loss, policy.init_loss, policy)
        if local.get(c.cid) is None:
            mine = [v for v in votes if v.cid == c.cid and v.verifier != c.trainer]
            objectors = {v.verifier for v in mine if not _supports(v, c, policy)}
            supporters = {v.verifier for v in mine} - objectors
            assert len(supporters) >= policy.attestations
            assert len(objectors) <= len(supporters)
    for target in (0, 50, 200, 10**6):
        at = [j for j in js if j.claim.step >= target]
        want = A if any(j.status == A for j in at) else P if any(j.status == P and j.awaiting for j in at) else None
        assert reached(js, target) == want
    assert all(not j.awaiting or j.status == P for j in js)


@pytest.mark.slow  # over 1.5 s: the default `pytest` stays under a minute
@settings(max_examples=150, deadline=None)
@given(any_lineage, st.booleans())
def test_trainer_self_attestations_change_nothing(case, accept):
    """(4) Extra votes by each claim's own trainer (accepting or rejecting, agreeing or not) are ignored."""
    claims, votes, policy, local = case
    trainers: dict[str, set[str]] = {}
    for c in claims:
        trainers.setdefault(c.cid, set()).add(c.trainer)
    mine = [c for c in claims if trainers[c.cid] == {c.trainer}]  # a vote names a CID, not a claim
    own = [vote(c, c.trainer, accept) for c in mine] + [vote(c, c.trainer, not accept, step=c.step + 7) for c in mine]
    assert judge(claims, votes + own, policy, local) == judge(claims, votes, policy, local)


@settings(max_examples=150, deadline=None)
@given(st.one_of(lineages(unique=True), lineages(unique=True, acyclic=True)), st.data())
def test_local_refutation_blocks_the_claim_and_its_descendants(case, data):
    """(5) What this node refuted (False, or a found-inside vote that contradicts the claim) is never
    accepted, nor is anything descending from it, whatever the attestations say."""
    claims, votes, policy, _ = case
    local: dict[str, Vote | bool] = {}
    refuted = set()
    targets = [j.claim for j in accepted(judge(claims, votes, policy))] or claims  # refute what would count
    for c in data.draw(st.lists(st.sampled_from(targets), max_size=3, unique=True)) if targets else []:
        how = data.draw(st.sampled_from(["false", "confirm", *range(len(OBJECTIONS))]))
        if how == "confirm":
            local[c.cid] = vote(c, "me")
        else:
            local[c.cid] = False if how == "false" else vote(c, "me", **OBJECTIONS[how])
            refuted.add(c.cid)
    parent = {c.cid: c.parent for c in claims}

    def descends_from_refuted(cid: str | None) -> bool:
        seen = set()
        while cid is not None and cid not in seen:
            if cid in refuted:
                return True
            seen.add(cid)
            cid = parent.get(cid)
        return False

    for j in judge(claims, votes, policy, local):
        if descends_from_refuted(j.claim.cid):
            assert j.status != A, j


@settings(max_examples=150, deadline=None)
@given(any_lineage, st.randoms(use_true_random=False))
def test_judge_is_deterministic_and_independent_of_input_order(case, rnd: random.Random):
    """(6) Nodes read the same records in different orders (and CIDs re-announced, cycles included): they
    must agree on every judgement."""
    claims, votes, policy, local = case

    def verdicts(cs, vs):
        js = judge(cs, vs, policy, local)
        return [(j.claim.step, j.claim.ts) for j in js], Counter(js)

    first = verdicts(claims, votes)
    assert verdicts(claims, votes) == first
    cs, vs = list(claims), list(votes)
    rnd.shuffle(cs)
    rnd.shuffle(vs)
    assert verdicts(cs, vs) == first


@st.composite
def forged_chains(draw):
    """An honest, attested chain plus up to three unattested claims, by a forger, of CIDs in it."""
    policy = Policy(attestations=draw(st.integers(1, 2)), max_interval=10)
    chain: list[Claim] = []
    for i in range(draw(st.integers(2, 6))):
        step = (chain[-1].step if chain else 0) + draw(st.integers(1, 10))
        chain.append(claim(f"cid{i}", step, chain[-1].cid if chain else None, 5.0 - i * 0.1))
    votes = [vote(c, v) for c in chain for v in ("v1", "v2")]
    cids = [c.cid for c in chain]
    forged = draw(st.lists(st.builds(Claim, st.just("forger"), st.sampled_from(cids),
                                     st.integers(0, chain[-1].step + 20), st.sampled_from([None, *cids]),
                                     st.sampled_from([0.01, 5.0])), max_size=3))
    return chain, votes, policy, forged


@settings(max_examples=200, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate])  # no shrinking
@given(forged_chains())
def test_unattested_forgeries_never_demote_an_accepted_chain(case):
    """Claims nobody attested cannot be accepted (attestations >= 1), so they must not change what is."""
    chain, votes, policy, forged = case
    assert all(j.accepted for j in judge(chain, votes, policy))
    after = judge(chain + forged, votes, policy)
    assert all(j.accepted for j in after if j.claim.trainer != "forger")


def test_a_long_announced_chain_is_judged_without_recursion():
    """Records are free to announce: a chain of thousands must not exhaust the stack of every reader."""
    chain = [Claim("peerA", f"c{i}", i + 1, f"c{i - 1}" if i else None, 1.0) for i in range(5000)]
    js = judge(list(reversed(chain)), [], Policy(attestations=0, max_interval=1))
    assert all(j.accepted for j in js) and js[0].claim.step == 5000


def test_an_absolute_slack_absorbs_noise_near_zero_loss():
    """The router's held-out cross-entropy near zero moves by a few hundredths between honest checkpoints."""
    parent = Claim("peerA", "p", 10, None, 0.032)
    child = Claim("peerA", "c", 20, "p", 0.040)  # +25 %: beyond the relative tolerance alone
    strict = Policy(attestations=0, max_interval=10, loss_tolerance=0.1)
    assert by_cid(judge([parent, child], [], strict))["c"].status == R
    slack = replace(strict, loss_slack=0.07)
    assert by_cid(judge([parent, child], [], slack))["c"].status == A
    noise = Claim("peerA", "n", 20, "p", 5.0)  # replaced weights: far beyond any slack
    assert by_cid(judge([parent, noise], [], slack))["n"].status == R


def test_credit_goes_to_accepted_work_only_and_both_branches_of_a_split_count():
    from swarm.acceptance import credited_steps

    a10 = claim("a10", 10, trainer="A")
    a20 = claim("a20", 20, "a10", trainer="A")
    b30 = claim("b30", 30, "a20", trainer="B")  # B took over from A's step 20
    c25 = claim("c25", 25, "a20", trainer="C")  # C trained on the other side of a partition
    liar = claim("x90", 90, "a20", loss=50.0, trainer="X")  # worse loss: rejected, earns nothing
    unseen = claim("b40", 40, "b30", trainer="B")  # nobody attested it yet: pending, earns nothing yet
    claims = [a10, a20, b30, c25, liar, unseen]
    votes = [vote(c, "V") for c in (a10, a20, b30, c25)] + [vote(liar, "V", accept=False, reason="loss")]
    got = credited_steps(judge(claims, votes, Q1))
    assert got == {"A": (20, 2), "B": (10, 1), "C": (5, 1)}


# --- issue 29: compounding, decisive replays ------------------------------------------------------------------


def test_the_loss_bound_holds_against_the_best_ancestor_so_losses_cannot_compound():
    """30 one-step children each 9 % worse than their parent were all accepted at 13x the root's loss when
    each was compared with its parent only; against the lineage's best, the second already fails."""
    pol = Policy(attestations=0, loss_tolerance=0.1)
    chain = [claim("c0", 1, None, 1.0)]
    for i in range(1, 30):
        chain.append(claim(f"c{i}", i + 1, f"c{i - 1}", 1.0 * 1.09**i))
    got = statuses(chain, [], pol)
    assert got["c0"] == A and got["c1"] == A and all(got[f"c{i}"] == R for i in range(2, 30))
    assert "the best on its lineage" in by_cid(judge(chain, [], pol))["c2"].reason
    # the router's bound is its parent's (an honest router drifts up while it keeps training)
    assert statuses(chain, [], replace(pol, bound_to_best=False)) == {c.cid: A for c in chain}
    # a dip then a rise within the tolerance of the best passes; the best includes the initialisation
    ok = [claim("d0", 1, None, 2.0), claim("d1", 2, "d0", 1.0), claim("d2", 3, "d1", 1.09)]
    assert set(statuses(ok, [], pol).values()) == {A}
    assert statuses([claim("e0", 1, None, 1.05)], [], replace(pol, init_loss=0.9))["e0"] == R


def test_a_failed_replay_is_decisive_and_only_a_replay_here_outweighs_it():
    """Two minted accepts beat two honest rejects under a vote count; a failed replay rejects the checkpoint and
    its descendants whatever the accepts. This node's own loss check does not override it (the claim is disputed
    for this node: PENDING until its own replay, never ACCEPTED); its own replay does."""
    c1 = claim("cid1", 10, None, 2.0)
    c2 = claim("cid2", 20, "cid1", 1.9)
    kid = claim("cid3", 30, "cid2", 1.8)
    minted = [vote(c, f"sybil{i}") for c in (c1, c2, kid) for i in range(5)]
    failed = vote(c2, "honest", False, reason="replay differs by 0.8 of the update", replayed=True)
    got = statuses([c1, c2, kid], [*minted, failed], Q1)
    assert got == {"cid1": A, "cid2": R, "cid3": R}
    assert "replay differs" in by_cid(judge([c1, c2, kid], [*minted, failed], Q1))["cid2"].reason
    loss_only = {"cid2": replace(vote(c2, "local"), replayed=False)}
    assert statuses([c1, c2, kid], [*minted, failed], Q1, loss_only) == {"cid1": A, "cid2": P, "cid3": P}
    assert by_cid(judge([c1, c2, kid], [*minted, failed], Q1, loss_only))["cid2"].reason.startswith("disputed")
    refuted = {"cid2": replace(vote(c2, "local", False, reason="replay differs"), replayed=True)}
    assert statuses([c1, c2, kid], [*minted, failed], Q1, refuted) == {"cid1": A, "cid2": R, "cid3": R}
    replayed_here = {"cid2": replace(vote(c2, "local"), replayed=True)}
    assert statuses([c1, c2, kid], [*minted, failed], Q1, replayed_here) == {"cid1": A, "cid2": A, "cid3": A}
    # the trainer's own "failed replay" of its work is no evidence either way
    assert statuses([c1], [vote(c1, "peerA", False, replayed=True)], Q0) == {"cid1": A}


def test_a_failed_replay_minted_against_a_finished_slots_head_does_not_free_the_slot():
    """The finished slot's head, found sound by this node's check, then a failed replay minted against it by a
    peer that did not train it: the slot awaits this node's replay (neither DONE nor free to claim; before, a
    node that had only checked the content took the cluster and trained its last interval again, from the
    parent: a second head at the target). Its replay settles it: matched, DONE; failed, free."""
    from swarm.claim_logic import Snapshot, choose_cluster
    from swarm.state import VerifiedState, verified_snapshot

    chain, parent = [], None
    for i, loss in enumerate((9.2, 4.0, 3.6, 3.3), 1):
        chain.append(claim(f"b{i}", 10 * i, parent, loss, trainer="b"))
        parent = chain[-1].cid
    head = chain[-1]
    votes = [vote(c, "a") for c in chain]
    checked = {c.cid: vote(c, "local") for c in chain}  # this node's content checks, no replay
    minted = vote(head, "minter", False, reason="replay differs by 0.7 of the update", replayed=True)

    def slot_one(local) -> Snapshot:
        reach = reached(judge(chain, [*votes, minted], Q1, local), 40)
        return verified_snapshot(2, [], VerifiedState({0: A, 1: reach}, {}))

    assert reached(judge(chain, votes, Q1, checked), 40) == A  # before the mint: DONE
    waiting = slot_one(checked)
    assert 1 in waiting.awaiting and 1 not in waiting.done and choose_cluster(waiting, "a") is None
    assert slot_one({}).awaiting == frozenset()  # a reader that checked nothing: rejected, the strict view
    matched = {**checked, head.cid: replace(checked[head.cid], replayed=True)}
    assert 1 in slot_one(matched).done
    failed = {**checked, head.cid: replace(vote(head, "local", False, reason="replay differs"), replayed=True)}
    assert choose_cluster(slot_one(failed), "a") == 1


@settings(max_examples=150, deadline=None)
@given(lineages(unique=True, acyclic=True))
def test_every_accepted_claim_is_within_tolerance_of_its_lineages_best(case):
    claims, votes, policy, local = case
    js = by_cid(judge(claims, votes, policy, local))
    for j in js.values():
        if j.status != A:
            continue
        best, cur = policy.init_loss, j.claim
        while cur.parent is not None:
            cur = js[cur.parent].claim
            best = cur.val_loss if best is None else min(best, cur.val_loss)
        assert best is None or j.claim.val_loss <= best * (1 + policy.loss_tolerance) + policy.loss_slack + 1e-9


# --- contested replays (what a reader settles by replaying: node.disputes) -------------------------------------


def test_a_failed_replay_that_another_replay_contradicts_is_contested_and_a_replay_here_settles_it():
    """A minted failed replay rejects an honest checkpoint and its child for a reader that replayed neither;
    another verifier's matching replay makes it a dispute the reader can settle, oldest first, and its own
    replay accepts the lineage again. A failed replay nobody contradicts, a failure inherited from an
    ancestor and a content reject are no disputes: a reader spends no replay on them."""
    from swarm.acceptance import contested_replays

    c1, c2 = claim("cid1", 10, None, 2.0), claim("cid2", 20, "cid1", 1.9)
    minted = vote(c1, "sybil", False, reason="replay differs by 0.9 of the update", replayed=True)
    votes = [vote(c1, "v1", replayed=True), minted, vote(c2, "v1")]
    judged = judge([c1, c2], votes, Q1)
    assert {j.claim.cid: j.status for j in judged} == {"cid1": R, "cid2": R}
    assert contested_replays(judged, votes, Q1) == [c1]  # not c2: its rejection is its parent's
    uncontested = [vote(c1, "v1"), minted, vote(c2, "v1")]  # v1 only checked the content, did not replay
    assert contested_replays(judge([c1, c2], uncontested, Q1), uncontested, Q1) == []
    content = [vote(c1, "v1", replayed=True), vote(c1, "v2", False, reason="weights are not finite")]
    assert contested_replays(judge([c1], content, Q2), content, Q2) == []
    mine = {"cid1": replace(vote(c1, "local"), replayed=True)}  # the reader's own replay matched
    judged = judge([c1, c2], votes, Q1, mine)
    assert {j.claim.cid: j.status for j in judged} == {"cid1": A, "cid2": A}
    assert contested_replays(judged, votes, Q1) == []
    refuted = {"cid1": replace(vote(c1, "local", False), replayed=True)}  # it failed here too: settled for good
    assert contested_replays(judge([c1, c2], votes, Q1, refuted), votes, Q1) == []


def test_a_nan_loss_does_not_make_the_judgement_depend_on_the_order_records_were_read_in():
    """The case hypothesis found: records of one CID that claim 2.5, 4.5 and NaN, and rejecting votes that
    recompute 2.5 and NaN. A NaN compares false with every number, so a sort keyed on the loss followed the
    order of the records, and nodes that read them in another order gave another reason."""
    import itertools

    claims = [claim("cid0", 1, loss=2.5), claim("cid0", 1, loss=4.5), claim("cid0", 1, loss=float("nan"))]
    votes = [vote(claims[0], "v1", accept=False, val_loss=float("nan")),
             vote(claims[0], "v2", accept=False, val_loss=2.5), vote(claims[0], "v3", accept=False)]
    policy = Policy(attestations=2, max_interval=10)

    def reasons(cs, vs) -> list[str]:
        return [f"{j.claim.val_loss} {j.status} {j.reason} {j.rejects}" for j in judge(cs, vs, policy)]

    first = reasons(claims, votes)
    for cs in itertools.permutations(claims):
        for vs in itertools.permutations(votes):
            assert reasons(list(cs), list(vs)) == first
