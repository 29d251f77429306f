"""The pure claim decision: choose_cluster, winner and cluster_states over hand-made and random snapshots,
plus a simulated concurrent race that must end with one owner per cluster."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.swarm_records import ClaimState, ClusterState
from swarm.claim_logic import ClaimView, Snapshot, all_done, choose_cluster, cluster_states, owners, winner

J, T, D, OFF = ClaimState.JOINING, ClaimState.TRAINING, ClaimState.DONE, ClaimState.OFFLINE


def snap(k: int, *claims: tuple[str, int, ClaimState], done: set[int] | None = None) -> Snapshot:
    return Snapshot(k, tuple(ClaimView(p, c, s) for p, c, s in claims), frozenset(done or ()))


def test_prefers_unclaimed_over_joined_and_never_owned_or_done():
    s = snap(4, ("a", 0, T), ("b", 1, J), done={2})
    assert choose_cluster(s, "me") == 3
    s = snap(3, ("a", 0, T), ("b", 1, J), ("c", 2, J), ("d", 2, J))
    assert choose_cluster(s, "me") == 1  # least covered among unowned
    assert choose_cluster(snap(2, ("a", 0, T), ("b", 1, D)), "me") is None


def test_offline_lease_counts_as_free():
    assert choose_cluster(snap(1, ("a", 0, OFF)), "me") == 0
    assert cluster_states(snap(2, ("a", 0, OFF))) == [ClusterState.OFFLINE, ClusterState.FREE]


def test_restarted_owner_takes_its_cluster_back():
    s = snap(4, ("me", 2, T), ("a", 0, T))
    assert choose_cluster(s, "me") == 2


def test_loser_does_not_rechoose_its_lost_cluster():
    s = snap(2, ("me", 0, J), ("a", 0, T))
    assert winner(s, 0) == "a"
    assert choose_cluster(s, "me") == 1


def test_winner_incumbent_beats_joiner_and_is_deterministic():
    s = snap(1, ("a", 0, J), ("b", 0, T), ("c", 0, J))
    assert winner(s, 0) == "b"
    s = snap(1, ("a", 0, J), ("c", 0, J))
    assert winner(s, 0) == winner(snap(1, ("c", 0, J), ("a", 0, J)), 0)
    assert winner(snap(1, ("a", 0, OFF)), 0) is None


def test_states_and_done():
    s = snap(5, ("a", 0, T), ("b", 1, J), ("c", 2, D), ("d", 3, OFF), done={4})
    assert cluster_states(s) == [ClusterState.TRAINING, ClusterState.JOINING, ClusterState.DONE,
                                 ClusterState.OFFLINE, ClusterState.DONE]
    assert not all_done(s) and all_done(snap(2, done={0, 1}))
    assert owners(s) == {0: "a", 1: "b", 2: "c"}


def test_rendezvous_spreads_simultaneous_joiners():
    empty = snap(8)
    picks = {choose_cluster(empty, f"peer{i}", "run") for i in range(64)}
    assert len(picks) >= 6


views = st.builds(ClaimView, st.sampled_from([f"p{i}" for i in range(6)]), st.integers(0, 5),
                  st.sampled_from(list(ClaimState)))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 6), st.lists(views, max_size=12, unique_by=lambda c: c.peer_id),  # one lease per owner
       st.sets(st.integers(0, 5)), st.sampled_from(["p0", "me"]))
def test_choice_is_never_a_done_or_foreign_owned_cluster(k, claims, done, me):
    s = Snapshot(k, tuple(c for c in claims if c.cluster < k), frozenset(d for d in done if d < k))
    choice = choose_cluster(s, me)
    assert len(cluster_states(s)) == k
    if choice is None:
        return
    assert 0 <= choice < k and choice not in s.done
    w = winner(s, choice)
    assert w in (None, me) or all(c.state == J for c in s.on(choice) if c.peer_id == w)


def _race(peers: list[str], k: int, rng: random.Random) -> dict[str, int | None]:
    """A simulated race: in each round the undecided peers announce at once, in random order, each seeing the
    settled state plus a random part of this round's earlier announcements (the DHT's visibility lag); after
    the settle window all see everything and apply `winner`; losers withdraw and choose again."""
    claims: dict[str, ClaimView] = {}
    decided: dict[str, int | None] = {}
    for _ in range(20):
        undecided = [p for p in peers if p not in decided]
        if not undecided:
            break
        settled = dict(claims)
        rng.shuffle(undecided)
        for p in undecided:
            visible = {**settled, **{q: v for q, v in claims.items() if q not in settled and rng.random() < 0.5}}
            choice = choose_cluster(Snapshot(k, tuple(visible.values())), p)
            if choice is None:
                claims.pop(p, None)
                decided[p] = None
            else:
                claims[p] = ClaimView(p, choice, J)
        full = Snapshot(k, tuple(claims.values()))
        for p in undecided:
            if p in claims and winner(full, claims[p].cluster) == p:
                claims[p] = ClaimView(p, claims[p].cluster, T)
                decided[p] = claims[p].cluster
            elif p in claims:
                claims.pop(p)
    return decided


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 10), st.integers(1, 6), st.integers(0, 2**32))
def test_simulated_race_gives_one_owner_per_cluster(n, k, seed):
    decided = _race([f"peer{i}" for i in range(n)], k, random.Random(seed))
    owned = [c for c in decided.values() if c is not None]
    assert len(owned) == len(set(owned)) == min(n, k)


def test_awaiting_clusters_are_neither_done_nor_claimable():
    """A checkpoint at the target that awaits attestations: nobody retrains the cluster meanwhile."""
    snap = Snapshot(3, (), frozenset({0}), frozenset({1}))
    assert cluster_states(snap) == [ClusterState.DONE, ClusterState.VERIFYING, ClusterState.FREE]
    assert choose_cluster(snap, "me") == 2
    assert choose_cluster(Snapshot(2, (), frozenset({0}), frozenset({1})), "me") is None


def test_a_done_lease_without_an_accepted_checkpoint_is_only_an_incumbent():
    from swarm.acceptance import Status
    from swarm.state import verified_snapshot

    leases = [ClaimView("liar", 1, ClaimState.DONE), ClaimView("honest", 0, ClaimState.DONE)]
    snap = verified_snapshot(3, leases, {0: Status.ACCEPTED, 1: None, 2: Status.PENDING})
    assert snap.done == {0} and snap.awaiting == {2}
    assert cluster_states(snap) == [ClusterState.DONE, ClusterState.TRAINING, ClusterState.VERIFYING]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.text(alphabet="abcdefgh123", min_size=1, max_size=12), min_size=1, max_size=8, unique=True))
def test_no_fresh_identity_evicts_an_incumbent_that_makes_progress(joiners):
    """However its hash ranks, a joiner never beats an owner that keeps publishing accepted checkpoints."""
    owner = ClaimView("owner", 0, ClaimState.TRAINING, progress=300)
    snap = Snapshot(1, (owner, *(ClaimView(j, 0, ClaimState.JOINING) for j in joiners if j != "owner")))
    assert winner(snap, 0) == "owner"
    assert all(choose_cluster(snap, j) is None for j in joiners if j != "owner")


def test_a_stalled_owner_loses_its_cluster_to_the_next_joiner():
    stale = ClaimView("squatter", 0, ClaimState.TRAINING, stale=True)
    assert cluster_states(Snapshot(1, (stale,))) == [ClusterState.STALLED]
    assert choose_cluster(Snapshot(1, (stale,)), "honest") == 0  # claimable
    contest = Snapshot(1, (stale, ClaimView("honest", 0, ClaimState.JOINING)))
    assert winner(contest, 0) == "honest"
    assert winner(Snapshot(1, (stale,)), 0) == "squatter"  # uncontested, it keeps renewing (harmless)


def test_when_a_partition_heals_the_owner_with_more_progress_keeps_the_cluster():
    a = ClaimView("zzz-ranks-last", 0, ClaimState.TRAINING, progress=500)
    b = ClaimView("aaa-ranks-first", 0, ClaimState.TRAINING, progress=200)
    assert winner(Snapshot(1, (a, b)), 0) == "zzz-ranks-last"


def test_leases_are_judged_by_progress_within_the_grace_window():
    from swarm.state import VerifiedState, verified_snapshot

    leases = [ClaimView("busy", 0, ClaimState.TRAINING, since=0.0), ClaimView("idle", 1, ClaimState.TRAINING,
                                                                              since=0.0),
              ClaimView("new", 2, ClaimState.TRAINING, since=950.0)]
    state = VerifiedState({0: None, 1: None, 2: None}, {("busy", 0): (40, 990.0), ("idle", 1): (10, 100.0)},
                          grace=60.0, now=1000.0)
    snap = verified_snapshot(3, leases, state)
    by = {c.peer_id: c for c in snap.claims}
    assert not by["busy"].stale and by["busy"].progress == 40
    assert by["idle"].stale  # its last progress is 900 s old
    assert not by["new"].stale  # a fresh lease has the grace window to publish its first checkpoint
    assert cluster_states(snap) == [ClusterState.TRAINING, ClusterState.STALLED, ClusterState.TRAINING]


def test_clock_offset_from_peers_lease_timestamps():
    from swarm.clock import clock_offset, clock_problem

    fresh = [(1000.0 - age, 2.0) for age in (0.2, 1.5, 0.9, 1.1)]  # renewed every 2 s
    assert abs(clock_offset(1000.0, fresh)) < 1.0
    assert clock_offset(1000.0 + 120, fresh) == pytest.approx(120, abs=1.0)  # we are ahead
    assert clock_offset(1000.0 - 120, fresh) == pytest.approx(-120, abs=1.0)  # we are behind
    liar = [*fresh, (5000.0, 2.0)]  # one peer with a wild clock does not move the median far
    assert abs(clock_offset(1000.0, liar)) < 1.0
    assert clock_offset(1000.0, fresh[:1]) is None  # one peer is not a swarm
    assert clock_problem(clock_offset(1000.0, fresh), 6.0) == ""
    assert "behind its peers" in clock_problem(-120.0, 6.0) and "ahead of" in clock_problem(30.0, 6.0)


def test_one_identity_with_many_lanes_is_one_clock_sample():
    """16 leases of one identity (lanes `peer/1` …), dated 10,000 s back, against two honest peers: the clock
    estimate takes one sample per peer, so the median stays with the honest ones and no lease is refused."""
    from types import SimpleNamespace

    from protocol.swarm_records import claimant
    from swarm.claim_logic import ClaimView, Snapshot
    from swarm.claims import ClaimManager

    now = 1_000_000.0
    me, honest, liar = "QmMe", "QmHonest1", "QmLiar"
    manager = ClaimManager(SimpleNamespace(peer_id=me), "run-x", 20, period=2.0, clock=lambda: now)
    leases = [ClaimView(honest, 0, ClaimState.TRAINING, ts=now - 1.0), ClaimView("QmHonest2", 1, ClaimState.TRAINING,
                                                                               ts=now - 0.5)]
    leases += [ClaimView(claimant(liar, lane or None), 2 + lane, ClaimState.TRAINING, ts=now - 10_000.0)
               for lane in range(16)]
    assert manager.check_clock(Snapshot(20, tuple(leases))) == ""
    # with one honest peer beside the liar, the median of two is their mean: a majority is needed instead
    assert manager.check_clock(Snapshot(20, (leases[0], *leases[2:]))) == ""
    # a node whose clock is really off disagrees with every peer, liar or not
    off = ClaimManager(SimpleNamespace(peer_id=me), "run-x", 20, period=2.0, clock=lambda: now + 120)
    assert "ahead of" in off.check_clock(Snapshot(20, tuple(leases[:2])))
    # one sample per lease (the old estimate) gave the liar 16 of 18 samples: the median was the lie
    from swarm.clock import clock_offset, clock_problem

    assert "ahead of" in clock_problem(clock_offset(now, [(c.ts, 2.0) for c in leases]), manager.max_skew)


def test_a_lease_that_names_no_progress_displaces_no_owner():
    """An identity that never trains writes a TRAINING lease on a cluster whose owner has not published yet: it
    may rank first on a tie, but the owner is displaced only by strictly more progress (or once it is stale)."""
    from swarm.claim_logic import displaced

    owner, squatter = ClaimView("QmOwner", 0, ClaimState.TRAINING), ClaimView("QmSquat", 0, ClaimState.TRAINING)
    snap = Snapshot(1, (owner, squatter))
    assert not displaced(snap, 0, "QmOwner") and not displaced(snap, 0, "QmSquat")
    ahead = Snapshot(1, (owner, ClaimView("QmSquat", 0, ClaimState.TRAINING, progress=10)))
    assert displaced(ahead, 0, "QmOwner")  # a healed partition: the side with more progress keeps it
    stale = Snapshot(1, (ClaimView("QmOwner", 0, ClaimState.TRAINING, stale=True), squatter))
    assert displaced(stale, 0, "QmOwner")


_refresh = st.floats(0.5, 10.0)
_age = st.floats(0.0, 1.0)  # an honest record is 0..refresh old when read: age as a fraction of its refresh


@settings(max_examples=300, deadline=None)
@given(honest=st.lists(st.tuples(_age, st.floats(0.5, 4.0)), min_size=2, max_size=12), minted=st.data(),
       skew=st.floats(-3.5, 3.5))
def test_minted_identities_below_a_majority_never_make_an_honest_clock_refuse_leases(honest, minted, skew):
    """Identities minted by one attacker (each writes one lease, dated whatever it likes, even far in the past or
    future) and fewer than the honest peers: an honest node whose clock is within the bound of the swarm's is
    never told to drop its leases, whatever the minted timestamps. (Within the bound: the skew plus the half
    renewal period by which an honest record's age is uncertain.)"""
    from swarm.clock import clock_verdict

    now, bound = 10_000.0, 6.0
    samples = [(now - skew - a * r, r) for a, r in honest]  # our clock is `skew` ahead of theirs
    lies = minted.draw(st.lists(st.tuples(st.floats(-1e6, 1e6), _refresh), max_size=len(honest) - 1))
    assert clock_verdict(now, samples + [(now + d, r) for d, r in lies], bound) == ""


@settings(max_examples=300, deadline=None)
@given(honest=st.lists(st.tuples(_age, _refresh), min_size=2, max_size=12), minted=st.data(),
       skew=st.floats(60.0, 1e5), ahead=st.booleans())
def test_a_clock_really_off_is_caught_whatever_a_minted_minority_says(honest, minted, skew, ahead):
    """The other way round: our clock is really off by far more than the bound; a minority of minted
    identities that date their leases to agree with our wrong clock cannot hide it from the honest majority."""
    from swarm.clock import clock_verdict

    now, bound = 10_000.0, 6.0
    off = skew if ahead else -skew
    samples = [(now - off - a * r, r) for a, r in honest]
    lies = minted.draw(st.lists(st.tuples(st.floats(0.0, 1.0), _refresh), max_size=len(honest) - 1))
    got = clock_verdict(now, samples + [(now - a * r, r) for a, r in lies], bound)
    assert ("ahead of" if ahead else "behind") in got


def test_a_lease_lost_while_the_done_record_is_stored_ends_mark_done_quietly():
    """The renewal lets the lease go (displaced, or the clock) while `mark_done` stores the DONE record: the
    record stands, no lease is written for a cluster this node no longer holds, and nothing raises (an honest
    daemon crashed here once, under the patient attacker of tests/test_hostile_e2e.py)."""
    import asyncio
    from types import SimpleNamespace

    from protocol.swarm_records import DoneBody
    from swarm.claims import ClaimManager

    written: list = []
    lose = [True]

    async def put(key, body, expiration):
        written.append(body)
        if isinstance(body, DoneBody) and lose.pop():
            manager.cluster = None  # what _renew_loop does, under the lock, once it finds itself displaced
            await asyncio.sleep(0)
        return True

    node = SimpleNamespace(peer_id="QmMeMeMeMeMeMeMeMeMeMeMeMe", record_ttl=60.0, put=put)
    manager = ClaimManager(node, "run-x", 2, period=1.0, clock=lambda: 1_000.0)
    manager.cluster = 1
    asyncio.run(manager.mark_done(40, None))
    assert [type(b).__name__ for b in written] == ["DoneBody"] and written[0].cluster == 1

    lose.append(False)
    manager.cluster = 0  # the lease still held: DONE is written on it as before
    asyncio.run(manager.mark_done(40, None))
    assert [(type(b).__name__, b.cluster) for b in written[1:]] == [("DoneBody", 0), ("ClaimBody", 0)]
    assert written[-1].state == ClaimState.DONE
