"""The router role: take the router's lease when it is behind its target (or while experts still train),
fetch a stratified sample of every cluster's training clips plus every held-out split, train, publish."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import numpy as np

from node.logs import event
from protocol.swarm_records import ClusterState
from protocol.swarm_run import router_lease_id
from swarm.claims import ClaimManager
from swarm.state import read_run

if TYPE_CHECKING:
    from node.lane import Lane

log = logging.getLogger("node.router")


def all_done(states) -> bool:
    return all(s == ClusterState.DONE for s in states)


async def router_training_data(store, run):
    """The router's training data: a stratified sample of every cluster's training clips (the run seed picks
    it, so its trainer and every verifier that replays it fetch the same clips, and only the shards that hold
    them), with each clip's cluster as its label."""
    from expert.router_preset import stratified_sample
    from expert.shards import ClipBatch
    from node.bundle import fetch_cluster_sample

    spec, schedule = run.spec, run.manifest.schedule
    counts = [c.clips for c in run.manifest.clusters]
    sample = stratified_sample(np.repeat(np.arange(spec.num_clusters), counts), schedule.router_cap, spec.seed)
    starts = np.cumsum([0, *counts])
    parts = [await fetch_cluster_sample(store, run, k, sample[(sample >= starts[k]) & (sample < starts[k + 1])]
                                        - starts[k]) for k in range(spec.num_clusters)]
    labels = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(parts)])
    return ClipBatch.concat(parts), labels


async def maybe_run_router(d: Lane, *, wait: bool) -> bool:
    """Train the router to its target if nobody else holds its lease and no accepted router checkpoint is there
    yet. True if we trained. The router learns which cluster a noisy clip came from, so it does not wait for
    the experts; training it on past its target while they train only flooded verifiers with checkpoints
    (and its held-out loss drifts up as it overfits its sample)."""
    from expert.shards import ClipBatch
    from expert.train_router import router_trainer_from_clips
    from node.bundle import fetch_cluster_clips
    from node.role_expert import resume

    assert d.node is not None and d.store is not None and d.run_info is not None
    spec, schedule = d.run_info.spec, d.run_info.manifest.schedule
    view = (await read_run(d.node, spec.run_id, spec.num_clusters, rules=d.rules,
                           local=d.checker.verdicts)).decidable()
    newest = view.latest_checkpoint("router")
    if newest is not None and newest.step >= schedule.router_target_steps:
        return False
    lease = ClaimManager(d.node, router_lease_id(spec.run_id), 1, period=d.opts.period, on_lost=d.on_lost,
                         lane=d.index)
    got = await d.unless_stopped(lease.claim(wait=wait, timeout=None if wait else 30.0))
    if got is None or d.stopping.is_set():
        await lease.release()
        return False
    d.set_role("router")
    try:
        clips, labels = await router_training_data(d.store, d.run_info)
        held = [await fetch_cluster_clips(d.store, d.run_info, k, holdout=True) for k in range(spec.num_clusters)]
        if lease.cluster is None:
            return True  # lost the lease while fetching
        held_labels = np.concatenate([np.full(len(p), k, dtype=np.int64) for k, p in enumerate(held)])
        trainer = await asyncio.to_thread(router_trainer_from_clips, spec, clips, labels,
                                          cap=schedule.router_cap, device=d.device, holdout=ClipBatch.concat(held),
                                          holdout_labels=held_labels, efficiency=d.opts.efficiency)
        await resume(d, trainer, "router", holds=lambda: lease.cluster is not None)
        if lease.cluster is None:
            return True
        if trainer.step >= schedule.router_target_steps:
            # our own newest checkpoint is at the target, only not accepted yet (the view lags it): nothing to
            # train; False sends the role loop to a seed round, and verification goes on in its own loop
            return False
        if await d.train(trainer, "router", schedule.router_target_steps, holds=lambda: lease.cluster is not None):
            report = await asyncio.to_thread(trainer.validation)
            event(log, "router validated on the held-out split", step=trainer.step, loss=round(report["loss"], 5),
                  accuracy=report["accuracy"], per_noise_level=report["per_noise_level"])
    finally:
        await lease.release()
        d.set_role("seeder")
    return True
