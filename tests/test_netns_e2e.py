"""Across hosts, with real daemons in network namespaces this test creates and removes (tests/netns.py):

1. three nodes on a LAN (10.77.0.1-3) join with `--host/--announce-host`; the owner of the run's cluster is
   cut off (its link down at the bridge) for several lease periods. The majority takes the cluster over from
   the newest accepted checkpoint while the isolated owner trains on alone. After the link comes back, the
   DHT spans both sides again, exactly one node keeps training the cluster (the one with more progress), no
   published step is lost (the accepted head reaches the newest step either side published), and every
   checkpoint both sides published during the split is judged by the acceptance rule, none rejected.
2. `doctor` on a LAN host finds its announced address reachable; behind a masquerading NAT router it finds
   that peers see another address and says so.
3. a node behind the NAT joins with `--behind-nat` (the LAN nodes run `--relay`): it fetches the run and a
   checkpoint through the NAT, and a fresh peer on the LAN connects to it through the creator's relay, while
   its private address stays unreachable.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests import netns, zygote
from tests.daemons import CLI, ENV, PACED, ROOT, Daemon

pytestmark = pytest.mark.slow

PERIOD = 1.0
LEASE = 3 * PERIOD  # ClaimManager: a lease lasts three periods
EVERY = 25  # a checkpoint every ~6 s on these machines: one verifier keeps up with it
PORT = 31337


def _args(ip: str | None, *more: str) -> list[str]:
    where = ["--host", ip, "--port", str(PORT), "--announce-host", ip] if ip else []
    return [*PACED, "--clips", "60", "--clusters", "1", "--target-steps", "100000", "--router-steps",
            "10", "--checkpoint-every", str(EVERY), "--period", str(PERIOD), "--cpu-threads", "1",
            "--log-format", "json", *where, *more]


@pytest.fixture
def lan():
    why = netns.unavailable()
    if why:
        pytest.skip(f"multi-host tests need network namespaces: {why}")
    net = netns.Lan()
    started: list[Daemon] = []
    try:
        yield net, started
    finally:
        for d in started:
            d.stop()
        net.close()


def _in(net: netns.Lan, host: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return zygote.run_to_end([*net.argv(host), *CLI, *args], cwd=ROOT, env=ENV, timeout=timeout)


def _status(net: netns.Lan, host: str, peers_file: Path) -> dict:
    r = _in(net, host, "status", "--initial-peers-file", str(peers_file), "--json", "--no-gossip")
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout)


def _slot(st: dict, name: str = "expert-0") -> dict:
    return next(s for s in st["slots"] if s["slot"] == name)


def _since(d: Daemon, msg: str, t0: float) -> list[dict]:
    return [e for e in d.events() if e.get("msg") == msg and e.get("ts", 0) >= t0]


def _published(d: Daemon, t0: float = 0.0) -> list[dict]:
    return _since(d, "published expert-0 checkpoint", t0)


DIAL = """
import asyncio, sys
from hivemind.p2p import P2P, PeerID
from multiaddr import Multiaddr

async def main(target, *maddrs):
    p2p = await P2P.create(host_maddrs=["/ip4/0.0.0.0/tcp/0"], use_relay=True, nat_port_map=False, auto_nat=False)
    try:
        for m in maddrs:
            try:
                await asyncio.wait_for(p2p._client.connect(PeerID.from_base58(target), [Multiaddr(m)]), 20)
                print("OK", m)
            except Exception as e:
                print("FAIL", m, str(e).splitlines()[0][:200] if str(e) else type(e).__name__)
    finally:
        await p2p.shutdown()

asyncio.run(main(*sys.argv[1:]))
"""


def test_partition_heals_to_one_owner_doctor_and_nat(lan, tmp_path):
    net, started = lan
    ips = {name: net.host(name, octet) for name, octet in (("a", 1), ("b", 2), ("c", 3))}
    private, gw = net.nat_host("d", 10)

    def start(name: str, *args: str) -> Daemon:
        d = Daemon(tmp_path / name, *args, prefix=tuple(net.argv(name)))
        started.append(d)
        return d

    a = start("a", *_args(ips["a"], "--role", "verifier", "--relay"))
    a.wait_for(lambda e: e.get("msg", "").startswith("new swarm started"), 240, "the creator is ready")
    peers = tmp_path / "a" / "node.json"
    info = json.loads(peers.read_text())
    assert all(f"/ip4/{ips['a']}/tcp/{PORT}/" in m for m in info["maddrs"]), info["maddrs"]
    nodes = {"a": a, "b": start("b", *_args(ips["b"], "--role", "expert", "--relay", "--initial-peers-file",
                                            str(peers))),
             "c": start("c", *_args(ips["c"], "--role", "expert", "--relay", "--initial-peers-file", str(peers)))}
    # the NATed node joins now and stays through the partition (checked at the end)
    d = start("d", *_args(None, "--host", "0.0.0.0", "--port", str(PORT), "--role", "seeder", "--behind-nat",
                          "--initial-peers-file", str(peers)))
    d_started = time.monotonic()

    # one expert trains the cluster; the other waits for it. Cut the trainer once the verifier (a seeder too)
    # holds an accepted copy of one of its checkpoints
    owner = None
    deadline = time.monotonic() + 300
    while owner is None and time.monotonic() < deadline:
        owner = next((n for n in ("b", "c") if nodes[n].events() and any(
            e.get("msg") == "training expert-0" for e in nodes[n].events())), None)
        time.sleep(1)
    assert owner is not None, "nobody trains the cluster"
    other = "c" if owner == "b" else "b"
    a.wait_for(lambda e: e.get("msg") == "replicated expert-0 checkpoint", 300, "the verifier holds a checkpoint")
    cut_at = time.time()
    net.cut(owner)
    before = max(e["step"] for e in _published(nodes[owner]))

    # the majority takes the cluster over; the isolated owner trains on; both publish during the split
    took = nodes[other].wait_for(lambda e: e.get("msg") == "took over expert-0 from its newest accepted checkpoint",
                                 120, "the majority takes the cluster over")
    nodes[other].wait_for(lambda e: e.get("msg") == "published expert-0 checkpoint" and e["step"] > took["step"],
                          120, "the new owner publishes")
    nodes[owner].wait_for(lambda e: e.get("msg") == "published expert-0 checkpoint" and e["step"] > before,
                          120, "the isolated owner publishes")
    time.sleep(max(0.0, cut_at + 4 * LEASE - time.time()))
    assert nodes[owner].proc.poll() is None and nodes[other].proc.poll() is None
    split = {n: [e for e in _published(nodes[n], cut_at)] for n in (owner, other)}
    heal_at = time.time()
    net.heal(owner)

    # one owner again: the side with less progress stops within two lease periods of meeting the other
    progress = {n: max(e["step"] for e in split[n]) for n in split}
    stop_msg = "another node owns cluster 0 now (a partition healed?); stopping this expert"
    loser = None
    deadline = time.monotonic() + 120
    while loser is None and time.monotonic() < deadline:
        loser = next((n for n in split if _since(nodes[n], stop_msg, heal_at)), None)
        time.sleep(0.5)
    assert loser is not None, f"both sides still train after the heal: {progress}"
    winner = other if loser == owner else owner
    stopped = _since(nodes[loser], stop_msg, heal_at)[0]["ts"]
    met = [e["ts"] for n in nodes for e in _since(nodes[n], "reconnected to peers the DHT had lost", heal_at)]
    # the sides meet again when a reconnect re-dials a lost peer, or at once if the routing tables kept them
    met_at = min(met) if met else heal_at
    # leases rank by *accepted* progress: the loser can know it lost once a verifier (itself or another) accepted
    # a checkpoint of the winner past the loser's own progress (on the majority's side that happened during the
    # split). How long it takes after the heal is fetching and checking the isolated side's checkpoints (CI:
    # 8.5 s after the re-dial), not the lease rule
    ahead = {e["cid"] for e in split[winner] if e["step"] > progress[loser]}
    accepted_at = [e["ts"] for n in nodes for e in _since(nodes[n], "attested expert-0 checkpoint", cut_at)
                   if e.get("cid") in ahead and e.get("verdict") == "accept"]
    # a lease also ranks by progress on a complete lineage that awaits only attestations (swarm.claim_logic), so
    # the loser may learn it lost as soon as it reads the winner's records, before any of them is accepted
    learned_at = max(met_at, min(accepted_at)) if accepted_at else met_at
    print(f"heal → loser stops: {stopped - heal_at:.1f} s; reconnect → stop: {stopped - met_at:.1f} s "
          f"({len(met)} re-dial(s)); winner's progress accepted → stop: {stopped - learned_at:.1f} s; "
          f"progress at heal {progress}")
    # two lease periods and two renewal rounds, + 1 s: the loser stops at its next training-step boundary
    # after it learns it lost (CI once: 8.2 s of 8). With no re-dial the sides meet over connections that
    # outlived the cut: Linux doubles their retransmission timeout on every unanswered try, so the next try
    # can come up to as long after the heal as the cut lasted (CI once: 9.4 s of 9 with no re-dial)
    backoff = 0.0 if met else heal_at - cut_at
    assert stopped - learned_at <= 2 * LEASE + 2 * PERIOD + 1.0 + backoff, (stopped - learned_at, backoff, progress)
    nodes[winner].wait_for(lambda e: e.get("msg") == "published expert-0 checkpoint" and e["ts"] > stopped + LEASE
                           and e["step"] > max(progress.values()), 120, "the winner trains on past the split")
    assert not _since(nodes[winner], stop_msg, heal_at), "the winner must keep the cluster"
    assert len({e["cid"] for e in split[loser]} & {e["cid"] for e in split[winner]}) == 0  # two real branches

    # nothing lost: the accepted head passes the newest step of the split, and every checkpoint both sides
    # published during it is judged, none rejected. Judged by some verifier, not necessarily the creator: a
    # verifier skips an accepted checkpoint that an accepted descendant already supersedes (role_verifier)
    split_cids = {e["cid"]: e["step"] for n in split for e in split[n]}

    def verdicts() -> dict[str, tuple[int, str]]:
        out: dict[str, tuple[int, str]] = {}
        for n in nodes.values():
            for e in n.events():
                if e.get("msg") == "attested expert-0 checkpoint":
                    old = out.get(e["cid"])
                    out[e["cid"]] = (e["step"], "reject" if "reject" in (e["verdict"], old and old[1]) else "accept")
        return out

    deadline = time.monotonic() + 240
    while not (split_cids.keys() <= verdicts().keys()
               and any(step > max(progress.values()) for step, _ in verdicts().values())):
        assert time.monotonic() < deadline, f"split checkpoints not all judged: {split_cids} vs {verdicts()}"
        time.sleep(1)
    assert {verdicts()[c][1] for c in split_cids} == {"accept"}, verdicts()
    st = _status(net, "a", peers)
    assert (_slot(st)["checkpoint_step"] or 0) > max(progress.values()), _slot(st)  # the accepted head moved on
    assert not _slot(st)["rejected"], _slot(st)["rejected"]

    # doctor on the LAN: peers dial the announced address back; behind the NAT: they see the router's address
    # (the node learns it is behind NAT and what to do)
    r = _in(net, "b", "doctor", "--home", str(tmp_path / "doc-b"), "--initial-peers-file", str(peers),
            "--host", ips["b"], "--port", "31400", "--announce-host", ips["b"], "--json")
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["reachable"]["verdict"] == "pass", checks["reachable"]
    assert f"/ip4/{ips['b']}/tcp/31400" in checks["reachable"]["detail"]
    r = _in(net, "d", "doctor", "--home", str(tmp_path / "doc-d"), "--initial-peers-file", str(peers),
            "--host", "0.0.0.0", "--port", "31400", "--json")
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    checks = {c["name"]: c for c in json.loads(r.stdout)["checks"]}
    assert checks["peers"]["verdict"] == "pass"  # dialing out through the NAT works
    assert checks["reachable"]["verdict"] == "fail" and "behind NAT" in checks["reachable"]["detail"]
    assert gw in checks["reachable"]["detail"] and "--behind-nat" in checks["reachable"]["fix"]

    # the NATed node: it fetched the run and a checkpoint through the NAT (outbound), and a fresh LAN peer
    # reaches it through the creator's relay, never at its private address
    d.wait_for(lambda e: e.get("msg") == "replicated expert-0 checkpoint", 240, "the NATed node fetches a checkpoint")
    d_id = json.loads((tmp_path / "d" / "node.json").read_text())["peer_id"]
    circuit = f"/ip4/{ips['a']}/tcp/{PORT}/p2p/{info['peer_id']}/p2p-circuit"
    r = zygote.run_to_end([*net.argv("b"), *CLI[:1], "-c", DIAL, d_id, f"/ip4/{private}/tcp/{PORT}", circuit],
                          cwd=ROOT, env=ENV, timeout=120)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith(("OK", "FAIL"))]
    print(f"behind NAT, {time.monotonic() - d_started:.0f} s after it started:", lines)
    assert len(lines) == 2 and lines[0].startswith("FAIL"), r.stdout + r.stderr[-2000:]  # not at its private IP
    assert lines[1].startswith("OK"), f"not reachable through the relay: {lines[1]}"
