"""The dial-back check (`paris-dialback/1`): a node asks a peer to open a fresh connection to an address it
announces, to learn whether strangers can reach it there (`paris-node doctor`).

A helper dials only addresses at the IP the request came from (as AutoNAT does), so nobody can use the swarm
to open connections to a third host; each requester IP gets one dial per `MIN_INTERVAL_S`, and a helper runs
at most `MAX_CONCURRENT` at once. The decisions here are pure; swarm.dialback is the I/O around them.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field

from protocol.data import Frozen
from protocol.swarm_records import Maddr, PeerIdStr

MAX_FRAME_BYTES = 4096
MAX_TARGETS = 4
MIN_INTERVAL_S = 5.0
MAX_CONCURRENT = 4
DIAL_TIMEOUT_S = 8.0


class DialBackRequest(Frozen):
    """"Open a new connection to `peer_id` at `maddrs`" (a listener that has never dialed the helper)."""

    peer_id: PeerIdStr
    maddrs: tuple[Maddr, ...] = Field(min_length=1, max_length=16)


class DialBackResponse(Frozen):
    """`reachable` is None when the helper did not try (refused, busy, or already connected to that peer)."""

    reachable: bool | None
    dialed: tuple[Maddr, ...] = Field(default=(), max_length=MAX_TARGETS)
    observed_ip: str = Field(default="", max_length=64)  # where the helper sees the request come from
    detail: str = Field(default="", max_length=300)


def tcp_endpoint(maddr: str) -> tuple[str, int] | None:
    """(ip, port) of a plain `/ip4|ip6/ADDR/tcp/PORT[/p2p/ID]` address; None for relays, DNS names, other
    transports or anything malformed."""
    parts = maddr.strip("/").split("/")
    if len(parts) not in (4, 6) or parts[0] not in ("ip4", "ip6") or parts[2] != "tcp":
        return None
    if len(parts) == 6 and parts[4] != "p2p":
        return None
    try:
        ip = ipaddress.ip_address(parts[1])
        port = int(parts[3])
    except ValueError:
        return None
    if (ip.version == 4) != (parts[0] == "ip4") or not 0 < port < 65536:
        return None
    return str(ip), port


def observed_ip(stream_addr: str) -> str | None:
    """The requester's IP from the multiaddr of the stream it opened to us."""
    parts = stream_addr.strip("/").split("/")
    if len(parts) >= 2 and parts[0] in ("ip4", "ip6"):
        try:
            return str(ipaddress.ip_address(parts[1]))
        except ValueError:
            return None
    return None


def dial_targets(maddrs: tuple[str, ...], requester_ip: str | None) -> list[str]:
    """The addresses a helper may dial: plain TCP ones at the requester's own IP, without a /p2p suffix, at
    most MAX_TARGETS, in the order given."""
    if requester_ip is None:
        return []
    out: list[str] = []
    for m in maddrs:
        end = tcp_endpoint(m)
        if end is None or end[0] != requester_ip:
            continue
        ip, port = end
        plain = f"/{'ip6' if ':' in ip else 'ip4'}/{ip}/tcp/{port}"
        if plain not in out:
            out.append(plain)
    return out[:MAX_TARGETS]


class DialBudget:
    """One dial per requester IP per `interval` and at most `concurrent` at once (time is passed in)."""

    def __init__(self, interval: float = MIN_INTERVAL_S, concurrent: int = MAX_CONCURRENT) -> None:
        self.interval, self.concurrent = interval, concurrent
        self._last: dict[str, float] = {}
        self.running = 0

    def take(self, ip: str, now: float) -> str:
        """"" if a dial may start now (and counts it), else why not."""
        if self.running >= self.concurrent:
            return "busy: too many dial-back checks at once; try again shortly"
        last = self._last.get(ip)
        if last is not None and now - last < self.interval:
            return f"one dial-back check per {self.interval:.0f} s per address; try again shortly"
        if len(self._last) > 4096:  # forget the oldest requesters rather than grow without bound
            for old in sorted(self._last, key=self._last.__getitem__)[:2048]:
                del self._last[old]
        self._last[ip] = now
        self.running += 1
        return ""

    def release(self) -> None:
        self.running = max(0, self.running - 1)
