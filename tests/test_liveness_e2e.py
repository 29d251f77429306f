"""A run finishes whatever the mix of roles (issue 29, item 8): real `paris-node join` daemons on 127.0.0.1,
in the topologies users choose, with no dedicated verifier added to make it pass.

- Two `auto` nodes on a K = 3 run (the README's own scenario): one node trains clusters and, with none free,
  the router; the other node's finished clusters need its attestations. Before verification had its own loop,
  the router's trainer never verified and the run never finished. Then `fetch` assembles the ensemble.
- A seeder bootstrap (which neither trains nor verifies) with two `auto` workers on K = 2.
- One verifier and one worker on K = 2.
"""

from __future__ import annotations

import json

import pytest

from tests.daemons import Daemon, Evil, cli, run_finished, wait_status, wait_until

pytestmark = pytest.mark.slow

TARGET, ROUTER, EVERY = 30, 10, 10


def common(clusters: int) -> list[str]:
    return ["--preset", "micro", "--clips", "120", "--clusters", str(clusters), "--target-steps", str(TARGET),
            "--router-steps", str(ROUTER), "--checkpoint-every", str(EVERY), "--period", "1", "--cpu-threads", "1",
            "--log-format", "json"]


@pytest.fixture
def start(tmp_path):
    started: list[Daemon] = []

    def go(name: str, *args: str) -> Daemon:
        d = Daemon(tmp_path / name, *args)
        started.append(d)
        return d

    yield go
    for d in started:
        d.stop()


def _boot(start, clusters: int, *args: str) -> tuple[Daemon, object]:
    boot = start("boot", *common(clusters), *args)
    boot.wait_for(lambda e: e.get("msg", "").startswith("new swarm started"), 240, "bootstrap ready")
    return boot, boot.home / "node.json"


def test_two_auto_nodes_finish_a_three_cluster_run_and_fetch_assembles_it(start, tmp_path):
    a, peers = _boot(start, 3)
    b = start("b", *common(3), "--initial-peers-file", str(peers))
    st = wait_status(peers, run_finished, 600, "every slot accepted at its target", watch=(a, b))
    trained = {e.get("msg") for d in (a, b) for e in d.events()}
    assert "training router" in trained
    # each node attested the other's work: nobody's checkpoints waited on a node that was busy training
    for d in (a, b):
        assert any(e.get("msg", "").startswith("attested ") for e in d.events()), f"{d.home.name} never verified"
    assert all(s["state"] == "done" for s in st["slots"] if s["cluster"] is not None)
    out = tmp_path / "ensemble"
    r = cli("fetch", "--initial-peers-file", str(peers), "--out", str(out), "--json", timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {p.name for p in out.iterdir()} >= {"expert_0", "expert_1", "expert_2", "router", "model_index.json"}
    manifest = json.loads((out / "swarm_manifest.json").read_text())
    assert manifest["run_id"] == st["run_id"]


def test_a_seeder_with_two_workers_finishes_a_two_cluster_run(start):
    seeder, peers = _boot(start, 2, "--role", "seeder")
    w1 = start("w1", *common(2), "--initial-peers-file", str(peers))
    w2 = start("w2", *common(2), "--initial-peers-file", str(peers))
    wait_status(peers, run_finished, 600, "every slot accepted at its target", watch=(seeder, w1, w2))
    assert not any(e.get("msg", "").startswith("attested ") for e in seeder.events())  # a seeder does not verify


def test_one_verifier_and_one_worker_finish_a_two_cluster_run_replaying_every_interval(start, tmp_path):
    """With --replay-every 1 the verifier re-trains every interval it checks, the router's too (from the
    router's stratified sample): honest work replays bit for bit, so the run still finishes. A trainer that
    forged only its raw weights (tests/swarm/raw_forger.py: its second interval's `model` group is its first's,
    while the EMA, loss, optimizer and RNG are honest) holds one cluster first: the content check cannot see
    it, the replay rejects it, the worker takes the cluster over from the forger's honest interval, and `fetch`
    assembles no forged weights."""
    verifier, peers = _boot(start, 2, "--role", "verifier", "--replay-every", "1")
    forger = Evil(tmp_path / "forger", peers, "raw_forger.py", "--interval", str(EVERY))
    try:
        wait_until(lambda: forger.act("rawmodel") or forger.proc.poll() is not None, 300,
               lambda: f"the forger's acts ({forger.acts}): {(tmp_path / 'forger' / 'evil.log').read_text()[-2000:]}")
        forged = forger.act("rawmodel")
        assert forged is not None, forger.acts
        worker = start("worker", *common(2), "--initial-peers-file", str(peers))
        wait_status(peers, run_finished, 600, "every slot accepted at its target", watch=(verifier, worker))
        assert any(e.get("msg") == "training router" for e in worker.events())
        attested = [e for e in verifier.events() if e.get("msg", "").startswith("attested ")]
        assert {"attested expert-0 checkpoint", "attested router checkpoint"} <= {e["msg"] for e in attested
                                                                                  if e.get("replayed")}
        verdict = next(e for e in attested if e["cid"] == forged["cid"])
        assert verdict["verdict"] == "reject" and verdict["replayed"], verdict
        assert "replay differs" in verdict["reason"] and "model" in verdict["reason"], verdict
        assert all(e["verdict"] == "accept" for e in attested if e["cid"] != forged["cid"])  # honest work replays
        took = worker.wait_for(lambda e: e.get("msg") == f"took over expert-{forged['cluster']} from its newest "
                                                         "accepted checkpoint", 5, "the takeover")
        assert took["cid"] == forger.act("lease")["cid"]  # from the forger's honest interval, not the forgery
        out = tmp_path / "ensemble"
        r = cli("fetch", "--initial-peers-file", str(peers), "--out", str(out), "--json", timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        assert forged["cid"] not in (out / "swarm_manifest.json").read_text()
    finally:
        forger.stop()
