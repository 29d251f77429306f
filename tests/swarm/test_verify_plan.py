"""Who checks what and which intervals are replayed (swarm.verify_plan, node.role_verifier.choose): keyed
draws a trainer cannot foresee, about `wanted` checkers per checkpoint whatever the number of verifiers, a
detection rate that follows its formula, a queue that unfetchable records cannot block."""

from __future__ import annotations

import hashlib
import random
import statistics
import time
from math import comb

import pytest

from protocol.swarm_records import CheckpointBody, ClusterState, MemberBody
from swarm.acceptance import Policy
from swarm.state import RunRules, RunView
from swarm.verify_plan import VerifyPlan, detection_probability, draw, replay_rate, share, verifier_secret

PEERS = ["QmS68mngh9LRAR6ooCHVELGZL6p67DtHRrxsBtDfV4f7GX", "QmWX2GnKGWdZWgjeAkzzZyF6MVrJtgGKoBZxNZsxP2jDTZ",
         "QmNnooDu7bfjPFoTZYxMNLWUQJyrVwtbZg5gBMjTezGAJN"]


def _cid(i: int) -> str:
    return "bagaaiera" + hashlib.sha256(str(i).encode()).hexdigest()[:52].translate(str.maketrans("01890", "abcde"))


def _secret(i: int) -> bytes:
    return verifier_secret(f"key-{i}".encode())


def test_draws_are_uniform_and_keyed():
    xs = [draw(_secret(0), "replay", _cid(i)) for i in range(4000)]
    assert all(0 <= x < 1 for x in xs) and abs(sum(xs) / len(xs) - 0.5) < 0.02
    assert sum(x < 0.1 for x in xs) == pytest.approx(400, abs=60)
    # another verifier's draws on the same CIDs are independent of ours
    ys = [draw(_secret(1), "replay", _cid(i)) for i in range(4000)]
    both = sum(x < 0.1 and y < 0.1 for x, y in zip(xs, ys, strict=True))
    assert both == pytest.approx(40, abs=20)
    assert draw(_secret(0), "check", _cid(1)) != draw(_secret(0), "replay", _cid(1))


def test_a_trainer_that_grinds_its_cid_is_replayed_at_the_stated_rate():
    """The old rule hashed the CID, so re-rolling it until 'no replay' took ~1.1 tries. With keyed draws the
    trainer's best strategy (any rule over the CID it can compute) leaves the rate where the formula says."""
    plan = VerifyPlan(_secret(7), wanted=3, replay_every=4, patience=30.0)
    rng = random.Random(0)
    # the grinder keeps the CIDs that an unkeyed hash says are not replayed (what worked against the old rule)
    kept = [c for c in (_cid(rng.randrange(10**9)) for _ in range(20000))
            if int.from_bytes(hashlib.sha256(c.encode()).digest()[:8], "big") % 4 != 0][:3000]
    rate = sum(plan.replays(c, eligible=1) for c in kept) / len(kept)
    assert rate == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("checkers", [1, 2, 3, 5])
def test_detection_probability_per_interval_matches_its_formula(checkers):
    """A forged interval checked by `checkers` independent verifiers is replayed by at least one of them with
    probability 1 − (1 − 1/(replay_every · c))^c, c = min(wanted, checkers): measured over 4,000 intervals;
    and the replays the swarm runs per interval stay about 1/replay_every whatever the number of checkers."""
    plans = [VerifyPlan(_secret(100 + v), wanted=3, replay_every=5, patience=30.0) for v in range(checkers)]
    c = min(3, checkers)
    draws = [[p.replays(_cid(i), eligible=checkers) for p in plans] for i in range(4000)]
    caught = sum(any(d) for d in draws) / 4000
    # every one of the `checkers` here checks; the plan assumed `c` would (its assignment's share)
    assert caught == pytest.approx(1 - (1 - replay_rate(5, c)) ** checkers, abs=0.03)
    assert detection_probability(5, c) == pytest.approx(1 - (1 - 1 / (5 * c)) ** c)
    replays_per_interval = sum(map(sum, draws)) / 4000
    assert replays_per_interval == pytest.approx(checkers / (5 * c), abs=0.04)  # 1/5 when c = checkers
    assert detection_probability(0, checkers) == 0.0
    full = [VerifyPlan(_secret(100 + v), wanted=3, replay_every=1, patience=30.0) for v in range(checkers)]
    assert all(p.replays(_cid(i), eligible=checkers) for p in full for i in range(200))  # --replay-every 1: all
    assert detection_probability(1, c) == 1.0


@pytest.mark.parametrize("verifiers", [3, 10, 100, 1000])
def test_about_wanted_verifiers_check_each_checkpoint_whatever_v_is(verifiers):
    wanted = 3
    plans = [VerifyPlan(_secret(v), wanted=wanted, replay_every=10, patience=30.0) for v in range(verifiers)]
    counts = [sum(p.assigned(_cid(i), verifiers, waited=0.0) for p in plans) for i in range(200)]
    mean = sum(counts) / len(counts)
    assert mean == pytest.approx(min(wanted, verifiers), rel=0.2)
    assert max(counts) <= 4 * wanted  # a Poisson(3) tail: 12 or more is about 1 in 10,000 per checkpoint
    # the chance that nobody is drawn is the binomial's zero term; waiting doubles the share until all check
    p0 = (1 - wanted / verifiers) ** verifiers if verifiers > wanted else 0.0
    assert sum(c == 0 for c in counts) / len(counts) <= p0 + 0.05
    assert share(wanted, verifiers, waited=30.0 * 20, patience=30.0) == 1.0
    assert all(p.assigned(_cid(1), verifiers, waited=30.0 * 20) for p in plans)


def test_share_formula():
    assert share(3, 2, 0.0, 10.0) == 1.0  # fewer verifiers than wanted: all of them
    assert share(3, 30, 0.0, 10.0) == pytest.approx(0.1)
    assert share(3, 30, 10.0, 10.0) == pytest.approx(0.2)
    assert share(3, 30, 35.0, 10.0) == 1.0
    assert comb(3, 0) == 1


# ---- node.role_verifier.choose: the queue ----


def _ck(step: int, cid: str, parent: str | None = None, ts: float = 100.0) -> CheckpointBody:
    return CheckpointBody(slot="expert-0", step=step, cid=cid, bytes=10, ts=ts, parent=parent, val_loss=0.5)


def _view(checkpoints, members=()) -> RunView:
    rules = RunRules(Policy(attestations=1, max_interval=100), expert_target=100, router_target=100)
    return RunView(run_id="run-x", num_clusters=1, specs=(), foreign=(), claims={}, progress={},
                   members={p: MemberBody(protocol=1, software="t", peer_id=p, role="auto", ts=1.0) for p in members},
                   checkpoints=tuple(checkpoints), done=(), states=(ClusterState.TRAINING,), owners={},
                   attestations=(), rules=rules)


def test_unfetchable_records_are_backed_off_and_the_leaseholder_comes_first():
    """Eight step-1 records nobody serves, from an attacker, ahead of the leaseholder's checkpoint: the first
    round tries the leaseholder first; once the eight failed they wait out their back-off, and every later
    round reaches the honest record at once."""
    from node.role_verifier import Backoff, choose, to_verify

    attacker, owner, me = PEERS
    junk = [(attacker, _ck(1, _cid(i))) for i in range(8)]
    honest = (owner, _ck(10, _cid(100)))
    view = _view([*junk, honest], members=PEERS)
    plan = VerifyPlan(_secret(0), wanted=3, replay_every=10, patience=30.0)
    trainers = {c.cid: p for p, c in view.checkpoints}
    backoff, seen = Backoff(base=10.0, cap=320.0), {}
    cands = to_verify(view, me, "expert-0")
    first = choose(cands, trainers, plan=plan, view=view, me=me, owner=owner, first_seen=seen, backoff=backoff,
                   now=0.0)
    assert first[0].cid == _cid(100) and len(first) == 8  # the leaseholder's first; the cap holds the rest
    for c in first[1:]:
        backoff.failed(c.cid, 0.0)
    later = choose(cands, trainers, plan=plan, view=view, me=me, owner=None, first_seen=seen, backoff=backoff,
                   now=5.0)
    assert [c.cid for c in later] == [_cid(7), _cid(100)]  # only the one not tried yet, beside the honest record
    assert backoff.failed(_cid(0), 0.0) == 2 and backoff.waiting(_cid(0), 19.0) and not backoff.waiting(_cid(0), 21.0)


def test_a_verifier_checks_only_what_it_is_assigned_in_a_large_swarm():
    from node.role_verifier import Backoff, choose, eligible_verifiers, to_verify

    members = ["Qm" + f"{i:044d}".translate(str.maketrans("0", "z")) for i in range(60)]
    trainer, me = members[0], members[1]
    view = _view([(trainer, _ck(10 * (i + 1), _cid(i))) for i in range(200)], members=members)
    assert eligible_verifiers(view, trainer, me) == 59
    plan = VerifyPlan(_secret(3), wanted=3, replay_every=10, patience=30.0)
    trainers = {c.cid: p for p, c in view.checkpoints}
    picked = choose(to_verify(view, me, "expert-0"), trainers, plan=plan, view=view, me=me, owner=None,
                    first_seen={}, backoff=Backoff(10.0, 320.0), now=0.0, limit=1000)
    assert 0 < len(picked) <= 200 * 3 / 59 * 2.5  # about 3/59 of them


def test_lease_verdict_ignores_copies_by_peers_that_never_held_the_slot():
    from node.role_verifier import lease_verdict

    seen = {"owner": 100.0, "old-owner": 40.0}
    kw = {"window": 30.0, "defer": 5.0}
    assert lease_verdict(seen, 10.0, "owner", 90.0, 100.0, **kw) == "ok"
    assert lease_verdict(seen, 10.0, "old-owner", 60.0, 100.0, **kw) == "ok"  # held it 20 s before the record
    assert lease_verdict(seen, 10.0, "old-owner", 80.0, 100.0, **kw) == "reject"  # 40 s before: outside the window
    assert lease_verdict(seen, 10.0, "copier", 98.0, 100.0, **kw) == "wait"  # its lease may not have reached us
    assert lease_verdict(seen, 10.0, "copier", 90.0, 100.0, **kw) == "reject"
    assert lease_verdict(seen, 90.0, "copier", 90.0, 100.0, **kw) == "ok"  # there before we watched: cannot judge
    assert lease_verdict({}, None, "copier", 90.0, 100.0, **kw) == "ok"


def test_a_verifier_replays_what_another_says_failed_a_replay_once():
    from node.role_verifier import disputed
    from protocol.swarm_records import AttestationBody

    owner, minter, me = PEERS
    honest = _ck(10, _cid(1))
    view = _view([(owner, honest), (owner, _ck(20, _cid(2), parent=_cid(1)))], members=PEERS)

    def att(cid, verdict, replayed):
        return AttestationBody(slot="expert-0", cid=cid, step=10, parent=None, val_loss=0.5, verdict=verdict,
                               reason="" if verdict == "accept" else "replay differs", replayed=replayed, ts=1.0)

    from dataclasses import replace
    with_claim = replace(view, attestations=((minter, att(_cid(1), "reject", True)),
                                             (minter, att(_cid(2), "reject", False)),
                                             (owner, att(_cid(2), "reject", True))))
    assert [c.cid for c in disputed(with_claim, me, "expert-0", set())] == [_cid(1)]  # the trainer's own: no
    assert disputed(with_claim, me, "expert-0", {_cid(1)}) == []  # replayed here once: not again
    assert disputed(with_claim, minter, "expert-0", set()) == []  # nobody re-runs its own claim


def test_a_takeover_from_a_superseded_checkpoint_is_a_fork():
    from node.role_verifier import stale_takeover

    owner, copier, taker = PEERS
    c10, c20 = _ck(10, _cid(1)), _ck(20, _cid(2), parent=_cid(1))
    view = _view([(owner, c10), (owner, c20)], members=PEERS)
    view = view.__class__(**{**view.__dict__, "rules": RunRules(Policy(attestations=0, max_interval=100), 100, 100)})
    fork = _ck(30, _cid(3), parent=_cid(1))  # from step 10, which step 20 already follows
    takeover = _ck(30, _cid(4), parent=_cid(2))  # from the newest accepted checkpoint
    assert stale_takeover(view, "expert-0", fork, copier)
    assert not stale_takeover(view, "expert-0", takeover, taker)
    assert not stale_takeover(view, "expert-0", _ck(30, _cid(5), parent=_cid(1)), owner)  # its own lineage


def test_a_check_that_raises_is_backed_off_and_the_round_goes_on():
    """The verifier role against a fake context: one checkpoint's check raises on our side (not a verdict), the
    next is still attested in the same round, and the failed one waits out its back-off."""
    import asyncio
    from types import SimpleNamespace

    from node.checker import CheckResult
    from node.role_verifier import Verifier
    from protocol.swarm_run import Schedule

    owner, _, me = PEERS
    bad, good = _ck(10, _cid(1)), _ck(10, _cid(2), ts=101.0)
    view = _view([(owner, bad), (owner, good)], members=PEERS)

    class Checker:
        async def check(self, body, parents=None, *, trainer=None):
            if body.cid == bad.cid:
                raise RuntimeError("the held-out clips could not be read")
            return CheckResult(True, "", 0.5, body.step, body.parent, content_ok=True)

    stored = []

    async def put(key, body, expiration):
        stored.append(body)
        return True

    node = SimpleNamespace(peer_id=me, put=put, record_ttl=3600.0)
    verifier = Verifier(node, Checker(), Schedule(), "run-x", 1, VerifyPlan(_secret(0), 3, 0, 30.0),
                        SimpleNamespace(add=lambda *a: None), period=1.0, lease_window=60.0,
                        training_data=None, stopping=asyncio.Event())
    seen = time.monotonic() - 2 * verifier.spread("expert-0")  # seen a while ago: past their start delays
    verifier.first_seen.update({bad.cid: seen, good.cid: seen})
    assert asyncio.run(verifier.round(view)) == 1
    assert [a.cid for a in stored] == [good.cid] and set(verifier.attested) == {good.cid}
    assert verifier.backoff.waiting(bad.cid, time.monotonic())


def test_verifiers_start_one_after_another_about_spread_over_wanted_apart():
    plans = [VerifyPlan(verifier_secret(bytes([i])), wanted=2, replay_every=10, patience=600.0) for i in range(100)]
    gaps = []
    for n in range(40):
        cid = "bafkrei" + hashlib.sha256(str(n).encode()).hexdigest()[:52].translate(str.maketrans("0189", "abcd"))
        delays = sorted(p.start_delay(cid, 100, 300.0) for p in plans)
        assert len(set(delays)) == 100 and delays[-1] > 300.0  # everyone in the end, in a keyed order
        assert sum(d < 300.0 for d in delays) == sum(p.assigned(cid, 100, 0.0) for p in plans)
        gaps.append(delays[1] - delays[0])
    assert 80 < statistics.median(gaps) < 250  # ~ spread / wanted = 150 s between the first two starts


def test_the_checkers_of_a_checkpoint_start_one_after_another_so_later_ones_fetch_from_earlier_ones():
    """choose() holds a CID back for the verifier's keyed start delay (over `per_checker` seconds per checker):
    the checkers of one checkpoint start at different times nobody else can compute, each once its delay has
    passed, so that later ones can fetch from earlier ones (which re-serve what they fetched) instead of the
    trainer; a node that is the only possible checker starts at once."""
    from node.role_verifier import Backoff, choose, to_verify

    trainer, a, _ = PEERS
    view = _view([(trainer, _ck(10, _cid(7)))], members=PEERS)
    trainers = {c.cid: p for p, c in view.checkpoints}
    starts = []
    for i in range(3):
        plan = VerifyPlan(_secret(10 + i), wanted=3, replay_every=10, patience=30.0)
        seen, backoff = {}, Backoff(base=10.0, cap=320.0)
        first = None
        for t in range(0, 61):  # rounds a second apart, the CID seen at t = 0
            picked = choose(to_verify(view, a, "expert-0"), trainers, plan=plan, view=view, me=a, owner=trainer,
                            first_seen=seen, backoff=backoff, now=float(t), per_checker=30.0)
            if picked:
                first = t
                break
        delay = plan.start_delay(_cid(7), 2, 60.0)  # eligible: the two members besides the trainer
        assert first is not None and first == int(-(-delay // 1)), (first, delay)  # at its delay, not before
        starts.append(first)
    assert len(set(starts)) == 3 and max(starts) <= 60  # 2 checkers here (the trainer checks nothing): 2 × 30 s
    # the only node that can check a checkpoint starts at once: nobody to stagger with
    alone = _view([(trainer, _ck(10, _cid(7)))], members=[trainer, a])
    for i in range(3):
        plan = VerifyPlan(_secret(10 + i), wanted=3, replay_every=10, patience=30.0)
        assert choose(to_verify(alone, a, "expert-0"), trainers, plan=plan, view=alone, me=a, owner=trainer,
                      first_seen={}, backoff=Backoff(base=10.0, cap=320.0), now=0.0, per_checker=30.0)


def test_an_owner_tied_on_progress_holds_its_lease_for_its_own_lineage_but_starts_no_segment():
    """The race behind a stalled two-node run: a late verifier ranked a tie on progress (nothing it had verified
    yet) for an attacker's fresh lease, so the honest trainer, an incumbent that a tie does not displace, never
    won one of its rankings before it released; its last checkpoint was then rejected as a copy by a peer that
    never held the slot. Its lease, earned and renewed, counts for a record that continues its own checkpoint
    this verifier accepted; never for a segment's start (a copy of another's checkpoint, a takeover)."""
    from node.role_verifier import lease_verdict

    seen = {"squat": 62.0}  # the tie's winner, by rendezvous
    kept = {"squat": 62.0, "trainer": 62.0}  # both incumbents, renewed
    kw = {"window": 60.0, "defer": 3.0, "kept": kept}
    assert lease_verdict(seen, 62.0, "trainer", 63.5, 69.0, **kw, continues=True) == "ok"
    assert lease_verdict(seen, 62.0, "trainer", 63.5, 69.0, **kw) == "reject"  # a segment's start needs the win
    assert lease_verdict(seen, 62.0, "copier", 63.5, 69.0, **kw, continues=True) == "reject"  # never held it
    assert lease_verdict(seen, 62.0, "trainer", 200.0, 210.0, **kw, continues=True) == "reject"  # long gone
    assert lease_verdict(seen, 62.0, "trainer", 63.5, 64.0, window=60.0, defer=3.0, continues=True) == "wait"


def test_lease_sightings_are_the_winners_and_every_earned_renewed_lease():
    from dataclasses import replace

    from node.role_verifier import lease_sightings
    from protocol.swarm_records import ClaimState
    from swarm.claim_logic import ClaimView

    trainer, squat, copier = PEERS
    leases = (ClaimView(trainer, 0, ClaimState.TRAINING, since=51.7, ts=62.0),
              ClaimView(f"{squat}/1", 0, ClaimState.TRAINING, since=57.0, ts=57.0),
              ClaimView(f"{copier}/2", 0, ClaimState.TRAINING, since=-9940.0, ts=-9940.0),  # back-dated
              ClaimView(copier, 0, ClaimState.TRAINING, since=50.0, ts=62.0, stale=True),  # no progress
              ClaimView(f"{copier}/3", 0, ClaimState.JOINING, since=61.0, ts=62.0))
    view = replace(_view([]), leases=leases, owners={0: f"{squat}/1"})
    owners, kept = lease_sightings(view, 62.5, 30.0)
    assert owners == {"expert-0": {squat}}
    assert kept == {"expert-0": {trainer, squat}}


def test_a_trainer_does_not_call_a_takeover_from_its_rejected_checkpoints_parent_a_fork():
    """The deadlock that followed: the verifier rejected the trainer's step 20 and took over from step 10; the
    trainer, whose own reading counts its own checkpoints accepted (node.checker.vouch), saw an accepted step 20
    after step 10 and rejected the takeover as a fork. Each side's checkpoint at the target was rejected by the
    other for good. Its own vouching is no evidence against another's takeover; the attestations are."""
    from dataclasses import replace

    from node.role_verifier import stale_takeover
    from protocol.swarm_records import AttestationBody
    from swarm.acceptance import Vote

    trainer, taker, other = PEERS
    c10, c20 = _ck(10, _cid(1)), _ck(20, _cid(2), parent=_cid(1))
    takeover = _ck(20, _cid(3), parent=_cid(1))

    def att(c, verdict):
        return AttestationBody(slot="expert-0", cid=c.cid, step=c.step, parent=c.parent, val_loss=0.5,
                               verdict=verdict, reason="" if verdict == "accept" else "a copy", ts=1.0)

    vouched = tuple((c.cid, Vote("local", c.cid, c.step, c.parent, 0.5, True, replayed=True)) for c in (c10, c20))
    view = replace(_view([(trainer, c10), (trainer, c20), (taker, takeover)]), local=vouched,
                   attestations=((taker, att(c10, "accept")), (taker, att(c20, "reject"))))
    assert view.accepted_checkpoints("expert-0")[0].cid == c20.cid  # in the trainer's reading
    assert not stale_takeover(view, "expert-0", takeover, taker, trainer)
    # accepted by a verifier's attestation, its step 20 does make a takeover from step 10 a fork
    attested = replace(view, attestations=((taker, att(c10, "accept")), (other, att(c20, "accept"))))
    assert stale_takeover(attested, "expert-0", takeover, taker, trainer)
    # and a verifier's own check is evidence: only the asking trainer's vouching is left out
    checked = replace(view, local=((c20.cid, Vote("local", c20.cid, 20, c10.cid, 0.5, True)),))
    assert stale_takeover(checked, "expert-0", takeover, taker, other)


def _fake_verifier(me: str, monkeypatch, clock: list[float], members):
    """A Verifier with a fake checker (every checkpoint's content is sound), node and clock."""
    import asyncio
    from types import SimpleNamespace

    import node.role_verifier as rv
    from node.checker import CheckResult
    from protocol.swarm_run import Schedule

    monkeypatch.setattr(rv, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(rv, "get_dht_time", lambda: clock[0])

    class Checker:
        def __init__(self):
            self.refuted = {}

        async def check(self, body, parents=None, *, trainer=None):
            return CheckResult(True, "", 0.5, body.step, body.parent, content_ok=True)

        def refute(self, body, reason):
            self.refuted[body.cid] = reason

    stored = []

    async def put(key, body, expiration):
        stored.append(body)
        return True

    node = SimpleNamespace(peer_id=me, put=put, record_ttl=3600.0)
    verifier = rv.Verifier(node, Checker(), Schedule(), "run-x", 1, VerifyPlan(_secret(0), 3, 0, 30.0),
                           SimpleNamespace(add=lambda *a: None), period=1.0, lease_window=60.0,
                           training_data=None, stopping=asyncio.Event())
    return verifier, stored


def test_a_late_verifier_accepts_an_honest_trainers_last_checkpoint_whatever_lease_won_its_views(monkeypatch):
    """The stalled run, replayed against the verifier: b joins while a trains cluster 0; b's first views rank a
    tie on progress (a's checkpoints are not verified yet) for the attacker's lease, so a never wins one; b
    accepts a's steps 10-30; a publishes step 40 and releases at once. b accepted it as a's own continuation
    (it rejected it as a copy before)."""
    import asyncio
    from dataclasses import replace

    from protocol.swarm_records import ClaimState
    from swarm.claim_logic import ClaimView

    a, squat, b = PEERS
    clock = [62.0]
    verifier, stored = _fake_verifier(b, monkeypatch, clock, [a, b])
    cks = [_ck(10, _cid(1))] + [_ck(10 * i, _cid(i), parent=_cid(i - 1)) for i in (2, 3)]
    tied = (ClaimView(a, 0, ClaimState.TRAINING, since=51.7, ts=61.9),
            ClaimView(f"{squat}/1", 0, ClaimState.TRAINING, since=57.0, ts=57.0))
    view = replace(_view([(a, c) for c in cks], members=[a, b]), leases=tied, owners={0: f"{squat}/1"})
    assert asyncio.run(verifier.round(view)) == 3 and all(x.verdict == "accept" for x in stored)

    clock[0] = 63.5  # a published step 40 and released: its lease is gone from every later view
    last = _ck(40, _cid(4), parent=_cid(3))
    view = replace(view, checkpoints=(*view.checkpoints, (a, last)), leases=tied[1:],
                   attestations=tuple((b, x) for x in stored))
    asyncio.run(verifier.round(view))
    clock[0] = 69.0  # past the wait for a lease to reach this node's reads
    asyncio.run(verifier.round(view))
    verdicts = [(x.verdict, x.reason) for x in stored if x.cid == last.cid]
    assert verdicts and set(verdicts) == {("accept", "")}, verdicts


def test_a_copy_by_a_peer_with_a_fresh_lease_that_never_won_is_still_rejected(monkeypatch):
    """The same verifier, against a copy of a's step 30 published by the attacker whose lease ties but loses:
    its parent is another's checkpoint (a segment's start), so only the winning lease counts, as before."""
    import asyncio
    from dataclasses import replace

    from protocol.swarm_records import ClaimState
    from swarm.claim_logic import ClaimView

    a, squat, b = PEERS
    clock = [62.0]
    verifier, stored = _fake_verifier(b, monkeypatch, clock, [a, b])
    cks = [_ck(10, _cid(1))] + [_ck(10 * i, _cid(i), parent=_cid(i - 1)) for i in (2, 3)]
    tied = (ClaimView(a, 0, ClaimState.TRAINING, since=51.7, ts=61.9),
            ClaimView(squat, 0, ClaimState.TRAINING, since=57.0, ts=61.9))
    view = replace(_view([(a, c) for c in cks], members=[a, b]), leases=tied, owners={0: a})
    assert asyncio.run(verifier.round(view)) == 3
    clock[0] = 63.5
    copy = _ck(40, _cid(5), parent=_cid(3))
    view = replace(view, checkpoints=(*view.checkpoints, (squat, copy)), attestations=tuple((b, x) for x in stored))
    asyncio.run(verifier.round(view))
    clock[0] = 69.0
    asyncio.run(verifier.round(view))
    assert [x.verdict for x in stored if x.cid == copy.cid] == ["reject"]


def test_a_trainer_accepts_a_takeover_from_the_parent_of_its_checkpoint_that_verifiers_rejected(monkeypatch):
    """The other side of the stalled run: b rejected a's step 40, claimed the cluster and took over from step
    30; a, verifying b's step 40, must not call it a fork because its own step 40 counts for a alone."""
    import asyncio
    from dataclasses import replace

    from protocol.swarm_records import AttestationBody, ClaimState
    from swarm.acceptance import Vote
    from swarm.claim_logic import ClaimView

    a, _, b = PEERS
    clock = [81.0]
    verifier, stored = _fake_verifier(a, monkeypatch, clock, [a, b])
    cks = [_ck(10, _cid(1))] + [_ck(10 * i, _cid(i), parent=_cid(i - 1)) for i in (2, 3, 4)]
    takeover = _ck(40, _cid(5), parent=_cid(3), ts=101.0)

    def att(c, verdict):
        return AttestationBody(slot="expert-0", cid=c.cid, step=c.step, parent=c.parent, val_loss=0.5,
                               verdict=verdict, reason="" if verdict == "accept" else "not the leaseholder", ts=1.0)

    view = replace(_view([*((a, c) for c in cks), (b, takeover)], members=[a, b]),
                   leases=(ClaimView(b, 0, ClaimState.TRAINING, since=77.8, ts=80.9),), owners={0: b},
                   attestations=(*((b, att(c, "accept")) for c in cks[:3]), (b, att(cks[3], "reject"))),
                   local=tuple((c.cid, Vote("local", c.cid, c.step, c.parent, 0.5, True, replayed=True))
                               for c in cks))
    assert asyncio.run(verifier.round(view)) == 1
    assert stored[-1].cid == takeover.cid and stored[-1].verdict == "accept", stored[-1].reason


def test_a_content_verdict_awaiting_the_lease_check_does_not_count_in_this_nodes_view():
    """A copier publishes a sound copy while this verifier watches another peer hold the slot: the copy is first
    seen a moment ago, so the lease check waits (the copier's lease may not have reached this node's reads).
    Meanwhile the content verdict must not count in this node's reading of the run: counted, it gave the copier
    accepted progress here, which outranked the honest trainer's lease and took its cluster (seen in
    tests/test_hostile_e2e.py with the patient attacker). Once the wait is over, the copy is rejected."""
    import asyncio
    from types import SimpleNamespace

    from node.checker import CheckpointChecker, CheckResult
    from node.role_verifier import Verifier
    from protocol.swarm_run import Schedule
    from swarm.acceptance import Vote

    owner, copier, me = PEERS
    copy = _ck(10, _cid(1))
    view = _view([(copier, copy)], members=(me,))  # this node is the only checker: it starts at once

    class Checker:
        hold, refute = CheckpointChecker.hold, CheckpointChecker.refute  # the real bookkeeping

        def __init__(self) -> None:
            self.verdicts: dict[str, Vote] = {}
            self.store = SimpleNamespace(withdraw=lambda cid: None)

        async def check(self, body, parents=None, *, trainer=None):  # as the real check: a local verdict
            self.verdicts[body.cid] = Vote("local", body.cid, body.step, body.parent, 0.5, True)
            return CheckResult(True, "", 0.5, body.step, body.parent, content_ok=True)

    stored = []

    async def put(key, body, expiration):
        stored.append(body)
        return True

    checker = Checker()
    verifier = Verifier(SimpleNamespace(peer_id=me, put=put, record_ttl=3600.0), checker, Schedule(), "run-x", 1,
                        VerifyPlan(_secret(0), 3, 0, 30.0), SimpleNamespace(add=lambda *a: None), period=1.0,
                        lease_window=60.0, training_data=None, stopping=asyncio.Event())
    now = time.monotonic()
    verifier.watching["expert-0"] = now - 100.0  # watched the slot for a while: the owner held it, not the copier
    verifier.holders["expert-0"] = {owner: now}
    verifier.first_seen[copy.cid] = now - 1.0  # younger than the lease check's defer (3 periods)
    assert asyncio.run(verifier.round(view)) == 0 and not stored
    assert copy.cid not in checker.verdicts  # not an accept in this node's reading while the lease is unjudged

    verifier.first_seen[copy.cid] = now - 10.0  # the defer is over: the copier never held the lease
    verifier.backoff.forget(copy.cid)
    assert asyncio.run(verifier.round(view)) == 1
    assert [a.verdict for a in stored] == ["reject"] and checker.verdicts[copy.cid].accept is False
