"""`paris-node fetch`: the newest *accepted* checkpoint of every expert and of the router, downloaded from
whoever holds them, verified (CIDs, each checkpoint's own hashes, then the validation loss recomputed here on
the held-out clips against what its record claims), and assembled into the diffusers-style folder. A
checkpoint that fails the local check is refused and the next older accepted one tried."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from node.assets import fetch_assets, spec_assets
from node.bundle import LocalRun, checkpoint_limit
from node.checker import CheckpointChecker
from node.disputes import settle_disputes
from node.run_data import slot_training_data
from protocol.atomic import atomic_write_bytes
from protocol.checkpoint import SAMPLING_FILES
from protocol.errors import ParisError
from protocol.swarm_records import ROUTER, CheckpointBody, expert_slot, run_slots, slot_cluster
from swarm.acceptance import known_facts
from swarm.cas import ContentStore
from swarm.dht import SwarmNode
from swarm.state import RunView, read_run

log = logging.getLogger("node.fetch")

SWARM_MANIFEST = "swarm_manifest.json"
DISPUTE_BUDGET = 2  # contested intervals a fetch replays by default (each costs one interval of training)


def plan(view: RunView, num_clusters: int, *, allow_partial: bool) -> dict[str, list[CheckpointBody]]:
    """What to fetch: for each expert and the router, its accepted checkpoints, newest first (a download falls
    back to the next when nobody serves the newest or it fails the local check). Names what is missing."""
    slots = {expert_slot(k): view.accepted_checkpoints(expert_slot(k)) for k in range(num_clusters)}
    experts = {k: c for k in range(num_clusters) if (c := slots[expert_slot(k)])}
    router = view.accepted_checkpoints(ROUTER)
    missing = [f"expert {k}{_why(view, expert_slot(k))}" for k in range(num_clusters) if k not in experts]
    if not router:
        raise ParisError(f"no router checkpoint is accepted yet{_why(view, ROUTER)}: the ensemble cannot route"
                         + (f" (also missing: {', '.join(missing)})" if missing else ""))
    if not experts:
        raise ParisError(f"no expert checkpoint is accepted yet ({', '.join(missing)})")
    if missing and not allow_partial:
        raise ParisError(f"missing {', '.join(missing)}: wait for them, or pass --allow-partial to assemble the "
                         f"{len(experts)} that exist")
    return {slot: cands for slot, cands in {**slots, ROUTER: router}.items() if cands}


def _why(view: RunView, slot: str) -> str:
    """Why a slot has no accepted checkpoint, for the error message (the newest claim's judgement)."""
    judged = view.judged(slot)
    if not judged:
        return ": nothing published yet"
    j = judged[0]
    return f": newest claim (step {j.claim.step}) is {j.status.value}: {j.reason}"


async def fetch_ensemble(node: SwarmNode, store: ContentStore, run: LocalRun, out: Path, *,
                         allow_partial: bool = False, device="cpu",
                         on_progress: Callable[[str, CheckpointBody, int, int], None] | None = None,
                         router_mode: str | None = None, replay_disputed: int = DISPUTE_BUDGET) -> dict:
    """Fetch, verify, assemble into `out`; returns the swarm manifest written beside the weights, with what the
    download took: `downloaded_bytes` (checkpoint bytes received from peers: each checkpoint's sampling
    weights, not its training state), `checkpoint_bytes` (the whole checkpoints' sizes, as their records say),
    `asset_bytes` / `asset_downloaded_bytes` (the model assets the run names: their size, what was received).
    `on_progress(slot, body, done_bytes, total_bytes)` follows each download (for progress bars);
    `router_mode` is recorded as the folder's default (None: the router's own default). A failed replay that
    another verifier's replay contradicts is settled by replaying the interval here (node.disputes), at most
    `replay_disputed` of them; the manifest lists them (`disputes`), and what the budget left unsettled."""
    import asyncio

    from expert.pipeline import assemble

    run_id, num_clusters = run.spec.run_id, run.spec.num_clusters
    if router_mode is not None:  # before any download: the run says which router its swarm trains
        from expert.router_preset import run_router_preset

        modes = run_router_preset(run.spec).router.modes
        if router_mode not in modes:
            raise ParisError(f"router mode {router_mode!r} is not available for this run: its router offers "
                             f"{', '.join(modes)}")
    # what checking a checkpoint needs first: the weights the experts started from (their step-0 state is
    # rebuilt) and text weights the data does not replace
    training, start = spec_assets(run.spec, sampling=False), store.fetched_bytes
    await fetch_assets(store, training)
    checker = CheckpointChecker(store, run, device, serve_for=0)  # a reader that leaves: it re-serves nothing
    view = await read_run(node, run_id, num_clusters, rules=run.rules)
    view, settled, unsettled = await settle_disputes(
        view, run_slots(num_clusters), checker, lambda slot: slot_training_data(store, run, slot),
        budget=replay_disputed)
    if unsettled:
        log.warning("contested checkpoints of %s were left unsettled (--replay-disputed %d): using older ones",
                    ", ".join(unsettled), replay_disputed)
    todo = plan(view, num_clusters, allow_partial=allow_partial)
    paths: dict[str, Path] = {}
    got: dict[str, CheckpointBody] = {}
    checked: dict[str, float | None] = {}
    before = store.fetched_bytes
    for slot, cands in todo.items():
        errors = []
        for body in cands:
            report = None if on_progress is None else (
                lambda done, total, slot=slot, body=body: on_progress(slot, body, done, total))
            try:  # the sampling weights only: the training state (model, optimizer, RNG) stays where it is
                paths[slot] = await store.get(body.cid, pin=False, provide=False, on_progress=report,
                                              expected_bytes=body.bytes, max_bytes=checkpoint_limit(run, slot),
                                              files=SAMPLING_FILES)
            except (ParisError, OSError) as e:
                errors.append(f"step {body.step}: {e}")
                log.warning("could not fetch %s step %d (%s); trying an older one", slot, body.step, e)
                continue
            result = await checker.check(body, known_facts(view.judged(slot)), sampling_only=True)
            if not result.ok:
                errors.append(f"step {body.step}: {result.reason}")
                log.warning("refused %s step %d (%s): %s; trying an older one", slot, body.step, body.cid,
                            result.reason)
                continue
            got[slot], checked[slot] = body, result.val_loss
            break
        else:
            raise ParisError(f"no accepted checkpoint of {slot} could be fetched and verified: {'; '.join(errors)}")
    # the VAE and text weights the run names by CID (a sampler needs them; trainers did not)
    downloaded = store.fetched_bytes - before
    assets = {**training, **spec_assets(run.spec)}
    await fetch_assets(store, {w: a for w, a in assets.items() if w not in training})
    experts = {slot_cluster(s): b for s, b in got.items() if s != ROUTER}
    router = got[ROUTER]
    clusters = sorted(experts)
    manifest = {
        "run_id": run_id,
        "num_clusters": num_clusters,
        "clusters": clusters,
        "missing": [k for k in range(num_clusters) if k not in experts],
        "experts": [{"cluster": k, **_provenance(view, expert_slot(k), experts[k], checked[expert_slot(k)])}
                    for k in clusters],
        "router": _provenance(view, ROUTER, router, checked[ROUTER]),
        "disputes": [d.as_dict() for d in settled],
        "disputes_unsettled": unsettled,
    }
    await asyncio.to_thread(assemble, [paths[expert_slot(k)] for k in clusters], paths[ROUTER], out,
                            extra={"swarm": manifest}, clusters=clusters, router_mode=router_mode)
    atomic_write_bytes(Path(out) / SWARM_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return {**manifest, "downloaded_bytes": downloaded, "checkpoint_bytes": sum(b.bytes for b in got.values()),
            "asset_bytes": sum(a.bytes for a in assets.values()),
            "asset_downloaded_bytes": store.fetched_bytes - start - downloaded}


def _provenance(view: RunView, slot: str, body: CheckpointBody, val_loss: float | None) -> dict:
    """What the swarm manifest says about one fetched checkpoint: where it came from and who vouched for it."""
    votes = [a for _, a in view.attestations if a.cid == body.cid]
    return {"cid": body.cid, "step": body.step, "loss": body.loss, "parent": body.parent,
            "val_loss": val_loss, "val_loss_claimed": body.val_loss, "trained_by": lineage_trainers(view, slot, body),
            "attestations": [{"verdict": a.verdict, "val_loss": a.val_loss, "replayed": a.replayed}
                             for a in votes]}


def lineage_trainers(view: RunView, slot: str, body: CheckpointBody) -> list[str]:
    """Who trained the fetched checkpoint: the trainers of its accepted lineage, down to the initialisation
    (not everyone who announced a checkpoint of the slot: copies, forks and junk count for nobody)."""
    accepted = {j.claim.cid: j.claim for j in view.judged(slot) if j.accepted}
    out, cid, seen = set(), body.cid, set()
    while cid is not None and cid in accepted and cid not in seen:
        seen.add(cid)
        out.add(accepted[cid].trainer)
        cid = accepted[cid].parent
    return sorted(out)
