"""`paris-node doctor`: each failure it names, produced on purpose (a taken port, a full disk through the
injectable probe, no peer answering, a clock far off), and a healthy node passing."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest
from typer.testing import CliRunner

from node.cli import app
from node.doctor import DISK_FAIL, DISK_WARN, Probes, clock, disk, gpu, ports, swarm_checks


def test_disk_verdicts_follow_free_space(tmp_path):
    for free, verdict in ((DISK_FAIL - 1, "fail"), (DISK_WARN - 1, "warn"), (DISK_WARN * 4, "pass")):
        c = disk(tmp_path, Probes(free_space=lambda _p, f=free: f))
        assert c.verdict == verdict, (free, c)
    assert "larger disk" in disk(tmp_path, Probes(free_space=lambda _p: 1)).fix
    assert disk(tmp_path / "not" / "yet", Probes(free_space=lambda _p: DISK_WARN * 2)).verdict == "pass"


def test_ports_and_gpu_and_clock():
    taken = Probes(can_bind=lambda host, port: "Address already in use" if port == 31338 else "")
    got = {c.name: c for c in ports("0.0.0.0", 31337, 31338, taken)}
    assert got["port"].verdict == "pass" and got["gossip port"].verdict == "fail"
    assert "--gossip-port" in got["gossip port"].fix and "in use" in got["gossip port"].detail
    assert ports("127.0.0.1", 0, 0, taken)[0].verdict == "pass"
    assert gpu("cpu").verdict == "pass"
    if not __import__("torch").cuda.is_available():
        assert gpu("0").verdict == "fail"
    now = 1000.0
    assert clock(now, [now - 15.0, now - 15.0, now - 15.0]).verdict == "pass"  # fresh records: in sync
    assert clock(now, [now - 75.0] * 3).verdict == "fail" and "NTP" in clock(now, [now - 75.0] * 3).fix
    assert clock(now, [now]).verdict == "warn"  # one peer is not enough to judge


def test_a_taken_port_fails_the_command_with_json(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = CliRunner().invoke(app, ["doctor", "--home", str(tmp_path), "--port", str(port), "--gossip-port",
                                          "0", "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert report["ok"] is False
    bad = [c for c in report["checks"] if c["verdict"] == "fail"]
    assert [c["name"] for c in bad] == ["port"] and str(port) in bad[0]["detail"]


@pytest.mark.slow
def test_swarm_checks_with_no_peer_answering_and_with_a_live_one(tmp_path):
    from swarm.dht import SwarmNode

    dead = "/ip4/127.0.0.1/tcp/9/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
    got = asyncio.run(swarm_checks([dead], tmp_path / "a", None))
    assert got[0].name == "peers" and got[0].verdict == "fail" and "initial peers" in got[0].detail
    boot = SwarmNode.start(tmp_path / "boot")
    try:
        got = asyncio.run(swarm_checks(boot.visible_maddrs(), tmp_path / "b", None))
        assert got[0].verdict == "pass" and got[2].name == "run" and got[2].verdict == "warn"  # a swarm, no run
        assert got[1].name == "reachable" and got[1].verdict == "warn"  # a plain DHT node does not dial back
        assert "answered a dial-back" in got[1].detail

        async def with_a_paris_peer(port: int) -> list:
            from swarm.dialback import serve_dialback

            await serve_dialback(await boot.dht.replicate_p2p())
            return await swarm_checks(boot.visible_maddrs(), tmp_path / "c", None, port=port)

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        got = {c.name: c for c in asyncio.run(with_a_paris_peer(port))}
        assert got["reachable"].verdict == "pass" and f"/tcp/{port}" in got["reachable"].detail, got["reachable"]
    finally:
        boot.shutdown()
