"""A run's members, read from their buckets: `MemberReader` keeps one node's view of the member records that
live under `layout.member_keys(run)` (each peer's record in the bucket its peer id hashes to).

Why a reader with a memory: spreading member records over MEMBER_BUCKETS (64) keys keeps every key far under
hivemind's reply limit however many peers join (`layout.key_bound("members", …)`: ~109 kB at 1,000 peers,
where one key would pass 1 MiB at ~280), but reading all 64 every period would cost a toy swarm 64 DHT reads
where one did. So a reader reads every bucket on its first read and, on each later read, only:

- its own bucket (what this node wrote is seen at once),
- every bucket it never read successfully, and every bucket whose last read failed (read again at once),
- the next buckets of a rotation, as many as the time since its previous read asks for to sweep all of them
  once per SWEEP_S (`buckets_to_read`), and at least MIN_PER_READ.

It keeps the last good content of each bucket, every record until its DHT expiration (`live`). Bounds: a
bucket is read again by the first read that comes SWEEP_S or more after its previous read, and within
⌈B / MIN_PER_READ⌉ reads; the cost is about B / SWEEP_S bucket reads a second plus one or two a read,
whatever the number of callers. A member re-announces every 30 s with a TTL of at least 180 s
(node/gossip_link), so a live member never drops out of a view; a newcomer shows up within SWEEP_S plus one
read (in a fresh reader, such as `status --once`, at once).

Failures (decided here): a bucket that was never read successfully is reported in `Members.failed` (the view
does not know its members: `RunView.member_failures`, shown, but never a reason not to decide); a bucket whose
read fails after a good one keeps its last good content, records expiring on time, is retried on the next read
and is not reported. Members decide no DONE, lease or takeover, so neither a slow bucket nor one flooded past
the reply limit by minted identities may stop a node's decisions.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hivemind.utils.timed_storage import get_dht_time

from protocol.errors import ParisError
from protocol.swarm_records import MEMBER_BUCKETS, ForeignMember, member_bucket
from swarm import layout

if TYPE_CHECKING:
    from swarm.dht import RecordSet, Signed, SwarmNode

log = logging.getLogger(__name__)

SWEEP_S = 60.0  # every bucket is read at least once per this many seconds (well within a member's 180 s TTL)
MIN_PER_READ = 2  # buckets of the rotation read on every read, however soon after the previous one


@dataclass(frozen=True)
class Sweep:
    """Where a reader's rotation over the buckets stands: the next bucket in turn, and when it last read
    (monotonic seconds; None before its first read)."""

    cursor: int = 0
    last: float | None = None


def buckets_to_read(sweep: Sweep, now: float, *, own: int | None = None, due: Iterable[int] = (),
                    buckets: int = MEMBER_BUCKETS, sweep_s: float = SWEEP_S,
                    min_per_read: int = MIN_PER_READ) -> tuple[tuple[int, ...], Sweep]:
    """Which buckets to read now, and the rotation after this read. The rotation advances by
    max(min_per_read, ⌈buckets·Δt / sweep_s⌉) buckets (all of them on the first read), so the buckets it covers
    between two reads of one bucket add up to `buckets` once sweep_s has passed, or min_per_read·⌈buckets /
    min_per_read⌉ reads have; `own` and `due` (never read well, or failed last time) are added to it."""
    if sweep.last is None:
        count = buckets
    else:
        count = max(min_per_read, math.ceil(buckets * max(now - sweep.last, 0.0) / sweep_s))
    count = min(count, buckets)
    turn = {(sweep.cursor + i) % buckets for i in range(count)}
    extra = {b for b in (*due, *(() if own is None else (own,))) if 0 <= b < buckets}
    return tuple(sorted(turn | extra)), Sweep((sweep.cursor + count) % buckets, now)


def live(content: Mapping[int, tuple[Signed, ...]], now: float) -> tuple[Signed, ...]:
    """The records of every bucket as last read that have not expired by `now` (DHT time)."""
    return tuple(r for b in sorted(content) for r in content[b] if r.expiration_time >= now)


@dataclass(frozen=True)
class Members:
    """What a reader knows of a run's members after a read."""

    records: tuple[Signed, ...]  # the live member records of every bucket, as last read
    foreign: tuple[ForeignMember, ...]  # members speaking another protocol version
    failed: tuple[str, ...] = ()  # why buckets that were never read successfully are unknown
    read: tuple[int, ...] = ()  # the buckets this read asked for


class MemberReader:
    """One node's view of one run's member buckets (`SwarmNode.member_reader` keeps one per run). `plan` and
    `absorb` are the decisions, with no I/O; `read` is the thin shell that asks the DHT."""

    def __init__(self, run_id: str, own_peer: str | None = None, *, buckets: int = MEMBER_BUCKETS,
                 sweep_s: float = SWEEP_S, min_per_read: int = MIN_PER_READ) -> None:
        self.run_id = run_id
        self.keys = layout.member_keys(run_id)[:buckets]
        self.own = None if own_peer is None else member_bucket(own_peer)
        self.buckets, self.sweep_s, self.min_per_read = buckets, sweep_s, min_per_read
        self.sweep = Sweep()
        self.content: dict[int, tuple[Signed, ...]] = {}  # bucket → its records as last read well
        self.foreign: dict[int, tuple[ForeignMember, ...]] = {}
        self.retry: set[int] = set()  # buckets whose last read failed
        self.why: dict[int, str] = {}  # bucket never read well → why its last read failed

    def plan(self, now: float, *, full: bool = False) -> tuple[int, ...]:
        """The buckets to read now (monotonic seconds), advancing the rotation; `full`: every bucket."""
        due = (set(range(self.buckets)) - set(self.content)) | self.retry
        chosen, self.sweep = buckets_to_read(self.sweep, now, own=self.own, due=due, buckets=self.buckets,
                                             sweep_s=self.sweep_s, min_per_read=self.min_per_read)
        return tuple(range(self.buckets)) if full else chosen

    def absorb(self, results: Mapping[int, RecordSet | Exception], now: float) -> Members:
        """Take the outcome of each bucket read (a RecordSet, or the error it raised) and return the members
        as of `now` (DHT time). A RecordSet with `failed` set holds the live records the node last saw there."""
        for b, got in results.items():
            if isinstance(got, Exception) or got.failed:
                why = str(got) if isinstance(got, Exception) else got.failed
                self.retry.add(b)
                if not isinstance(got, Exception) and got.records:
                    self.content[b] = got.records  # the live records the node last read there
                if b in self.content:
                    log.debug("member bucket %s: %s; keeping its last good content", self.keys[b], why)
                    self.why.pop(b, None)
                else:
                    self.why[b] = why
                continue
            self.content[b], self.foreign[b] = got.records, got.foreign
            self.retry.discard(b)
            self.why.pop(b, None)
        return Members(live(self.content, now), tuple(f for b in sorted(self.foreign) for f in self.foreign[b]),
                       tuple(self.why[b] for b in sorted(self.why)), tuple(sorted(results)))

    async def read(self, node: SwarmNode, *, full: bool = False) -> Members:
        """Read the planned buckets concurrently. Never raises for a failed bucket read: see `absorb`."""
        chosen = self.plan(time.monotonic(), full=full)
        got = await asyncio.gather(*(node.get(self.keys[b]) for b in chosen), return_exceptions=True)
        for g in got:
            if isinstance(g, BaseException) and not isinstance(g, ParisError):
                raise g  # a failed read is a ParisError (swarm.dht.DHTReadError); anything else is a bug
        return self.absorb(dict(zip(chosen, got, strict=True)), get_dht_time())
