"""`paris-node fetch`: the newest checkpoint of every expert and of the router, downloaded from whoever holds
them, verified (CIDs, then each checkpoint's own hashes), and assembled into the diffusers-style folder."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

from protocol.atomic import atomic_write_bytes
from protocol.errors import ParisError
from protocol.swarm_records import CheckpointBody
from swarm.cas import ContentStore
from swarm.dht import SwarmNode
from swarm.state import RunView, read_run

log = logging.getLogger("node.fetch")

SWARM_MANIFEST = "swarm_manifest.json"


def plan(view: RunView, num_clusters: int, *, allow_partial: bool) -> dict[str, list[CheckpointBody]]:
    """What to fetch: for each expert and the router, its announced checkpoints, newest first (a download
    falls back to the next when nobody serves the newest). Names what is missing."""
    slots = {f"expert-{k}": view.checkpoint_candidates(f"expert-{k}") for k in range(num_clusters)}
    experts = {k: c for k in range(num_clusters) if (c := slots[f"expert-{k}"])}
    router = view.checkpoint_candidates("router")
    missing = [f"expert {k}" for k in range(num_clusters) if k not in experts]
    if not router:
        raise ParisError("no router checkpoint is published yet: the ensemble cannot route"
                         + (f" (also missing: {', '.join(missing)})" if missing else ""))
    if not experts:
        raise ParisError("no expert checkpoint is published yet")
    if missing and not allow_partial:
        raise ParisError(f"missing {', '.join(missing)}: wait for them, or pass --allow-partial to assemble the "
                         f"{len(experts)} that exist")
    return {slot: cands for slot, cands in {**slots, "router": router}.items() if cands}


async def fetch_ensemble(node: SwarmNode, store: ContentStore, run_id: str, num_clusters: int, out: Path, *,
                         allow_partial: bool = False,
                         on_progress: Callable[[str, CheckpointBody, int, int], None] | None = None) -> dict:
    """Fetch, verify, assemble into `out`; returns the swarm manifest written beside the weights.
    `on_progress(slot, body, done_bytes, total_bytes)` follows each download (for progress bars)."""
    import asyncio

    from expert.pipeline import assemble

    view = await read_run(node, run_id, num_clusters)
    todo = plan(view, num_clusters, allow_partial=allow_partial)
    paths: dict[str, Path] = {}
    got: dict[str, CheckpointBody] = {}
    for slot, cands in todo.items():
        errors = []
        for body in cands:
            report = None if on_progress is None else (
                lambda done, total, slot=slot, body=body: on_progress(slot, body, done, total))
            try:
                paths[slot] = await store.get(body.cid, pin=False, provide=False, on_progress=report)
            except (ParisError, OSError) as e:
                errors.append(f"step {body.step}: {e}")
                log.warning("could not fetch %s step %d (%s); trying an older one", slot, body.step, e)
                continue
            got[slot] = body
            break
        else:
            raise ParisError(f"no peer serves any checkpoint of {slot}: {'; '.join(errors)}")
    experts = {int(s.split("-")[1]): b for s, b in got.items() if s != "router"}
    router = got["router"]
    clusters = sorted(experts)
    manifest = {
        "run_id": run_id,
        "num_clusters": num_clusters,
        "clusters": clusters,
        "missing": [k for k in range(num_clusters) if k not in experts],
        "experts": [{"cluster": k, "cid": experts[k].cid, "step": experts[k].step, "loss": experts[k].loss,
                     "trained_by": view.trainers(f"expert-{k}")} for k in clusters],
        "router": {"cid": router.cid, "step": router.step, "loss": router.loss,
                   "trained_by": view.trainers("router")},
    }
    await asyncio.to_thread(assemble, [paths[f"expert-{k}"] for k in clusters], paths["router"], out,
                            extra={"swarm": manifest}, clusters=clusters)
    atomic_write_bytes(Path(out) / SWARM_MANIFEST, json.dumps(manifest, indent=2, sort_keys=True).encode())
    return manifest
