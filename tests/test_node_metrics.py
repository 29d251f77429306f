"""The metrics endpoint (node.metrics) on a status snapshot (node.status) of every lane: every family parses with
prometheus_client's own parser, values follow the snapshot at scrape time, and a taken port is a one-line
error."""

from __future__ import annotations

import socket
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.lane import Lane
from node.metrics import NodeMetrics
from node.status import LaneStatus, NodeStatus, lane_status
from protocol.errors import ParisError


def _status(**kw) -> NodeStatus:
    """Two lanes: lane 0 trains expert-2, lane 1 trains the router (`join --gpu cpu,cpu`)."""
    lanes = (LaneStatus(index=0, device="cpu", role="expert", cluster=2, slot="expert-2", step=40, target=100,
                        samples_per_s=12.5, loss=0.25),
             LaneStatus(index=1, device="cpu", role="router", slot="router", step=7, target=50, samples_per_s=3.0))
    base = dict(peer_id="QmPeer", run_id="run-x", lanes=lanes, served_bytes=1000, fetched_bytes=2000,
                store_bytes=5000, peers_seen=3, verdicts={"accept": 2, "reject": 1})
    base.update(kw)
    return NodeStatus(**base)


def _scrape(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_metrics_follow_the_daemon_and_parse():
    m = NodeMetrics()
    status = {"now": _status()}
    m.watch(lambda: status["now"])
    port = m.serve("127.0.0.1", 0)
    try:
        m.observe_publish("expert-2", 0.3, 4096, 1.25)
        m.gossip = {"peers": 4, "delivered": 10, "published": 7, "dropped": {"bad_signature": 2}}
        got = _scrape(port)
        slot = (("slot", "expert-2"),)
        assert got[("paris_training_step", slot)] == 40 and got[("paris_training_target_steps", slot)] == 100
        assert got[("paris_training_samples_per_second", slot)] == 12.5 and got[("paris_training_loss", slot)] == 0.25
        assert got[("paris_validation_loss", slot)] == 1.25
        assert got[("paris_checkpoint_publish_seconds_count", slot)] == 1
        assert got[("paris_checkpoint_published_bytes_total", slot)] == 4096
        assert got[("paris_content_served_bytes_total", ())] == 1000
        assert got[("paris_content_fetched_bytes_total", ())] == 2000
        assert got[("paris_content_store_bytes", ())] == 5000 and got[("paris_peers", ())] == 3
        assert got[("paris_verifications_total", (("verdict", "accept"),))] == 2
        assert got[("paris_verifications_total", (("verdict", "reject"),))] == 1
        assert got[("paris_gossip_messages_total", (("direction", "in"),))] == 10
        assert got[("paris_gossip_dropped_total", (("reason", "bad_signature"),))] == 2
        assert got[("paris_cluster", (("lane", "0"),))] == 2 and got[("paris_cluster", (("lane", "1"),))] == -1
        # every lane's training shows, not only the first device's
        router = (("slot", "router"),)
        assert got[("paris_training_step", router)] == 7 and got[("paris_training_target_steps", router)] == 50
        assert ("paris_training_loss", router) not in got  # no loss yet: no sample, rather than a made-up one
        assert got[("paris_node_info", (("peer_id", "QmPeer"), ("role", "expert,router"), ("run_id", "run-x")))] == 1
        # a node that trains nothing (a verifier between rounds, or still fetching its run) still answers
        status["now"] = _status(run_id="", lanes=(LaneStatus(index=0, device="cpu", role="verifier"),))
        got = _scrape(port)
        assert got[("paris_cluster", (("lane", "0"),))] == -1 and not any(k[0] == "paris_training_step" for k in got)
        assert got[("paris_validation_loss", slot)] == 1.25  # our newest publication stays visible
    finally:
        m.close()


def test_a_taken_metrics_port_is_a_one_line_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ParisError, match=f"--metrics-port {port}: cannot listen"):
            NodeMetrics().serve("127.0.0.1", port)


def test_the_grafana_dashboard_reads_only_metrics_we_export():
    import json
    import re
    from pathlib import Path

    dash = json.loads((Path(__file__).resolve().parents[1] / "docker" / "grafana-dashboard.json").read_text())
    queried = {name for p in dash["panels"] for t in p["targets"] for name in re.findall(r"paris_\w+", t["expr"])}
    m = NodeMetrics()
    m.watch(_status)
    m.observe_publish("expert-2", 0.3, 4096, 1.25)
    m.gossip = {"peers": 4, "delivered": 10, "published": 7, "dropped": {"x": 1}}
    port = m.serve("127.0.0.1", 0)
    try:
        exported = {name for name, _ in _scrape(port)}
    finally:
        m.close()
    assert queried and queried <= exported, queried - exported


def test_a_lanes_status_is_what_its_driver_reports():
    lane = Lane(None, 1, "cpu")  # type: ignore[arg-type]  (the status reads only the lane's own state)
    assert lane_status(lane) == LaneStatus(index=1, device="cpu", role="starting")
    lane.role, lane.cluster, lane._slot = "expert", 4, "expert-4"
    lane.driver = SimpleNamespace(latest=SimpleNamespace(step=9, samples_per_s=float("nan"), loss_ema=0.5),
                                  target=20)
    assert lane_status(lane) == LaneStatus(index=1, device="cpu", role="expert", cluster=4, slot="expert-4", step=9,
                                           target=20, samples_per_s=None, loss=0.5)
