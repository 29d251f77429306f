"""The one place a node publishes checkpoints: put into the content store, announce (DHT record + gossip),
and keep exactly the copies it should pinned. Shared by the expert, router, seeder and verifier roles."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import numpy as np
from hivemind.utils.timed_storage import get_dht_time

from node.keeper import OwnRecords
from node.logs import event
from protocol.swarm_gossip import CheckpointEvent
from protocol.swarm_records import CheckpointBody
from swarm.cas import ContentStore
from swarm.dht import SwarmNode
from swarm.state import certify, publish_certificate, publish_checkpoint, record_key

log = logging.getLogger("node.publisher")


def covered(judgements) -> set[str]:
    """CIDs that an accepted checkpoint covers: the accepted ones and their ancestors (through every claim's
    parent). A trainer may drop its copy of those; verifiers will not need them."""
    parent = {j.claim.cid: j.claim.parent for j in judgements}
    out: set[str] = set()
    for j in judgements:
        cid = j.claim.cid if j.accepted else None
        while cid is not None and cid not in out:
            out.add(cid)
            cid = parent.get(cid)
    return out


def backlog_after(backlog: list[tuple[str, int]], done: set[str], keep: int) -> tuple[list, list]:
    """(what stays, what goes) of our own published checkpoints awaiting verification, oldest first: those an
    accepted checkpoint covers go; past `keep`, the newest but one goes too (verifiers check the oldest first,
    and the newest is what a takeover needs)."""
    stay = [e for e in backlog if e[0] not in done]
    gone = [e for e in backlog if e[0] in done]
    while len(stay) > max(keep, 2):
        gone.append(stay.pop(-2))
    return stay, gone


class Publisher:
    """`pinned[slot]` is the (CID, step) of the checkpoint we keep for a slot; `published[slot]` our newest own
    publication. Trainer records whose DHT write found no peer are retried with the next publication, so a
    child never names a parent that nobody can read.

    `backlog[slot]`: our own published checkpoints that no accepted checkpoint covers yet, kept pinned (at most
    `keep_unverified`) so that verifiers can still fetch every link of the chain when they get to it: after a
    verifier fell behind, or after a partition during which nobody could check our work.

    `evidence[slot]`: the parent of our newest publication, kept pinned beside it: a replay of the newest
    interval needs it, so a failed replay minted against our head after the run can still be settled by any
    reader that replays it (`fetch`), and an older accepted checkpoint stays fetchable to fall back on."""

    def __init__(self, node: SwarmNode, store: ContentStore, run_id: str, gossip, metrics=None,
                 keeper: OwnRecords | None = None, keep_unverified: int = 32, vouch=None) -> None:
        self.node, self.store, self.run_id, self._gossip = node, store, run_id, gossip
        self.vouch = vouch  # called with each record we published: this node trained it, so it counts here
        self.keeper = keeper  # our own records, re-announced before their TTL while we run
        self.metrics = metrics  # node.metrics.NodeMetrics, or None
        self.pinned: dict[str, tuple[str, int]] = {}
        self.published: dict[str, tuple[str, int]] = {}
        self.backlog: dict[str, list[tuple[str, int]]] = {}
        self.evidence: dict[str, str] = {}
        self.keep_unverified = keep_unverified
        self._unannounced: list[CheckpointBody] = []
        self._replicas: dict[str, CheckpointBody] = {}  # slot → our newest replica record (re-announced)
        self.certified: dict[str, int] = {}  # slot → the step of the newest head we wrote a certificate of
        self._certifying: asyncio.Task | None = None
        self._lock = asyncio.Lock()

    async def publish(self, slot: str, path: Path, meta) -> str | None:
        """Put a checkpoint into the store, announce it with its lineage, unpin the one it replaces."""
        started = time.monotonic()
        try:  # into the store at once, before waiting for earlier announcements: the trainer prunes old folders
            cid = await self.store.put(path, provide=False)
            size = self.store.blobs.manifest(cid).total_bytes  # what fetchers will check it against
        except Exception:
            log.exception("storing the %s checkpoint of step %d failed; the next one retries", slot, meta.step)
            return None
        async with self._lock:
            try:
                await self.store.provide(cid, size)
                loss = meta.loss_ema if meta.loss_ema is not None and np.isfinite(meta.loss_ema) else None
                body = CheckpointBody(slot=slot, step=meta.step, cid=cid, bytes=size, loss=loss, parent=meta.parent,
                                      val_loss=meta.val_loss, ts=get_dht_time())
                for old in list(self._unannounced):
                    if await publish_checkpoint(self.node, self.run_id, old):
                        self._unannounced.remove(old)
                if not await publish_checkpoint(self.node, self.run_id, body):
                    log.warning("no peer stored the checkpoint record of %s yet; the next publication retries", slot)
                    self._unannounced.append(body)
                elif self.keeper is not None:
                    self.keeper.add(record_key(self.run_id, body), body)
                if self.vouch is not None:
                    self.vouch(body)
                self.backlog[slot] = sorted({*self.backlog.get(slot, []), (cid, meta.step)}, key=lambda e: e[1])
                if meta.step >= self.published.get(slot, ("", -1))[1]:  # stores may finish out of order
                    self.published[slot] = (cid, meta.step)
                    self.keep_evidence(slot, meta.parent)
                    self.replace_pin(slot, cid, meta.step)
                self._trim(slot, set())
                if self.metrics is not None:
                    self.metrics.observe_publish(slot, time.monotonic() - started, size, meta.val_loss)
                await self._gossip(CheckpointEvent(run_id=self.run_id, slot=slot, step=meta.step, cid=cid))
                event(log, f"published {slot} checkpoint", step=meta.step, cid=cid, bytes=size,
                      val_loss=None if meta.val_loss is None else round(meta.val_loss, 6))
                return cid
            except Exception:
                log.exception("publishing the %s checkpoint of step %d failed; the next one retries", slot, meta.step)
                return None

    def replace_pin(self, slot: str, cid: str, step: int) -> None:
        old = self.pinned.get(slot)
        self.pinned[slot] = (cid, step)
        if old and old[0] != cid:
            self._release(old[0])

    def keep_evidence(self, slot: str, parent: str | None) -> None:
        """Keep `parent` (the parent of our newest checkpoint of `slot`) pinned, and release the one before."""
        old = self.evidence.pop(slot, None)
        if parent is not None and self.store.blobs.has(parent):
            self.evidence[slot] = parent
            self.store.pin(parent)
        if old is not None and old != parent:
            self._release(old)

    def _release(self, cid: str) -> None:
        """Unpin `cid` unless it is still the kept copy of a slot, the evidence of one, or awaits verification."""
        if (cid in {c for c, _ in self.pinned.values()} or cid in self.evidence.values()
                or any(cid == c for b in self.backlog.values() for c, _ in b)):
            return
        self.store.unpin(cid)
        self.store.gc()

    def _trim(self, slot: str, done: set[str]) -> None:
        stay, gone = backlog_after(self.backlog.get(slot, []), done, self.keep_unverified)
        self.backlog[slot] = stay
        for cid, step in gone:
            if cid not in done:
                log.warning("%d checkpoints of %s await verification: dropping our copy of step %d (verifiers "
                            "are behind; the chain past it cannot be accepted)", len(stay), slot, step)
            self._release(cid)

    def settle(self, view) -> None:
        """Drop the copies that accepted checkpoints now cover (`view`: a RunView read with the run's rules), and
        certify our newest accepted heads in the background (one certification at a time)."""
        for slot in [s for s, b in self.backlog.items() if b]:
            self._trim(slot, covered(view.judged(slot)))
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        if self.published and (self._certifying is None or self._certifying.done()):
            self._certifying = loop.create_task(self._certify_quietly(view))

    async def _certify_quietly(self, view) -> None:
        try:
            await self.certify(view)
        except Exception as e:  # a certificate is an optimisation for readers: the next settle retries
            log.debug("certifying our accepted heads failed: %r", e)

    async def certify(self, view) -> int:
        """Write a quorum certificate of each slot we trained whose accepted head moved past the last one we
        certified (swarm.layout): what lets a reader skip the epochs behind it, and lets them expire. Returns
        how many were stored."""
        stored = 0
        for slot in list(self.published):
            cert = certify(view, slot, get_dht_time())
            if cert is None or cert.step <= self.certified.get(slot, -1):
                continue
            if await publish_certificate(self.node, self.run_id, cert):
                self.certified[slot] = cert.step
                stored += 1
                if self.keeper is not None:
                    self.keeper.add(record_key(self.run_id, cert), cert)
        return stored

    async def replicate(self, slot: str, candidates: list[CheckpointBody], max_bytes: int | None = None) -> None:
        """Hold the most advanced fetchable of `candidates` (accepted checkpoints, newest first) and announce the
        copy (a replica record), so that a takeover can still find it after its trainer is gone. The record is
        re-announced before its TTL runs out."""
        held = self.pinned.get(slot)
        for cand in candidates:
            if held is not None and (held[0] == cand.cid or held[1] >= cand.step):
                old = self._replicas.get(slot)
                if old is not None and old.cid == held[0] and get_dht_time() - old.ts > self.node.record_ttl / 3:
                    await self._announce_replica(slot, old)
                return
            try:
                await self.store.get(cand.cid, expected_bytes=cand.bytes, max_bytes=max_bytes)
            except Exception as e:
                log.warning("could not replicate %s step %d (%s): %s", slot, cand.step, cand.cid, e)
                continue
            self.replace_pin(slot, cand.cid, cand.step)
            await self._announce_replica(slot, cand)
            event(log, f"replicated {slot} checkpoint", step=cand.step, cid=cand.cid)
            return

    async def _announce_replica(self, slot: str, body: CheckpointBody) -> None:
        replica = body.model_copy(update={"replica": True, "ts": get_dht_time()})
        ok = await publish_checkpoint(self.node, self.run_id, replica)
        self._replicas[slot] = replica if ok else replica.model_copy(update={"ts": 0.0})  # 0: retry next round
