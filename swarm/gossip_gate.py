"""Admission of received gossip: authenticate, drop duplicates, rate-limit each sender (token bucket), and
count every drop by reason. Pure (no libp2p, no hivemind), so it is unit-tested in any process."""

from __future__ import annotations

import collections

from protocol.errors import IntegrityError
from protocol.swarm_gossip import GossipMessage, GossipSettings, verify_message


class Gate:
    """One per worker; `check` is called once per message id (gossipsub's own cache stops exact repeats)."""

    def __init__(self, settings: GossipSettings):
        self.settings = settings
        self.seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self.buckets: dict[str, tuple[float, float]] = {}
        self.dropped: collections.Counter[str] = collections.Counter()
        self.delivered = 0

    def check(self, data: bytes, now: float) -> GossipMessage | None:
        """The verified message, or None (and a counter bumped) if it must be dropped."""
        try:
            msg = verify_message(data, now)
        except IntegrityError as e:
            self.dropped[str(e)] += 1
            return None
        key = (msg.sender, msg.seq)
        if key in self.seen:
            self.dropped["duplicate"] += 1
            return None
        tokens, last = self.buckets.get(msg.sender, (self.settings.sender_burst, now))
        tokens = min(self.settings.sender_burst, tokens + (now - last) * self.settings.sender_rate)
        if tokens < 1:
            self.buckets[msg.sender] = (tokens, now)
            self.dropped["rate_limited"] += 1
            return None
        self.buckets[msg.sender] = (tokens - 1, now)
        self.seen[key] = None
        while len(self.seen) > self.settings.dedup_window:
            self.seen.popitem(last=False)
        if len(self.buckets) > 4 * self.settings.dedup_window:  # bounded memory under a sybil flood
            self.buckets.clear()
        self.delivered += 1
        return msg
