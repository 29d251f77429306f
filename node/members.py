"""Where the run's members listen, remembered beyond their records' TTL: what the reconnect loop dials once a
partition heals (a random 64 of them each period; the 1,024 newest are kept)."""

from __future__ import annotations

from protocol.swarm_records import MemberBody

KEEP = 1024


class MemberBook:
    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self.seen = 0  # members of the run in the newest good read of its records
        self.addrs: dict[str, tuple[float, tuple[str, ...]]] = {}  # peer → (ts, maddrs), kept after expiry

    def note(self, view) -> None:
        """Take the members of a run view (an observer of NodeContext.read_view)."""
        self.seen = len(view.members)
        for peer, m in view.members.items():
            if isinstance(m, MemberBody) and m.maddrs:
                self.addrs[peer] = (m.ts, m.maddrs)
        if len(self.addrs) > self.keep:
            for peer in sorted(self.addrs, key=lambda p: self.addrs[p][0])[:-self.keep]:
                del self.addrs[peer]

    def dial_list(self, initial_peers: tuple[str, ...] | list[str]) -> dict[str, tuple[str, ...]]:
        """peer → addresses: the initial peers, then every member we know of."""
        initial = {m.rsplit("/p2p/", 1)[1]: (m.rsplit("/p2p/", 1)[0],) for m in initial_peers if "/p2p/" in m}
        return {**initial, **{p: addrs for p, (_, addrs) in self.addrs.items()}}
