"""Where a node checks a checkpoint for itself before using it: fetch it, load it into a trainer of its slot,
recompute the run's validation loss on the held-out clips, compare with what its record claims; optionally
replay the interval from its parent. Verdicts are remembered (CID → good) and override attestations in this
node's own reading of the acceptance rule (swarm.acceptance).

What it fetched it re-serves for `serve_for` seconds from the moment the whole is here (ContentStore.lend:
announced, unpinned, within the store's limit; every fetcher checks what it gets itself), and it fetches from
the trainer only what no earlier checker serves: with the verifiers' staggered starts (node.role_verifier) a
trainer uploads each checkpoint about once, however many verifiers check it. What it rejects it stops serving
and drops."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from expert.shards import ClipBatch
from node.bundle import LocalRun, checkpoint_limit, fetch_cluster_clips
from protocol.checkpoint import SAMPLING_FILES
from protocol.errors import IntegrityError, ParisError
from protocol.swarm_records import CheckpointBody, slot_cluster
from swarm.acceptance import Vote, lineage_problem
from swarm.cas import ContentStore
from swarm.state import RunRules

log = logging.getLogger("node.checker")

SERVE_FOR_S = 1800.0  # a checked checkpoint is re-served this long: its later checkers, and its child's replay


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str
    val_loss: float | None = None
    step: int | None = None
    parent: str | None = None
    replayed: bool = False
    replay_exact: bool | None = None
    content_ok: bool = False  # the checkpoint itself is sound, whatever its record claimed about it


class CheckpointChecker:
    """One per node. Holds the held-out clips it fetched and one checking trainer per slot (reused: loading a
    checkpoint overwrites every tensor and counter). `serve_for`: seconds a sound checkpoint it fetched (and the
    parent of a passed replay) stays announced as served by this node (0: never)."""

    def __init__(self, store: ContentStore, run: LocalRun, device, *, serve_for: float = SERVE_FOR_S) -> None:
        self.store, self.run, self.device, self.serve_for = store, run, device, serve_for
        self.verdicts: dict[str, Vote] = {}  # CID → what this node found inside it (see swarm.acceptance)
        self._trainers: dict[str, object] = {}
        self._held: dict[int, ClipBatch] = {}
        self._init: dict[str, float] = {}
        self._lock = asyncio.Lock()

    @property
    def rules(self) -> RunRules:
        return self.run.rules

    async def _holdout(self, cluster: int) -> ClipBatch:
        if cluster not in self._held:
            self._held[cluster] = await fetch_cluster_clips(self.store, self.run, cluster, holdout=True)
        return self._held[cluster]

    async def trainer(self, slot: str, train: ClipBatch | None = None, labels: np.ndarray | None = None):
        """A trainer of `slot` with the held-out split; trained on `train` (replay) or on nothing (checks)."""
        from expert.train_expert import ExpertTrainer
        from expert.train_router import router_trainer_from_clips

        spec = self.run.spec
        cluster = slot_cluster(slot)
        if cluster is not None:
            held = await self._holdout(cluster)
            return await asyncio.to_thread(
                ExpertTrainer, spec.preset, train if train is not None else held, device=self.device,
                seed=spec.seed, run_id=spec.run_id, cluster=cluster, holdout=held, validation=spec.validation)
        parts = [await self._holdout(k) for k in range(spec.num_clusters)]
        held = ClipBatch.concat(parts)
        held_labels = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)])
        if train is None:
            train, labels = held, held_labels
        schedule = self.run.manifest.schedule
        return await asyncio.to_thread(router_trainer_from_clips, spec, train, labels, cap=schedule.router_cap,
                                       device=self.device, holdout=held, holdout_labels=held_labels)

    async def _checking_trainer(self, slot: str):
        if slot not in self._trainers:
            self._trainers[slot] = await self.trainer(slot)
        return self._trainers[slot]

    async def init_loss(self, slot: str) -> float:
        """The validation loss of the step-0 initialisation, which anyone rebuilds from the run seed (cached)."""
        if slot not in self._init:
            trainer = await self.trainer(slot)
            self._init[slot] = float(await asyncio.to_thread(trainer.validation_loss))
        return self._init[slot]

    async def _lineage(self, slot: str, meta, val_loss: float, parents: dict[str, tuple[int, float | None]]) -> str:
        """Whether the checkpoint's own step and loss can follow its own parent: the initialisation (rebuilt
        here), a checkpoint this node checked, or an accepted one (`parents`); "" if fine or unknown."""
        policy = self.rules.for_slot(slot)
        if meta.parent is None:
            return lineage_problem(meta.step, 0, val_loss, await self.init_loss(slot), policy)
        mine = self.verdicts.get(meta.parent)  # an accepted parent's facts carry its lineage's best loss
        facts = parents.get(meta.parent) or ((mine.step, mine.val_loss) if mine is not None and mine.accept else None)
        return "" if facts is None else lineage_problem(meta.step, facts[0], val_loss, facts[1], policy)

    async def check(self, body: CheckpointBody, parents: dict[str, tuple[int, float | None]] | None = None, *,
                    sampling_only: bool = False, trainer: str | None = None) -> CheckResult:
        """Fetch `body.cid` and check that it holds what the record claims (see expert.verify.check_content),
        and that its own step and loss can follow its own parent (`parents`: accepted CIDs → step, loss).
        `sampling_only` (fetch): only the sampling weights are downloaded and checked, and the verdict is not
        kept (a takeover must check the training state too). `trainer`: the peer that published it, asked only
        for what no other provider serves. A sound checkpoint is then re-served (`lend`), a rejected one dropped."""
        from expert.verify import ContentReport, check_content

        try:  # bounded by what a checkpoint of this slot can be, whatever the record announces
            path = await self.store.get(body.cid, pin=False, provide=False, last_resort=_peers(trainer),
                                        max_bytes=checkpoint_limit(self.run, body.slot),
                                        **({"files": SAMPLING_FILES, "expected_bytes": body.bytes}
                                           if sampling_only else {}))
        except IntegrityError as e:  # too large to be a checkpoint of this slot, or a malformed manifest
            if not sampling_only:
                self.verdicts[body.cid] = Vote("local", body.cid, body.step, body.parent, None, False, str(e))
            return CheckResult(False, f"refused: {e}")
        except (ParisError, OSError) as e:
            return CheckResult(False, f"not fetchable: {e}")  # not a verdict: nobody may serve it yet
        # the whole's size (a part was fetched only if the whole's manifest had the record's size)
        size = body.bytes if sampling_only else sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
        if not sampling_only:  # re-served from the moment it is here (its CID is checked), not after our check: a
            self.store.lend(body.cid, self.serve_for)  # checker that starts meanwhile fetches it from us; a reject
            # below withdraws it (what a peer fetches from us it checks itself, as we did)
        async with self._lock:
            trainer = await self._checking_trainer(body.slot)
            try:
                report = await asyncio.to_thread(check_content, trainer, path, step=body.step, parent=body.parent,
                                                 claimed_loss=body.val_loss, rtol=self.run.spec.validation.rtol,
                                                 sampling_only=sampling_only)
            except Exception as e:  # whatever a peer's bytes make the loading code raise is a verdict on them
                report = ContentReport(False, f"unusable: {type(e).__name__}: {str(e)[:200]}")
                self._trainers.pop(body.slot, None)  # it may be half loaded: the next check builds a fresh one
        meta = report.meta
        if report.content_ok and meta is not None and report.val_loss is not None:
            why = await self._lineage(body.slot, meta, report.val_loss, parents or {})
            if why:
                report = replace(report, ok=False, content_ok=False, reason=why)
        if report.ok and size != body.bytes:  # a record-level lie: the content may still be sound
            report = replace(report, ok=False, reason=f"the record announces {body.bytes} bytes, the checkpoint "
                                                      f"holds {size}")
        result = CheckResult(report.ok, report.reason, report.val_loss, meta.step if meta else None,
                             meta.parent if meta else None, content_ok=report.content_ok)
        if not sampling_only:
            self.verdicts[body.cid] = Vote(
                "local", body.cid, meta.step if meta else body.step, meta.parent if meta else body.parent,
                report.val_loss, report.content_ok, "" if report.content_ok else report.reason)
            if report.content_ok:  # announced in the background; a refute before it runs announces nothing
                self.store.lend(body.cid, self.serve_for)
            else:
                self.store.withdraw(body.cid)
        if not report.ok:
            log.warning("checkpoint %s of %s (step %d) refused: %s", body.cid, body.slot, body.step, report.reason)
        return result

    async def replay(self, body: CheckpointBody, train: ClipBatch, labels: np.ndarray | None = None, *,
                     trainer: str | None = None) -> CheckResult:
        """Re-train the interval from the record's parent and compare the whole state (`train`: the cluster's
        clips for an expert; the router's stratified sample and its `labels` for the router). After a passed
        replay the parent is re-served too (`lend`); after a failed one the child is dropped."""
        from expert.checkpoint import read_meta, resolve_checkpoint
        from expert.verify import replay

        spec, schedule = self.run.spec, self.run.manifest.schedule
        limit = checkpoint_limit(self.run, body.slot)
        avoid = _peers(trainer)
        try:
            child = resolve_checkpoint(await self.store.get(body.cid, pin=False, provide=False, max_bytes=limit,
                                                            last_resort=avoid))
            meta = read_meta(child)  # replay from the parent the checkpoint names, whatever its record said
            parent = None if meta.parent is None else await self.store.get(meta.parent, pin=False, provide=False,
                                                                            max_bytes=limit, last_resort=avoid)
        except IntegrityError as e:
            return self._replay_failed(body, f"refused: {e}")
        except (ParisError, OSError) as e:
            return CheckResult(False, f"not fetchable: {e}")  # not a verdict: nobody may serve it (or its parent)
        cluster = slot_cluster(body.slot)

        held = None
        if cluster is None:  # the router, built exactly as its trainer built it (role_router)
            parts = [await self._holdout(k) for k in range(spec.num_clusters)]
            held = (ClipBatch.concat(parts),
                    np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)]))

        def make():
            from expert.train_expert import ExpertTrainer
            from expert.train_router import router_trainer_from_clips

            if held is not None:
                return router_trainer_from_clips(spec, train, labels, cap=schedule.router_cap, device=self.device,
                                                 holdout=held[0], holdout_labels=held[1])
            return ExpertTrainer(spec.preset, train, device=self.device, seed=spec.seed, run_id=spec.run_id,
                                 cluster=cluster)

        try:
            report = await asyncio.to_thread(replay, make, parent, child, meta, tolerance=schedule.replay_tolerance)
        except ParisError as e:  # the child (or the parent it names) does not load: a verdict on the child
            return self._replay_failed(body, f"replay impossible: {str(e)[:200]}")
        # anything else (out of memory, say) is this node's trouble, not a verdict: it propagates, and the
        # verifier backs the CID off and tries again later
        if not report.ok:
            return self._replay_failed(body, report.reason)
        if (mine := self.verdicts.get(body.cid)) is not None and mine.accept:
            self.verdicts[body.cid] = replace(mine, replayed=True)  # outweighs another's failed replay, here
        if meta.parent is not None:  # the child reproduces from it: a checkpoint worth re-serving too
            self.store.lend(meta.parent, self.serve_for)
        return CheckResult(True, "", replayed=True, replay_exact=report.exact)

    def vouch(self, body: CheckpointBody) -> None:
        """This node trained `body` itself: in its own reading of the rule the checkpoint counts as replayed here
        (minted failed replays of it cannot make this node drop its own cluster; nobody else counts this)."""
        self.verdicts[body.cid] = Vote("local", body.cid, body.step, body.parent, body.val_loss, True, replayed=True)

    def hold(self, body: CheckpointBody) -> None:
        """A rule beyond `body`'s content (its trainer's lease) has not decided yet: its content verdict does not
        count in this node's reading of the run until it does. Counted meanwhile, a copy by a peer whose lease
        had not been judged yet gave that peer accepted progress here, enough to displace the honest trainer."""
        self.verdicts.pop(body.cid, None)

    def refute(self, body: CheckpointBody, reason: str) -> None:
        """Remember that this node rejects `body`'s CID for `reason` (found by a rule beyond its content)."""
        self.verdicts[body.cid] = Vote("local", body.cid, body.step, body.parent, None, False, reason)
        self.store.withdraw(body.cid)

    def _replay_failed(self, body: CheckpointBody, reason: str) -> CheckResult:
        self.verdicts[body.cid] = Vote("local", body.cid, body.step, body.parent, None, False, reason, replayed=True)
        self.store.withdraw(body.cid)
        log.warning("replay of %s step %d failed: %s", body.slot, body.step, reason)
        return CheckResult(False, reason, replayed=True, replay_exact=False)


def _peers(peer: str | None) -> frozenset[str]:
    return frozenset() if peer is None else frozenset({peer})
