"""The dial-back check: which addresses a helper agrees to dial (only the requester's own IP), its rate
limit, what doctor concludes from the answers, and real p2p daemons on 127.0.0.1 dialing a fresh listener
that is open, closed, or announced at an address that is not the requester's."""

from __future__ import annotations

import asyncio
import socket

import pytest

from node.doctor import reachability_verdict
from protocol.swarm_dialback import DialBackResponse, DialBudget, dial_targets, observed_ip, tcp_endpoint

PEER = "/p2p/QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"


def test_only_plain_tcp_addresses_at_the_requesters_ip_are_dialed():
    assert tcp_endpoint("/ip4/10.0.0.2/tcp/31337") == ("10.0.0.2", 31337)
    assert tcp_endpoint("/ip4/10.0.0.2/tcp/31337" + PEER) == ("10.0.0.2", 31337)
    assert tcp_endpoint("/ip6/::1/tcp/5") == ("::1", 5)
    for bad in ("/ip4/10.0.0.2/udp/5/quic", "/dns4/example.org/tcp/5", "/ip4/10.0.0.2/tcp/0",
                "/ip4/10.0.0.2/tcp/70000", "/ip6/10.0.0.2/tcp/5", "/ip4/nonsense/tcp/5",
                "/ip4/10.0.0.2/tcp/5" + PEER + "/p2p-circuit", "/ip4/10.0.0.2/tcp/5/ws"):
        assert tcp_endpoint(bad) is None, bad
    offered = ("/ip4/192.0.2.7/tcp/1", "/ip4/10.0.0.2/tcp/2" + PEER, "/ip4/10.0.0.2/tcp/2",
               "/ip4/10.0.0.2/tcp/3", "/ip4/10.0.0.2/tcp/4", "/ip4/10.0.0.2/tcp/5", "/ip4/10.0.0.2/tcp/6")
    assert dial_targets(offered, "10.0.0.2") == ["/ip4/10.0.0.2/tcp/2", "/ip4/10.0.0.2/tcp/3",
                                                 "/ip4/10.0.0.2/tcp/4", "/ip4/10.0.0.2/tcp/5"]  # a third host: never
    assert dial_targets(offered, None) == [] and dial_targets(offered, "192.0.2.99") == []
    assert observed_ip("/ip4/10.0.0.2/tcp/4001") == "10.0.0.2" and observed_ip("/p2p-circuit") is None


def test_budget_per_ip_and_in_flight():
    b = DialBudget(interval=5.0, concurrent=2)
    assert b.take("a", 0.0) == "" and "per 5 s" in b.take("a", 1.0)
    assert b.take("b", 1.0) == "" and "busy" in b.take("c", 1.0)
    b.release()
    assert b.take("c", 1.0) == "" and b.take("a", 6.0).startswith("busy")
    b.release()
    b.release()
    assert b.take("a", 6.0) == ""


def test_verdicts():
    ok = DialBackResponse(reachable=True, dialed=("/ip4/10.0.0.2/tcp/31337",), observed_ip="10.0.0.2")
    no = DialBackResponse(reachable=False, dialed=("/ip4/10.0.0.2/tcp/31337",), observed_ip="10.0.0.2",
                          detail="dial backoff")
    mismatch = DialBackResponse(reachable=None, observed_ip="198.51.100.4", detail="none of the addresses ...")
    assert reachability_verdict([no, ok], port=31337, announced="10.0.0.2", asked=2).verdict == "pass"
    assert "ephemeral" in reachability_verdict([ok], port=0, announced=None, asked=1).detail
    bad = reachability_verdict([no], port=31337, announced="10.0.0.2", asked=1)
    assert bad.verdict == "fail" and "31337" in bad.fix and "--relay" in bad.fix
    wrong = reachability_verdict([mismatch], port=31337, announced="10.0.0.2", asked=1)
    assert wrong.verdict == "fail" and "--announce-host 198.51.100.4" in wrong.fix
    assert reachability_verdict([], port=31337, announced=None, asked=2).verdict == "warn"
    nat = reachability_verdict([mismatch], port=0, announced=None, asked=1,
                               offered=("/ip4/192.168.1.5/tcp/4001", "/ip4/127.0.0.1/tcp/4001"))
    assert nat.verdict == "fail" and "behind NAT" in nat.detail and "198.51.100.4" in nat.fix
    lan = reachability_verdict([mismatch], port=0, announced=None, asked=1, offered=("/ip4/198.51.100.4/tcp/1",))
    assert lan.verdict == "warn"  # our own address, yet not dialed: the helper only said why it did not try


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_real_daemons_dial_back_open_closed_and_foreign_addresses():
    from hivemind.p2p import P2P

    from swarm.dialback import request_dialback, serve_dialback

    async def scenario() -> None:
        local = {"host_maddrs": ["/ip4/127.0.0.1/tcp/0"], "nat_port_map": False, "auto_nat": False}
        helper = await P2P.create(**local)
        client = await P2P.create(**local, initial_peers=[str(m) for m in await helper.get_visible_maddrs()])
        async def fresh_listener() -> tuple[P2P, int]:
            port = _free_port()
            return await P2P.create(host_maddrs=[f"/ip4/127.0.0.1/tcp/{port}"], nat_port_map=False,
                                    auto_nat=False), port

        listener, port = await fresh_listener()
        second, port2 = await fresh_listener()
        gone, port3 = await fresh_listener()
        try:
            await serve_dialback(helper, DialBudget(interval=0.0))
            hid, lid = helper.peer_id.to_base58(), listener.peer_id.to_base58()
            open_ = await request_dialback(client, hid, lid, [f"/ip4/127.0.0.1/tcp/{port}"])
            assert open_.reachable is True and open_.dialed == (f"/ip4/127.0.0.1/tcp/{port}",), open_
            assert open_.observed_ip == "127.0.0.1"
            again = await request_dialback(client, hid, second.peer_id.to_base58(), [f"/ip4/127.0.0.1/tcp/{port2}"])
            assert again.reachable is True  # checks in a row (the budget allows it here)
            foreign = await request_dialback(client, hid, lid, [f"/ip4/192.0.2.1/tcp/{port}"])
            assert foreign.reachable is None and "127.0.0.1" in foreign.detail  # never a third host
            itself = await request_dialback(client, hid, client.peer_id.to_base58(),
                                            [str(m) for m in await client.get_visible_maddrs()])
            assert itself.reachable is None and "already connected" in itself.detail  # would prove nothing
            await gone.shutdown()  # nothing listens there any more
            closed = await request_dialback(client, hid, gone.peer_id.to_base58(), [f"/ip4/127.0.0.1/tcp/{port3}"])
            assert closed.reachable is False and closed.dialed, closed
            with pytest.raises(Exception):  # noqa: B017 (a peer without the handler: whatever p2pd raises)
                await request_dialback(helper, client.peer_id.to_base58(), lid, [f"/ip4/127.0.0.1/tcp/{port}"])
        finally:
            for p in (client, helper, listener, second, gone):
                await p.shutdown()

    asyncio.run(scenario())
