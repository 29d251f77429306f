"""`SwarmNode`: the one hivemind DHT of a paris-node process, with typed, signed, validated records.

Everything above this module speaks `protocol.swarm_records` bodies; everything below is hivemind. Writes go
to the owner subkey (`[owner:<our RSA key>]` plus an optional slot), which hivemind signs with our persistent
key; reads return only records that pass the same checks the validator applies on every node.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import random
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import hivemind
from hivemind.dht.routing import DHTID
from hivemind.utils.timed_storage import get_dht_time
from pydantic import BaseModel, ConfigDict, Field

from protocol.errors import IntegrityError, ParisError
from protocol.swarm_records import (
    PROTOCOL_VERSION,
    Body,
    Envelope,
    ForeignMember,
    MemberBody,
    encode_envelope,
    run_key,
    subkey_suffix,
)
from swarm import layout
from swarm.identity import Identity, load_identity
from swarm.members import MemberReader, Members
from swarm.validator import check_record, make_validators, open_archive, split_subkey

log = logging.getLogger(__name__)

LOOPBACK_MADDRS = ("/ip4/127.0.0.1/tcp/0",)
CROWDED_KEY = 512  # records under one key beyond which a read is logged as crowded
RECORD_TTL = 14 * 24 * 3600.0  # the lifetime of long-lived records (pointer, DONE, checkpoints, attestations)


class _DetachedDHT(hivemind.DHT):
    """hivemind's DHT process, in a process group of its own: a Ctrl-C in the terminal then reaches only our
    daemon, which can still publish its final checkpoint over the DHT and p2pd before shutting them down.
    Being detached, it watches its parent and takes its group (itself and its p2pd) down if the parent dies."""

    def __init__(self, *args, static_relays: bool = False, **kwargs) -> None:
        self.static_relays = static_relays
        super().__init__(*args, **kwargs)

    def run(self) -> None:
        if self.static_relays:
            _use_static_relays()
        parent = os.getppid()
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)

        def watch_parent() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os.killpg(0, signal.SIGKILL)  # our own group only: this DHT process and the p2pd it started

        threading.Thread(target=watch_parent, daemon=True, name="parent-watch").start()
        super().run()


def _use_static_relays() -> None:
    """In the DHT process: start p2pd with relay discovery off, so that auto-relay takes the trusted relays (our
    initial peers) as they are instead of waiting out its 3-minute boot delay for four candidates. hivemind's
    P2P.create has no argument for it; this adds the p2pd flag to the command line it builds."""
    from hivemind.p2p import P2P

    build = getattr(P2P, "_make_process_args", None)
    if build is None:
        log.warning("this hivemind builds p2pd's arguments differently: a relay slot takes ~3 minutes to reserve")
        return

    def with_static_relays(*args, **kwargs):
        if kwargs.get("trustedRelays"):
            kwargs["relayDiscovery"] = False
        return build(*args, **kwargs)

    P2P._make_process_args = staticmethod(with_static_relays)


class ProtocolMismatchError(ParisError):
    """The swarm speaks another protocol version than this node."""


class NetworkConfig(BaseModel):
    """How the node is reachable. Defaults are loopback-only (docs/design.md §7): opening a node is a choice."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    initial_peers: tuple[str, ...] = ()
    host_maddrs: tuple[str, ...] = LOOPBACK_MADDRS
    announce_maddrs: tuple[str, ...] = ()
    nat_traversal: bool = False  # UPnP/NAT-PMP port mapping + AutoNAT
    use_relay: bool = False  # dial through circuit relays and serve as one; auto-relay with nat_traversal
    behind_nat: bool = False  # reachable only through relays: reserve a slot on the initial peers' relays
    client_mode: bool = False
    request_timeout: float = Field(default=5.0, gt=0)
    # how long a start waits for its identity to be free: a node restarted right after it crashed (kill -9, a
    # power cut, systemd's Restart=) still looks taken to its peers for a few seconds
    identity_wait: float = Field(default=30.0, ge=0)

    def dht_kwargs(self) -> dict:
        announce = list(self.announce_maddrs)
        extra: dict = {}
        if self.behind_nat:
            # AutoNAT cannot tell reachability when every address involved is private, so auto-relay would
            # never start: say it. Circuit addresses through the initial peers are announced explicitly, as
            # libp2p builds them only from a relay's public addresses.
            extra["force_reachability"] = "private"
            relays = [m for m in self.initial_peers if "/p2p/" in m and "/p2p-circuit" not in m][:4]
            announce = [*announce, *(f"{m}/p2p-circuit" for m in relays)]
            extra["trusted_relays"] = relays  # with relay discovery off (_use_static_relays): no boot delay
            if not self.announce_maddrs:
                announce += [m for m in self.host_maddrs if "/0.0.0.0/" not in m and "/::/" not in m]
        return dict(
            initial_peers=list(self.initial_peers),
            host_maddrs=list(self.host_maddrs),
            announce_maddrs=announce or None,
            nat_port_map=self.nat_traversal,
            auto_nat=self.nat_traversal,
            use_relay=self.use_relay or self.behind_nat,
            use_auto_relay=self.behind_nat or (self.use_relay and self.nat_traversal),
            client_mode=self.client_mode,
            use_ipfs=False,
            **extra,
        )


@dataclass(frozen=True)
class Signed:
    """A validated record read back from the DHT, with its owner's key, peer id and DHT expiration."""

    owner: bytes  # OpenSSH RSA public key (of the original writer, for an archived copy)
    envelope: Envelope
    expiration_time: float
    archived_by: bytes | None = None  # the seeder whose archive record carried it (None: the live record)

    @property
    def body(self) -> Body:
        return self.envelope.body


def tcp_maddr(host: str, port: int) -> str:
    return f"/ip6/{host}/tcp/{port}" if ":" in host else f"/ip4/{host}/tcp/{port}"


async def _routing_table_peers(_dht, node) -> list[str]:  # runs in the DHT process (hivemind run_coroutine)
    return [p.to_base58() for p in node.protocol.routing_table.peer_id_to_uid]


async def _reconnect(_dht, node, peers: list[tuple[str, tuple[str, ...]]], timeout: float) -> list[str]:
    """In the DHT process: dial and ping each peer missing from the routing table; return those that answered
    (a ping adds both sides to each other's routing table)."""
    from hivemind.p2p import PeerID
    from multiaddr import Multiaddr

    known = {p.to_base58() for p in node.protocol.routing_table.peer_id_to_uid}

    async def one(peer: str, maddrs: tuple[str, ...]) -> bool:
        pid = PeerID.from_base58(peer)
        if maddrs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(node.protocol.p2p._client.connect(pid, [Multiaddr(m) for m in maddrs]),
                                       timeout)
        return await asyncio.wait_for(node.protocol.call_ping(pid), timeout) is not None

    todo = [(p, m) for p, m in peers if p not in known]
    results = await asyncio.gather(*(one(p, m) for p, m in todo), return_exceptions=True)
    return [p for (p, _), ok in zip(todo, results, strict=True) if ok is True]


_TIMED_OUT = "timed out"  # a key's place in _get_each's answer when its own read ran out of time


async def _get_each(_dht, node, keys: list[str], latest: bool, timeout: float) -> list:
    """In the DHT process: each key read as `DHT.get` reads it (its own traversal and requests, so one key's
    oversize reply costs no other key its read), all at once; a key past `timeout` is `_TIMED_OUT`."""
    async def one(key: str):
        try:
            return await asyncio.wait_for(node.get(key, latest=latest), timeout)
        except asyncio.TimeoutError:
            return _TIMED_OUT

    return list(await asyncio.gather(*(one(k) for k in keys)))


class _ReadBatcher:
    """The reads a node starts together (an `asyncio.gather` of keys, as `read_run` and the member reader do)
    go to the DHT process as one call. Each call from this process to hivemind's DHT process sends a future
    whose pipe and shared state travel by file descriptor (a socket handshake each way): with one call per key
    that was most of a reading node's CPU, in both processes (profiled on a daemon reading every second)."""

    def __init__(self, dht: hivemind.DHT, timeout: float) -> None:
        self.dht, self.timeout = dht, timeout
        self.together = True  # False: one call per key, as before (benchmarks/read_cost.py compares the two)
        self._pending: dict[tuple[asyncio.AbstractEventLoop, bool], list[tuple[str, asyncio.Future]]] = {}

    async def get(self, key: str, latest: bool):
        """What `DHT.get(key, latest)` returns; raises asyncio.TimeoutError when the read ran out of time."""
        loop = asyncio.get_running_loop()
        batch = self._pending.setdefault((loop, latest), [])
        if not batch:  # sent once every read started in this turn of the loop has joined
            loop.call_soon(self._send, loop, latest)
        fut = loop.create_future()
        batch.append((key, fut))
        if not self.together:
            self._send(loop, latest)
        return await fut

    def _send(self, loop: asyncio.AbstractEventLoop, latest: bool) -> None:
        batch = self._pending.pop((loop, latest), [])
        if batch:
            loop.create_task(self._read(batch, latest))

    async def _read(self, batch: list[tuple[str, asyncio.Future]], latest: bool) -> None:
        keys = list(dict.fromkeys(key for key, _ in batch))
        try:
            call = self.dht.run_coroutine(partial(_get_each, keys=keys, latest=latest, timeout=self.timeout),
                                          return_future=True)
            found = dict(zip(keys, await asyncio.wait_for(call, self.timeout + 5.0), strict=True))
        except BaseException as e:  # the DHT process is gone or stuck: every read of the batch fails alike
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(asyncio.TimeoutError() if isinstance(e, asyncio.TimeoutError) else e)
            if not isinstance(e, Exception):
                raise
            return
        for key, fut in batch:
            if not fut.done():
                if isinstance(found[key], str):  # _TIMED_OUT
                    fut.set_exception(asyncio.TimeoutError())
                else:
                    fut.set_result(found[key])


def merge_archived(records: list[Signed]) -> tuple[Signed, ...]:
    """One record per original (owner, subkey): the newest version by its body's timestamp, live records
    before archived copies of the same version. Archived copies stand in for records whose TTL has passed."""
    best: dict[tuple[bytes, str], Signed] = {}
    for rec in records:
        key = (rec.owner, subkey_suffix(rec.body))
        have = best.get(key)
        rank = (getattr(rec.body, "ts", 0.0), rec.archived_by is None)
        if have is None or rank > (getattr(have.body, "ts", 0.0), have.archived_by is None):
            best[key] = rec
    return tuple(best.values())


@dataclass(frozen=True)
class RecordSet:
    records: tuple[Signed, ...]
    foreign: tuple[ForeignMember, ...] = ()
    failed: str = ""  # the read failed and these are the records this node last saw, still live: why it failed


class DHTReadError(ParisError):
    """A DHT read failed (it timed out, or it came back empty though records this node saw are still live: a
    dropped or oversize reply) and this node knows nothing of the key to fall back on. Never an empty result."""


VALID_RECORDS = 65536  # validated record versions remembered (the least recently read forgotten first)
KNOWN_KEYS = 4096  # keys whose live records a node remembers (the least recently read are forgotten first)


class SwarmNode:
    """A started hivemind DHT with our validators and identity. Create it before CUDA is initialised (the DHT
    forks). Reads and writes time out after `request_timeout` and then return empty/False, never hang.
    `record_ttl`: how long this node's long-lived records live (seeders re-publish them past it: swarm.archive)."""

    def __init__(self, identity: Identity, network: NetworkConfig | None = None, record_ttl: float = RECORD_TTL):
        self.identity = identity
        self.network = network or NetworkConfig()
        self.record_ttl = record_ttl
        self._crowded: set[str] = set()
        # key → the live records this node last read there: a read can only add to them until they expire, so a
        # dropped, partial or oversize reply never looks like records that vanished (hivemind answers those with
        # nothing at all)
        self._known: dict[str, dict[tuple[bytes, str], Signed]] = {}
        # record versions already validated (by the hash of key, subkey, value and expiration): a read checks
        # only what is new, so its cost follows what changed rather than the key's whole history
        self._valid: OrderedDict[bytes, Signed | ForeignMember] = OrderedDict()
        self.owner_subkey = b"[owner:" + identity.public_key_bytes + b"]"
        self._member_readers: dict[str, MemberReader] = {}  # run id → this node's view of its member buckets
        self.dht = self._start_dht()
        self._reads = _ReadBatcher(self.dht, self.network.request_timeout)
        self.peer_id = self.dht.peer_id.to_base58()
        if self.peer_id != identity.peer_id:
            raise ParisError(f"p2p daemon runs as {self.peer_id}, expected {identity.peer_id}")

    def _start_dht(self) -> _DetachedDHT:
        """Start the DHT process and its p2p daemon. hivemind refuses an identity that a peer still answers
        for; one that stays taken for `identity_wait` seconds is another process running this node's home."""
        deadline = time.monotonic() + self.network.identity_wait
        while True:
            try:
                return _DetachedDHT(
                    start=True, static_relays=self.network.behind_nat,
                    identity_path=str(self.identity.identity_path),
                    record_validators=make_validators(self.identity.private_key),
                    **self.network.dht_kwargs(),
                )
            except Exception as e:  # hivemind raises P2PDaemonError (or a bare error from its child) on start
                detail = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
            if "already taken" in detail:
                if time.monotonic() < deadline:
                    log.info("identity %s still answers on the network (this node's last run, just ended?): "
                             "retrying", self.identity.peer_id)
                    time.sleep(2.0)
                    continue
                raise ParisError(f"identity {self.identity.peer_id} ({self.identity.identity_path}) is in use by a "
                                 f"running peer for over {self.network.identity_wait:.0f} s: is another node "
                                 "running with this home?")
            if "bootstrap" in detail:
                raise ParisError(f"none of the initial peers answered ({', '.join(self.network.initial_peers)}): "
                                 "check the addresses and that those nodes are running")
            raise ParisError(f"the p2p node did not start: {detail}")

    @classmethod
    def start(cls, home: Path | str | None = None, network: NetworkConfig | None = None,
              record_ttl: float = RECORD_TTL) -> SwarmNode:
        return cls(load_identity(home), network, record_ttl)

    @property
    def owner(self) -> bytes:
        return self.identity.public_key_bytes

    async def routing_peers(self) -> list[str]:
        """Peers in our DHT routing table (they answered DHT requests)."""
        return list(await self.dht.run_coroutine(_routing_table_peers, return_future=True))

    async def reconnect(self, peers: dict[str, tuple[str, ...]], timeout: float = 5.0) -> list[str]:
        """Ping the peers (peer id → addresses) that our routing table lost, e.g. across a healed partition, so
        that the DHT spans both sides again. hivemind drops peers that stop answering and does not bootstrap
        again by itself. Returns the peers that answered."""
        todo = [(p, tuple(m)[:4]) for p, m in peers.items() if p != self.peer_id]
        if len(todo) > 64:  # a random 64, not the same first ones on every node
            todo = random.sample(todo, 64)
        if not todo:
            return []
        return list(await self.dht.run_coroutine(partial(_reconnect, peers=todo, timeout=timeout),
                                                 return_future=True))

    def visible_maddrs(self) -> list[str]:
        return [str(m) for m in self.dht.get_visible_maddrs()]

    async def put(self, key: str, body: Body, expiration_time: float, *, all_replicas: bool = False) -> bool:
        """Store `body` under `key` in our owner subkey. True if at least one node accepted it (`all_replicas`:
        once every replica answered, for a record that must be where any reader looks before the caller goes on)."""
        value = encode_envelope(key, body, sign=self.identity.private_key.sign)
        subkey = self.owner_subkey + subkey_suffix(body).encode()
        try:
            # done at the first replica that stored it; the others continue in the background, so a dead peer
            # among the nearest (a partition, a crash) does not stall every write for the whole timeout
            fut = self.dht.store(key, value, expiration_time, subkey=subkey, return_future=True,
                                 await_all_replicas=all_replicas)
            return bool(await asyncio.wait_for(fut, self.network.request_timeout * (3 if all_replicas else 1)))
        except asyncio.TimeoutError:
            log.warning("DHT store of %s timed out", key)
            return False

    async def get(self, key: str, *, latest: bool = True) -> RecordSet:
        """All valid, unexpired records under `key`, together with those this node read there before and that
        are still live (a DHT record cannot vanish before it expires). Invalid ones are skipped (and logged at
        debug level). A read that fails returns what this node knows with `failed` saying why, or raises
        DHTReadError when it knows nothing: never an empty result that looks like an empty key."""
        now = get_dht_time()
        known = {k: r for k, r in self._known.pop(key, {}).items() if r.expiration_time >= now}
        if known:
            self._known[key] = known  # read most recently: forgotten last
        try:
            found = await self._reads.get(key, latest)
        except asyncio.TimeoutError:
            return self._failed(key, known, f"the DHT read of {key} timed out after "
                                            f"{self.network.request_timeout:.0f} s")
        if found is None or not isinstance(found.value, dict):
            if known:  # records that cannot have expired came back as nothing: a dropped or oversize reply
                return self._failed(key, known, f"the DHT read of {key} came back empty though {len(known)} of its "
                                                "records are still live (a dropped or oversize reply)")
            return RecordSet(())
        got = self._parse(key, found)
        merged = merge_archived([*known.values(), *got.records])
        self._known[key] = {(r.owner, subkey_suffix(r.body)): r for r in merged}
        while len(self._known) > KNOWN_KEYS:
            del self._known[next(iter(self._known))]
        return RecordSet(merged, got.foreign)

    def _failed(self, key: str, known: dict[tuple[bytes, str], Signed], why: str) -> RecordSet:
        if not known:
            raise DHTReadError(why)
        log.warning("%s; using the %d live record(s) this node read there before", why, len(known))
        return RecordSet(tuple(known.values()), failed=why)

    def _parse(self, key: str, found) -> RecordSet:
        if len(found.value) > CROWDED_KEY and key not in self._crowded:
            self._crowded.add(key)  # once per key: a flood of records from throwaway keys, or a very large run
            log.warning("DHT key %s holds %d records (a hivemind response is at most 4 MiB, which bounds a read)",
                        key, len(found.value))
        now = get_dht_time()
        records: list[Signed] = []
        foreign: list[ForeignMember] = []
        key_id = DHTID.generate(source=key).to_bytes()
        for subkey, item in found.value.items():
            if item.expiration_time < now:
                continue
            seen = hashlib.sha256(b"%s|%r|%r|%r" % (key_id, subkey, item.value, item.expiration_time)).digest()
            parsed = self._valid.get(seen)
            if parsed is None:
                try:
                    parsed = self._check(key_id, subkey, item, now)
                except IntegrityError as e:  # not remembered: a record dated ahead may be valid later
                    log.debug("skipped record under %s: %s", key, e)
                    continue
                self._valid[seen] = parsed
                while len(self._valid) > VALID_RECORDS:
                    self._valid.popitem(last=False)
            else:
                self._valid.move_to_end(seen)
            (foreign if isinstance(parsed, ForeignMember) else records).append(parsed)
        return RecordSet(merge_archived(records), tuple(foreign))

    @staticmethod
    def _check(key_id: bytes, subkey, item, now: float) -> Signed | ForeignMember:
        """The whole validation of one record (signatures, schema, owner, time): done once per record version."""
        env = check_record(key_id, subkey, item.value, item.expiration_time, now)
        if isinstance(env, ForeignMember):
            return env
        owner, _ = split_subkey(subkey)
        if isinstance(env, Envelope) and env.body.kind == "archived":
            archived = open_archive(env)
            return Signed(archived[0], archived[1], item.expiration_time, archived_by=owner)
        return Signed(owner=owner, envelope=env, expiration_time=item.expiration_time)

    async def announce_member(self, run_id: str, body: MemberBody, ttl: float) -> bool:
        """Our member record, in the bucket our peer id hashes to (validators refuse it in any other)."""
        return await self.put(layout.member_key(run_id, self.peer_id), body, get_dht_time() + ttl)

    def member_reader(self, run_id: str) -> MemberReader:
        """The one reader of `run_id`'s member buckets in this node (read_run, gossip and doctor share it)."""
        if run_id not in self._member_readers:
            self._member_readers[run_id] = MemberReader(run_id, self.peer_id)
        return self._member_readers[run_id]

    async def read_members(self, run_id: str, *, full: bool = False) -> Members:
        """The run's members: the buckets due now (swarm.members), or with `full` every bucket."""
        return await self.member_reader(run_id).read(self, full=full)

    async def check_protocol(self, run_id: str) -> list[ForeignMember]:
        """Raise ProtocolMismatchError if every other member of the run speaks another protocol version;
        return the foreign members (to warn about) otherwise. Reads every member bucket, and the one members
        key where nodes of earlier versions wrote (for their foreign records only: nothing else is read there)."""
        found = await self.read_members(run_id, full=True)
        foreign = list(found.foreign)
        with contextlib.suppress(DHTReadError):
            foreign += (await self.get(run_key(run_id, "members"))).foreign
        ours = [r for r in found.records if r.owner != self.owner]
        if foreign and not ours:
            versions = sorted({f.protocol for f in foreign})
            raise ProtocolMismatchError(
                f"the swarm of run {run_id} speaks paris protocol v{'/v'.join(map(str, versions))} "
                f"(e.g. {foreign[0].software}); this node speaks v{PROTOCOL_VERSION}: "
                "install a matching paris-node version"
            )
        for f in foreign:
            log.warning("peer %s runs %s with protocol v%d (ours: v%d); it is ignored",
                        f.peer_id, f.software, f.protocol, PROTOCOL_VERSION)
        return foreign

    def shutdown(self) -> None:
        self.dht.shutdown()
