"""A swarm at Paris scale, simulated in one process: P logical peers (K trainers, V verifiers, the rest seeders
and standbys) over a run of S steps, with no training and no network, but with the project's real decision
code and records: records are real `protocol.swarm_records` bodies encoded by `encode_envelope` under the keys
of `swarm.layout` (shards refuse what is not theirs), acceptance is `swarm.acceptance.judge` anchored on
quorum certificates that readers re-check (`swarm.layout.check_certificate`), verifiers are assigned and
staggered by `swarm.verify_plan.VerifyPlan`, stop at `layout.attestation_needed`, archivers are
`layout.archivers`, and a lease whose trainer left is taken over through `swarm.claim_logic.choose_cluster`.

The simulated DHT keeps every live value and refuses a read past hivemind's 4 MiB reply limit (an error, never
an empty result); a read or write costs `--latency` seconds; peers leave at `--churn` per hour and are
replaced. Signatures are stand-ins of a real RSA signature's size; their CPU cost is measured once with a real
key and charged per new record version (validated once, then cached by content hash).

Reported over time: bytes per key (max, by kind), records read and CPU per period by a verifier that follows
every slot (the busiest reader), time from publication to acceptance, verification redundancy (verifiers that
downloaded and checked each checkpoint), the trainer's upload per checkpoint (verifiers and replicas re-serve
what they fetched; a download spreads over every provider: an upper bound for the node, whose checkers ask the
trainer last and announce after their check, node/checker.py), and lease changes.

    python benchmarks/swarm_scale.py --experts 64 --verifiers 100 --peers 1000 --steps 200000 [--json]
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import heapq
import json
import math
import random
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from protocol.canonical import canonical_json
from protocol.errors import IntegrityError
from protocol.swarm_records import (
    ArchivedBody,
    AttestationBody,
    CheckpointBody,
    ClaimBody,
    ClaimState,
    MemberBody,
    decode_envelope,
    encode_envelope,
    run_key,
    subkey_suffix,
)
from swarm import layout
from swarm.acceptance import Claim, Policy, Status, Vote, judge
from swarm.claim_logic import ClaimView, Snapshot, choose_cluster
from swarm.verify_plan import VerifyPlan, verifier_secret

RUN = "scale"
REPLY_LIMIT = 4 * 1024 * 1024
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _peer_id(i: int) -> str:
    h = int.from_bytes(hashlib.sha256(f"peer{i}".encode()).digest(), "big")
    return "12D3KooW" + "".join(_B58[(h >> (6 * j)) % 58] for j in range(44))


def _cid(slot: str, step: int, trainer: str) -> str:
    digest = hashlib.sha256(f"{slot}|{step}|{trainer}".encode()).digest()
    return "bafkrei" + base64.b32encode(digest).decode().lower()[:52]


class Peer:
    """A logical peer: its id, a public key of an OpenSSH RSA key's length, and a stand-in signer."""

    def __init__(self, i: int) -> None:
        self.i, self.peer_id = i, _peer_id(i)
        self.owner = b"ssh-rsa " + base64.b64encode(hashlib.sha256(self.peer_id.encode()).digest() * 9)[:372]
        self.alive = True

    def sign(self, data: bytes) -> bytes:
        return base64.b64encode(hashlib.sha256(self.owner + data).digest() * 8)  # a 2048-bit signature's size


def _verify(owner: bytes, data: bytes, sig: bytes) -> bool:
    return sig == base64.b64encode(hashlib.sha256(owner + data).digest() * 8)


class SimDHT:
    """Live values per key and subkey; a read of more than the reply limit fails loudly."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, tuple[bytes, float]]] = defaultdict(dict)
        self.max_bytes: dict[str, int] = defaultdict(int)  # by key kind
        self.max_key = ("", 0)

    def put(self, key: str, subkey: str, value: bytes, expiration: float, now: float) -> None:
        decode_envelope(value)  # the validator every node runs: a record outside its shard is refused here
        live = {k: v for k, v in self.keys[key].items() if v[1] > now}
        live[subkey] = (value, expiration)
        self.keys[key] = live
        size = sum(len(v) for v, _ in live.values())
        kind = key.split("/")[2]
        self.max_bytes[kind] = max(self.max_bytes[kind], size)
        if size > self.max_key[1]:
            self.max_key = (key, size)

    def get(self, key: str, now: float) -> list[bytes]:
        values = [v for v, exp in self.keys.get(key, {}).values() if exp > now]
        if sum(map(len, values)) > REPLY_LIMIT:
            raise IntegrityError(f"a read of {key} is over the {REPLY_LIMIT}-byte reply limit")
        return values


@dataclass
class Slot:
    name: str
    trainer: Peer | None = None
    step: int = 0  # the trainer's current step
    head: tuple[str, int, float] | None = None  # certified (cid, step, best loss)
    claims: dict[str, Claim] = field(default_factory=dict)  # live trainer claims since the head's epoch
    votes: dict[str, list[Vote]] = field(default_factory=lambda: defaultdict(list))
    accepted: set[str] = field(default_factory=set)
    parent: str | None = None
    loss: float = 2.0
    dirty: bool = True  # something new since the reader last judged it


class Sim:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a, self.rng = a, random.Random(a.seed)
        self.dht, self.now, self.events = SimDHT(), 0.0, []
        self.peers = [Peer(i) for i in range(a.peers)]
        self.next_peer = a.peers
        self.q = a.quorum
        self.policy = Policy(attestations=a.quorum, max_interval=a.checkpoint_every)
        k, v = a.experts, a.verifiers
        self.slots = [Slot(f"expert-{i}") for i in range(k)]
        self.verifiers = self.peers[k:k + v]
        self.plans = {p.peer_id: VerifyPlan(verifier_secret(p.owner), a.quorum + 1, 10, a.patience)
                      for p in self.verifiers}
        self.seeders = self.peers[k + v:]
        self.providers: dict[str, set[str]] = defaultdict(set)
        self.published: dict[str, tuple[float, int, str, str]] = {}  # cid → (time, bytes, slot, trainer)
        self.accepted_at: dict[str, float] = {}
        self.checkers: dict[str, int] = defaultdict(int)
        self.started: dict[str, list[tuple[str, float]]] = defaultdict(list)  # cid → (verifier, when) in flight
        self.upload: dict[str, float] = defaultdict(float)  # cid → bytes its trainer uploaded
        self.lease_changes, self.steps_lost, self.skipped = 0, 0, 0
        self.seen: set[bytes] = set()  # record versions a reader validated (cached by content hash)
        self.periods: list[dict] = []
        self.series: list[dict] = []
        self.by_peer = {p.peer_id: p for p in self.peers}
        self.owner_peer = {p.owner: p.peer_id for p in self.peers}
        self.cost_new, self.cost_seen = a.record_cost, 1.1e-4  # a read's cost per record (§6: 200 in 22 ms)
        for i, s in enumerate(self.slots):
            self._lease(s, self.peers[i])
        for p in self.peers:
            self._member(p)

    # ---- records -----------------------------------------------------------------------------------------

    def _put(self, key: str, owner: Peer, body, ttl: float = 14 * 24 * 3600.0) -> None:
        value = encode_envelope(key, body, sign=owner.sign)
        self.dht.put(key, owner.peer_id + subkey_suffix(body), value, self.now + ttl, self.now)

    def _member(self, p: Peer) -> None:
        role = "expert" if p.i < self.a.experts else "verifier" if p in self.verifiers else "seeder"
        maddrs = (f"/ip4/10.0.{p.i // 250}.{p.i % 250}/tcp/31337/p2p/{p.peer_id}",)
        self._put(layout.member_key(RUN, p.peer_id), p,
                  MemberBody(protocol=2, software="paris-node 0.9", peer_id=p.peer_id, maddrs=maddrs,
                             gossip_maddrs=maddrs, role=role, ts=self.now))

    def _lease(self, s: Slot, p: Peer) -> None:
        s.trainer = p
        cluster = int(s.name.split("-")[1])
        self._put(run_key(RUN, "claims"), p, ClaimBody(cluster=cluster, state=ClaimState.TRAINING,
                                                        peer_id=p.peer_id, since=self.now, ts=self.now),
                  ttl=self.a.grace)  # renewed while its trainer lives (`_period`)
        self._at(self.now + self.a.checkpoint_every * self.a.step_seconds, "publish", s)

    def _at(self, t: float, what: str, *args) -> None:
        heapq.heappush(self.events, (t, self.rng.random(), what, args))

    # ---- the run -----------------------------------------------------------------------------------------

    def run(self) -> dict:
        wall = time.process_time()
        end = self.a.steps * self.a.step_seconds
        self._at(0.0, "period")
        while self.events and self.events[0][0] <= end + 6 * 3600:
            self.now, _, what, args = heapq.heappop(self.events)
            getattr(self, "_" + what)(*args)
            if all(s.step >= self.a.steps for s in self.slots) and all(
                    c in self.accepted_at for c in self.published):
                break
        return self._report(time.process_time() - wall)

    def _publish(self, s: Slot) -> None:
        p = s.trainer
        if p is None or not p.alive or s.step >= self.a.steps:
            return
        s.step = min(s.step + self.a.checkpoint_every, self.a.steps)
        s.loss *= 0.99
        cid = _cid(s.name, s.step, p.peer_id)
        body = CheckpointBody(slot=s.name, step=s.step, cid=cid, bytes=self.a.checkpoint_bytes, parent=s.parent,
                              val_loss=s.loss, ts=self.now)
        self._put(layout.checkpoint_key(RUN, s.name, s.step), p, body)
        s.claims[cid] = Claim(p.peer_id, cid, s.step, s.parent, s.loss, self.now)
        s.parent, s.dirty = cid, True
        self.published[cid] = (self.now, self.a.checkpoint_bytes, s.name, p.peer_id)
        self.providers[cid] = {p.peer_id}
        eligible = sum(v.alive for v in self.verifiers)
        for v in self.verifiers:  # each learns of it by gossip, then its own keyed draw says when it starts
            wait = self.plans[v.peer_id].start_delay(cid, eligible, self.a.spread) if v.alive else math.inf
            if wait < 24 * 3600:  # later starters would all find it accepted: not simulated
                self._at(self.now + self.a.latency + wait, "start", v, s, cid)
        self._at(self.now + self.a.checkpoint_every * self.a.step_seconds, "publish", s)

    def _start(self, v: Peer, s: Slot, cid: str) -> None:
        if not v.alive or cid in self.accepted_at:
            self.skipped += cid in self.accepted_at
            return
        if cid not in s.claims:  # a branch lost in a takeover: nobody needs it checked
            return
        votes = s.votes.get(cid, [])
        accepts = sum(x.accept for x in votes)
        attested = {x.verifier for x in votes}
        in_flight = sum(1 for peer, at in self.started[cid] if peer not in attested  # visible after the latency
                        and self.a.latency <= self.now - at < self.a.stale_after)
        if not layout.attestation_needed(accepts, len(votes) - accepts, self.q, in_flight):
            self.skipped += 1
            return
        live = [q for q in self.providers[cid] if self.by_peer[q].alive]
        if not live:
            return
        self.upload[cid] += self.a.checkpoint_bytes / len(live) if self.published[cid][3] in live else 0.0
        # (a fetch spreads its chunks over every provider; one still fetching serves what it has, the rest
        # it lacks comes from the others: counted as an even share, an upper bound for the trainer)
        self.checkers[cid] += 1
        self.started[cid].append((v.peer_id, self.now))
        self.providers[cid].add(v.peer_id)  # announced as it starts: it re-serves chunks as they land
        self._at(self.now + self.a.check_seconds, "attest", v, s, cid)

    def _attest(self, v: Peer, s: Slot, cid: str) -> None:
        if not v.alive or cid not in s.claims:
            return
        c = s.claims[cid]
        att = AttestationBody(slot=s.name, cid=cid, step=c.step, parent=c.parent, val_loss=c.val_loss,
                              verdict="accept", ts=self.now)
        self._put(layout.attestation_key(RUN, s.name, c.step), v, att)
        s.votes[cid].append(Vote(v.peer_id, cid, c.step, c.parent, c.val_loss, True))
        s.dirty = True
        self._judge(s)

    def _judge(self, s: Slot) -> None:
        """The acceptance rule over the slot's live claims, anchored on its certified head."""
        anchors = {s.head[0]: s.head[2]} if s.head else {}
        votes = [x for cid in s.claims for x in s.votes.get(cid, [])]
        for j in judge(s.claims.values(), votes, self.policy, anchors=anchors):
            if j.status == Status.ACCEPTED and j.claim.cid not in self.accepted_at:
                self.accepted_at[j.claim.cid] = self.now
                s.accepted.add(j.claim.cid)
                if s.head is None or j.claim.step > s.head[1]:
                    self._certify(s, j.claim, j.best_loss or j.claim.val_loss or 0.0)

    def _certify(self, s: Slot, claim: Claim, best: float) -> None:
        """The slot's archivers write the new head's certificate; records of older epochs may now expire, and a
        replica of the head is fetched (from verifiers, mostly) by the first archiver."""
        key_c = layout.checkpoint_key(RUN, s.name, claim.step)
        key_a = layout.attestation_key(RUN, s.name, claim.step)
        trainer = self.by_peer[claim.trainer]
        ckpt = decode_envelope(self.dht.keys[key_c][trainer.peer_id + f"#{claim.cid}"][0])
        atts = [decode_envelope(self.dht.keys[key_a][v.verifier + f"#{claim.cid}"][0]) for v in s.votes[claim.cid]]

        def archived(env, owner: bytes) -> ArchivedBody:
            return ArchivedBody(owner=owner.decode(), record=canonical_json(env).decode(), ts=self.now)

        cert = layout.make_certificate(archived(ckpt, trainer.owner),
                                       [archived(e, self.by_peer[v.verifier].owner)
                                        for e, v in zip(atts, s.votes[claim.cid], strict=True)][:self.q], self.now)
        layout.check_certificate(cert, self.q, _verify, lambda o: self.owner_peer[o])  # what every reader does
        alive = [p.peer_id for p in self.seeders if p.alive]
        for peer in layout.archivers(RUN, f"heads/{s.name}", alive, self.a.archivers):
            self._put(layout.head_key(RUN, s.name), self.by_peer[peer], cert, ttl=self.a.head_ttl)
        replica = f"replica/{s.name}/e{layout.epoch_of(claim.step)}"
        if claim.step % (self.a.checkpoint_every * self.a.replica_every) == 0:
            for peer in layout.archivers(RUN, replica, alive, 1):  # near its expiry: the trainer may be gone
                live = [q for q in self.providers[claim.cid] if self.by_peer[q].alive]
                self.upload[claim.cid] += self.a.checkpoint_bytes / len(live) if claim.trainer in live else 0.0
                self.providers[claim.cid].add(peer)
        s.head = (claim.cid, claim.step, best)
        first = layout.epoch_of(claim.step)  # older epochs: no longer read, their records expire
        s.claims = {c: x for c, x in s.claims.items() if layout.epoch_of(x.step) >= first}
        s.votes = defaultdict(list, {c: v for c, v in s.votes.items() if c in s.claims})

    def _period(self) -> None:
        """One period of the busiest reader (a verifier that follows every slot), then churn."""
        a = self.a
        t0 = time.process_time()
        read = new = 0
        keys = [layout.head_key(RUN, s.name) for s in self.slots] + [run_key(RUN, "claims")]
        for s in self.slots:
            for e in layout.epochs_to_read(s.head[1] if s.head else None, s.step):
                keys += [f"paris/{RUN}/checkpoints/{s.name}/e{e}", f"paris/{RUN}/attestations/{s.name}/e{e}"]
        for key in keys:
            for value in self.dht.get(key, self.now):
                read += 1
                h = hashlib.sha256(value).digest()
                if h not in self.seen:
                    self.seen.add(h)
                    new += 1
        for s in self.slots:  # judgement linear in what is new: only the slots that changed
            if s.dirty:
                anchors = {s.head[0]: s.head[2]} if s.head else {}
                judge(s.claims.values(), [x for c in s.claims for x in s.votes.get(c, [])], self.policy,
                      anchors=anchors)
                s.dirty = False
        cpu = time.process_time() - t0 + new * self.cost_new + read * self.cost_seen
        self.periods.append({"t": self.now, "read": read, "new": new, "cpu_s": cpu})
        if len(self.periods) % max(1, int(a.grace / 2 / a.period)) == 0:
            for s in self.slots:  # leases renewed before they expire; a departed trainer's runs out
                if s.trainer is not None and s.trainer.alive:
                    self._put(run_key(RUN, "claims"), s.trainer,
                              ClaimBody(cluster=int(s.name.split("-")[1]), state=ClaimState.TRAINING,
                                        peer_id=s.trainer.peer_id, since=0.0, ts=self.now), ttl=a.grace)
        self._churn()
        step = min(s.step for s in self.slots)
        if not self.series or step >= self.series[-1]["step"] + a.steps // 10:
            self.series.append({"step": step, "max_key_bytes": self.dht.max_key[1], "records_read": read,
                                "work_fraction": round(cpu / a.period, 5), "accepted": len(self.accepted_at),
                                "lease_changes": self.lease_changes})
        self._at(self.now + a.period, "period")

    def _churn(self) -> None:
        a = self.a
        p_leave = a.churn * a.period / 3600.0
        for i, p in enumerate(self.peers):
            if p.alive and self.rng.random() < p_leave:
                p.alive = False
                fresh = Peer(self.next_peer)
                self.next_peer += 1
                self.by_peer[fresh.peer_id], self.owner_peer[fresh.owner] = fresh, fresh.peer_id
                self.peers[i] = fresh
                for group in (self.verifiers, self.seeders):
                    if p in group:
                        group[group.index(p)] = fresh
                        if group is self.verifiers:
                            self.plans[fresh.peer_id] = VerifyPlan(verifier_secret(fresh.owner), a.quorum + 1, 10,
                                                                   a.patience)
                self._member(fresh)
                for s in self.slots:
                    if s.trainer is p:  # its lease goes stale after the grace; a standby takes over from the head
                        self._at(self.now + a.grace, "takeover", s)

    def _takeover(self, s: Slot) -> None:
        standby = [p for p in self.seeders if p.alive]
        cluster = int(s.name.split("-")[1])
        leases = tuple(ClaimView(x.trainer.peer_id, int(x.name.split("-")[1]), ClaimState.TRAINING)
                       for x in self.slots if x is not s and x.trainer is not None and x.trainer.alive)
        snap = Snapshot(len(self.slots), leases)
        me = next(p for p in self.rng.sample(standby, min(8, len(standby)))
                  if choose_cluster(snap, p.peer_id, RUN) == cluster) if standby else None
        if me is None:
            return
        self.lease_changes += 1
        head_step = s.head[1] if s.head else 0
        self.steps_lost += s.step - head_step
        s.step, s.parent = head_step, s.head[0] if s.head else None
        s.claims = {c: x for c, x in s.claims.items() if x.step <= head_step}  # the lost branch is never accepted
        self.seeders.remove(me)
        self._lease(s, me)

    # ---- the report ----------------------------------------------------------------------------------------

    def _report(self, wall: float) -> dict:
        a = self.a
        delays = sorted(self.accepted_at[c] - self.published[c][0] for c in self.accepted_at)
        checks = [self.checkers[c] for c in self.accepted_at]
        uploads = [self.upload[c] / a.checkpoint_bytes for c in self.accepted_at]
        frac = [p["cpu_s"] / a.period for p in self.periods]

        def pct(xs: list[float], q: float) -> float:
            return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3) if xs else 0.0

        return {
            "experts": a.experts, "verifiers": a.verifiers, "peers": a.peers, "steps": a.steps,
            "quorum": a.quorum, "checkpoints": len(self.published), "accepted": len(self.accepted_at),
            "max_key_bytes": self.dht.max_key[1], "max_key": self.dht.max_key[0],
            "max_bytes_by_kind": dict(sorted(self.dht.max_bytes.items())),
            "bound_by_kind": {k: layout.key_bound(k, K=a.experts, V=a.verifiers, P=a.peers,
                                                  checkpoint_every=a.checkpoint_every, quorum=a.quorum,
                                                  writers=a.archivers)
                              for k in ("checkpoints", "attestations", "heads", "members", "claims")},
            "records_read_per_period": {"mean": round(statistics.fmean(p["read"] for p in self.periods), 1),
                                        "max": max(p["read"] for p in self.periods)},
            "work_fraction_per_period": {"mean": round(statistics.fmean(frac), 5), "max": round(max(frac), 5)},
            "accept_delay_s": {"p50": pct(delays, 0.5), "p95": pct(delays, 0.95), "max": pct(delays, 1.0)},
            "checkers_per_checkpoint": {"mean": round(statistics.fmean(checks), 3) if checks else 0,
                                        "max": max(checks, default=0)},
            "upload_per_checkpoint": {"mean": round(statistics.fmean(uploads), 3) if uploads else 0,
                                      "p99": pct(sorted(uploads), 0.99), "max": round(max(uploads, default=0), 3)},
            "skipped_checks": self.skipped, "lease_changes": self.lease_changes, "steps_lost": self.steps_lost,
            "series": self.series, "sim_cpu_s": round(wall, 1),
        }


def measured_record_cost() -> float:
    """Seconds to validate one new record version here: decode and check it, plus two real RSA verifications
    (hivemind's signature over the DHT record and the writer's statement signature)."""
    import tempfile

    from swarm.identity import load_identity, verify_signature

    with tempfile.TemporaryDirectory() as tmp:
        ident = load_identity(Path(tmp))
    body = CheckpointBody(slot="expert-0", step=1, cid=_cid("expert-0", 1, "x"), bytes=1, val_loss=1.0, ts=1.0)
    data = encode_envelope(layout.checkpoint_key(RUN, "expert-0", 1), body, sign=ident.private_key.sign)
    env = decode_envelope(data)
    t0, n = time.perf_counter(), 200
    for _ in range(n):
        env = decode_envelope(data)
        verify_signature(ident.public_key_bytes, env.statement(), env.sig.encode())
        verify_signature(ident.public_key_bytes, env.statement(), env.sig.encode())
    return (time.perf_counter() - t0) / n


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--verifiers", type=int, default=10)
    ap.add_argument("--peers", type=int, default=100)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--checkpoint-every", type=int, default=2000)
    ap.add_argument("--step-seconds", type=float, default=1.0, help="training time per step")
    ap.add_argument("--checkpoint-bytes", type=int, default=2 * 1024**3)
    ap.add_argument("--quorum", type=int, default=1)
    ap.add_argument("--period", type=float, default=60.0, help="seconds between a node's reads of the run")
    ap.add_argument("--check-seconds", type=float, default=180.0, help="a verifier's download and check")
    ap.add_argument("--spread", type=float, default=300.0, help="about `wanted` verifiers start within this")
    ap.add_argument("--stale-after", type=float, default=600.0, help="a checker silent this long is replaced")
    ap.add_argument("--patience", type=float, default=1800.0)
    ap.add_argument("--grace", type=float, default=600.0, help="a silent trainer's lease is claimable after it")
    ap.add_argument("--archivers", type=int, default=3)
    ap.add_argument("--head-ttl", type=float, default=6 * 3600.0, help="a certificate's TTL (refreshed before)")
    ap.add_argument("--replica-every", type=int, default=8, help="archivers replicate every Nth accepted head")
    ap.add_argument("--churn", type=float, default=0.02, help="share of peers leaving per hour")
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--record-cost", type=float, default=None, help="seconds per new record (default: measured)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.peers < a.experts + a.verifiers + a.archivers + 1:
        ap.error("--peers must leave room for seeders beyond the experts and verifiers")
    if a.record_cost is None:
        a.record_cost = measured_record_cost()
    out = Sim(a).run()
    out["record_cost_ms"] = round(a.record_cost * 1e3, 3)
    if a.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            if k != "series":
                print(f"{k:>26}: {v}")
        for row in out["series"]:
            print("  ", row)
    return out


if __name__ == "__main__":
    main()
