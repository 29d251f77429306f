"""One daemon, two devices (`join --gpu cpu,cpu`): one identity and one store, one lease per device, so it
holds and trains both clusters of a run at once; both reach their target and `status` names the two lanes
(`peer` and `peer/1`) as the owners."""

from __future__ import annotations

import json
import signal

import pytest

from tests.daemons import Daemon
from tests.test_daemon_e2e import _slots, _wait_status, common

pytestmark = pytest.mark.slow

TARGET = 30


def test_a_two_device_daemon_holds_and_trains_two_clusters_at_once(tmp_path):
    d = Daemon(tmp_path / "two", *common(TARGET), "--gpu", "cpu,cpu", "--attestations", "0")  # no other verifier
    try:
        d.wait_for(lambda e: e.get("msg", "").startswith("one lane per device"), 120, "two lanes")
        st = _wait_status(tmp_path / "two", lambda s: all(_slots(s)[f"expert-{k}"]["state"] == "done"
                                                         for k in range(2)), 600, "both experts done")
        peer = json.loads((tmp_path / "two" / "node.json").read_text())["peer_id"]
        events = d.events()
        started = {e["msg"].split()[1]: i for i, e in enumerate(events)
                   if e.get("msg", "").startswith("training expert-")}
        reached = {e["msg"].split()[0]: i for i, e in enumerate(events)
                   if e.get("msg", "").endswith("reached its target") and e["msg"].startswith("expert-")}
        assert set(started) == set(reached) == {"expert-0", "expert-1"}, (started, reached)
        # at once: each cluster started training before the other reached its target
        assert started["expert-0"] < reached["expert-1"] and started["expert-1"] < reached["expert-0"]
        roles = [e for e in events if e.get("msg") == "role: expert"]
        assert {e.get("lane") for e in roles} == {0, 1} and {e["cluster"] for e in roles} == {0, 1}
        published = {(e["msg"].split()[1], e["step"]) for e in events
                     if e.get("msg", "").startswith("published expert-")}
        assert ("expert-0", TARGET) in published and ("expert-1", TARGET) in published
        assert all(p["peer_id"] == peer for p in st["peers"]) and len(st["peers"]) == 1  # one identity
        d.proc.send_signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0
    finally:
        d.stop()
