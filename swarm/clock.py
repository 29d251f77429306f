"""How far this node's clock is from the swarm's, from the timestamps in peers' records. Leases are DHT
expirations in absolute time, so a node whose clock is off by more than a lease's length would renew leases
that are already expired (or hold them too long); it must notice and refuse to hold leases. Pure functions."""

from __future__ import annotations

from statistics import median


def clock_offset(now: float, samples: list[tuple[float, float]], *, min_peers: int = 2) -> float | None:
    """Our clock minus the swarm's (positive: we are ahead), from `samples` of (record ts, refresh interval)
    of other peers' freshest records. An honest record is 0..refresh old when read, so `now - ts - refresh/2`
    estimates our offset within ±refresh/2; the median resists a minority of peers with wrong clocks (or
    lying). None with fewer than `min_peers` samples."""
    if len(samples) < min_peers:
        return None
    return median(now - ts - refresh / 2 for ts, refresh in samples)


def clock_problem(offset: float | None, bound: float) -> str:
    """A one-line reason to refuse leases, or "" while the offset is within `bound` seconds (or unknown)."""
    if offset is None or abs(offset) <= bound:
        return ""
    side = "ahead of" if offset > 0 else "behind"
    return (f"this node's clock is about {abs(offset):.0f} s {side} its peers' (more than the {bound:.0f} s a lease "
            "tolerates): not holding leases until it is fixed (enable NTP time sync)")


def clock_verdict(now: float, samples: list[tuple[float, float]], bound: float, *, min_peers: int = 2) -> str:
    """A one-line reason to refuse leases, or "": only when more than half of the peers (one sample each, at
    least `min_peers`) put this node's clock beyond `bound` on the same side. A median of two samples is their
    mean, so one identity whose leases lie about their time could drag it anywhere; a majority of peers cannot
    be minted out of one lease record each, and a node whose clock is really off disagrees with all of them."""
    if len(samples) < min_peers:
        return ""
    offsets = [now - ts - refresh / 2 for ts, refresh in samples]
    for side in ([o for o in offsets if o > bound], [o for o in offsets if o < -bound]):
        if 2 * len(side) > len(offsets):
            return clock_problem(median(side), bound)
    return ""
