"""Cluster claims with real node processes on 127.0.0.1: concurrent races, partial coverage, kill -9 takeover,
and a restart that takes its own cluster back."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

NODE = "tests/swarm/claim_node.py"
PERIOD = 1.0  # renewal period in these tests; the lease is 3 periods


@pytest.fixture(scope="module")
def swarm8(tmp_path_factory, spawn):
    root: Path = tmp_path_factory.mktemp("claims")
    boot = spawn(NODE, root / "n0.log", "--home", str(root / "n0"))
    maddrs = boot.recv(120)["maddrs"]
    procs = [boot]
    for i in range(1, 8):
        home = str(root / f"n{i}")
        procs.append(spawn(NODE, root / f"n{i}.log", "--home", home, "--initial-peers", *maddrs))
    for p in procs[1:]:
        p.recv(180)
    return procs, root, maddrs, spawn


def _claim_all(procs: list, run: str, clusters: int) -> list[int | None]:
    for p in procs:  # every node starts its claim at the same moment: a genuine concurrent race
        p.send({"op": "claim", "run": run, "clusters": clusters, "period": PERIOD})
    return [p.recv(90, lambda m: m.get("op") == "claim")["cluster"] for p in procs]


def _states(p, run: str, clusters: int) -> list[str]:
    p.send({"op": "states", "run": run, "clusters": clusters, "period": PERIOD})
    return p.recv(30, lambda m: m.get("op") == "states")["states"]


def test_eight_nodes_four_clusters_twenty_races(swarm8):
    procs, *_ = swarm8
    for rnd in range(20):
        run = f"race{rnd}"
        got = _claim_all(procs, run, 4)
        owned = [c for c in got if c is not None]
        assert sorted(owned) == [0, 1, 2, 3], f"round {rnd}: {got}"  # one owner per cluster, none owns two
        assert _states(procs[0], run, 4) == ["training"] * 4
        for p in procs:  # clean exit releases the lease (OFFLINE) so later rounds stay cheap
            p.send({"op": "release", "run": run, "clusters": 4})
        for p in procs:
            p.recv(90, lambda m: m.get("op") == "release")
        assert set(_states(procs[0], run, 4)) == {"offline"}


def test_three_nodes_four_clusters(swarm8):
    procs, *_ = swarm8
    got = _claim_all(procs[1:4], "three", 4)
    assert sorted(c for c in got if c is not None) == sorted(set(got)) and None not in got
    states = _states(procs[0], "three", 4)
    assert sorted(states) == ["free", "training", "training", "training"]


def test_kill9_owner_is_replaced_by_waiting_node(swarm8):
    procs, *_ = swarm8
    run = "kill"
    for p in procs:
        p.send({"op": "claim_bg", "run": run, "clusters": 4, "period": PERIOD, "timeout": 120})
    claimed = {}
    deadline = time.monotonic() + 60
    while len(claimed) < 4 and time.monotonic() < deadline:
        for i, p in enumerate(procs):
            try:
                msg = p.recv(0.2, lambda m: m.get("event") == "claimed")
            except Exception:
                continue
            claimed[i] = msg["cluster"]
    assert sorted(claimed.values()) == [0, 1, 2, 3]
    victim = next(i for i in claimed if i != 0)  # keep the bootstrap node alive
    cluster = claimed[victim]
    t_kill = time.time()
    procs[victim].kill9()
    waiting = [p for i, p in enumerate(procs) if i not in claimed]
    taken = None
    deadline = time.monotonic() + 3 * PERIOD + PERIOD + 15
    while taken is None and time.monotonic() < deadline:
        for p in waiting:
            try:
                taken = p.recv(0.2, lambda m: m.get("event") == "claimed")
                break
            except Exception:
                continue
    assert taken is not None and taken["cluster"] == cluster
    delay = taken["t"] - t_kill
    print(f"cluster {cluster} retaken {delay:.2f}s after kill -9 (lease {3 * PERIOD}s + period {PERIOD}s)")
    # lease + one period, plus the random delay and settle window of the claim itself
    assert delay < 3 * PERIOD + PERIOD + 1.0 + 0.3 + 1.5


def test_restarted_node_takes_its_cluster_back(swarm8):
    procs, root, maddrs, spawn = swarm8
    run, period = "restart", 5.0  # a 15 s lease: long enough to restart a process within it
    i = next(i for i in range(5, len(procs)) if procs[i].proc.poll() is None)  # an earlier test killed one
    p = procs[i]
    p.send({"op": "claim", "run": run, "clusters": 4, "period": period})
    cluster = p.recv(60, lambda m: m.get("op") == "claim")["cluster"]
    assert cluster is not None
    p.send({"op": "owned"})
    old_peer_id = p.recv(30, lambda m: m.get("op") == "owned")["peer_id"]
    p.kill9()
    home = root / f"n{i}"
    again = spawn(NODE, root / f"n{i}b.log", "--home", str(home), "--initial-peers", *maddrs)
    procs[i] = again
    assert again.recv(120)["peer_id"] == old_peer_id
    again.send({"op": "claim", "run": run, "clusters": 4, "period": period})
    assert again.recv(60, lambda m: m.get("op") == "claim")["cluster"] == cluster


def test_a_node_whose_clock_is_off_refuses_leases(swarm8):
    """Leases are absolute DHT times: a node 2 minutes behind its peers says so and holds none, while the
    others keep theirs (the clock is injected into our own ClaimManager in a real node process)."""
    procs, root, maddrs, spawn = swarm8
    live = [p for p in procs[1:] if p.proc.poll() is None][:3]  # an earlier test killed one of them
    got = _claim_all(live, "clock", 4)
    assert None not in got
    skewed = spawn(NODE, root / "skewed.log", "--home", str(root / "skewed"), "--initial-peers", *maddrs,
                   "--clock-skew", "-120")
    skewed.recv(180)
    skewed.send({"op": "claim", "run": "clock", "clusters": 4, "period": PERIOD})
    assert skewed.recv(90, lambda m: m.get("op") == "claim")["cluster"] is None  # the free cluster stays free
    skewed.send({"op": "owned", "run": "clock", "clusters": 4})
    owned = skewed.recv(30, lambda m: m.get("op") == "owned")
    assert "behind its peers" in owned["clock"]["clock"] and owned["owned"]["clock"] is None
    assert sorted(_states(procs[0], "clock", 4)) == ["free", "training", "training", "training"]
    skewed.stop()
