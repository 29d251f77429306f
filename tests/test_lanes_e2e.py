"""One daemon, two devices (`join --gpu cpu,cpu`): one identity and one store, one lease per device, so it
holds and trains both clusters of a run at once; both reach their target and `status` names the two lanes
(`peer` and `peer/1`) as the owners. With `--ddp` the same daemon trains one expert at a time over both."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.daemons import Daemon, slots, wait_status
from tests.test_daemon_e2e import common

pytestmark = pytest.mark.slow

TARGET = 30


def test_a_two_device_daemon_holds_and_trains_two_clusters_at_once(tmp_path):
    d = Daemon(tmp_path / "two", *common(TARGET), "--gpu", "cpu,cpu", "--attestations", "0")  # no other verifier
    try:
        d.wait_for(lambda e: e.get("msg", "").startswith("one lane per device"), 120, "two lanes")
        st = wait_status(tmp_path / "two", lambda s: all(slots(s)[f"expert-{k}"]["state"] == "done"
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


def _gone(pid: int) -> bool:
    """No such process, or a zombie nobody reaped (an orphan's parent here may be a container's init)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True


def _wait_gone(pids: list[int], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if all(_gone(p) for p in pids):
            return True
        time.sleep(0.5)
    return False


def test_a_ddp_daemon_trains_each_expert_over_both_devices_and_leaves_no_rank_behind(tmp_path):
    """`join --gpu cpu,cpu --ddp`: one lease at a time, each expert trained by two processes (this daemon as
    rank 0, a spawned follower); a cluster's follower exits when it reaches its target, and a follower whose
    daemon is killed -9 exits too instead of waiting on a collective."""
    d = Daemon(tmp_path / "ddp", *common(TARGET), "--gpu", "cpu,cpu", "--ddp", "--attestations", "0")
    try:
        d.wait_for(lambda e: e.get("msg", "").startswith("DDP: one expert at a time"), 120, "the DDP lane")
        first = d.wait_for(lambda e: e.get("msg") == "DDP ranks up", 180, "the first DDP group")
        assert first["world"] == 2 and len(first["follower_pids"]) == 1
        slot = first["slot"]
        d.wait_for(lambda e: e.get("msg") == f"{slot} reached its target", 300, f"{slot} done")
        assert _wait_gone(first["follower_pids"], 30), "the first group's follower is still there"
        second = d.wait_for(lambda e: e.get("msg") == "DDP ranks up" and e["slot"] != slot, 180, "the second group")
        events = d.events()
        assert not [e for e in events if e.get("msg") == "role: expert" and e.get("lane")]  # one lane only
        published = {(e["msg"].split()[1], e["step"]) for e in events if e.get("msg", "").startswith("published ")}
        assert (slot, TARGET) in published
        assert not [e for e in events if e.get("level") == "error"]
        os.kill(d.proc.pid, signal.SIGKILL)  # the daemon alone, not its process group
        d.proc.wait(10)
        assert _wait_gone(second["follower_pids"], 20), "a follower outlived its daemon (kill -9)"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(d.proc.pid, signal.SIGKILL)  # what else it had started (gossip, p2pd)
        d.stop()
