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

from tests.daemons import Daemon, cli, run_finished, wait_status

pytestmark = pytest.mark.slow

TARGET, ROUTER, EVERY = 30, 10, 10


def common(clusters: int) -> list[str]:
    return ["--preset", "tiny", "--clips", "120", "--clusters", str(clusters), "--target-steps", str(TARGET),
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


def test_one_verifier_and_one_worker_finish_a_two_cluster_run_replaying_every_interval(start):
    """With --replay-every 1 the verifier re-trains every interval it checks, the router's too (from the
    router's stratified sample): honest work replays bit for bit, so the run still finishes."""
    verifier, peers = _boot(start, 2, "--role", "verifier", "--replay-every", "1")
    worker = start("worker", *common(2), "--initial-peers-file", str(peers))
    wait_status(peers, run_finished, 600, "every slot accepted at its target", watch=(verifier, worker))
    assert any(e.get("msg") == "training router" for e in worker.events())
    replayed = {e["msg"] for e in verifier.events() if e.get("msg", "").startswith("attested ") and e.get("replayed")}
    assert {"attested expert-0 checkpoint", "attested router checkpoint"} <= replayed
    assert all(e.get("verdict") == "accept" for e in verifier.events() if e.get("msg", "").startswith("attested "))
