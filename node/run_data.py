"""What a slot trains on, fetched from the content store: an expert's cluster clips, the router's stratified
sample of every cluster (the run seed picks it, so its trainer and every verifier that replays it fetch the
same clips), and the held-out splits. Trainers and verifiers' replays both take it from here."""

from __future__ import annotations

import numpy as np

from node.bundle import LocalRun, fetch_cluster_clips, fetch_cluster_sample
from protocol.swarm_records import ROUTER, slot_cluster
from swarm.cas import ContentStore


async def router_training_data(store: ContentStore, run: LocalRun):
    """The router's training data: a stratified sample of every cluster's training clips (only the shards
    that hold them are fetched), with each clip's cluster as its label."""
    from expert.router_preset import stratified_sample
    from expert.shards import ClipBatch

    spec, schedule = run.spec, run.manifest.schedule
    counts = [c.clips for c in run.manifest.clusters]
    sample = stratified_sample(np.repeat(np.arange(spec.num_clusters), counts), schedule.router_cap, spec.seed)
    starts = np.cumsum([0, *counts])
    parts = [await fetch_cluster_sample(store, run, k, sample[(sample >= starts[k]) & (sample < starts[k + 1])]
                                        - starts[k]) for k in range(spec.num_clusters)]
    labels = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)])
    return ClipBatch.concat(parts), labels


async def router_holdout_clips(store: ContentStore, run: LocalRun):
    """Every cluster's held-out clips, concatenated, with each clip's cluster as its label."""
    from expert.shards import ClipBatch

    held = [await fetch_cluster_clips(store, run, k, holdout=True) for k in range(run.spec.num_clusters)]
    return ClipBatch.concat(held), np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(held)])


async def slot_training_data(store: ContentStore, run: LocalRun, slot: str) -> tuple:
    """What a replay of `slot` trains on: (clips, labels): the cluster's clips (no labels), or the router's
    sample."""
    if slot == ROUTER:
        return await router_training_data(store, run)
    return await fetch_cluster_clips(store, run, slot_cluster(slot)), None
