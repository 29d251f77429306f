"""The router role: take the router's lease when no accepted router checkpoint is at its target, fetch a
stratified sample of every cluster's training clips plus every held-out split (node.run_data), train, publish."""

from __future__ import annotations

import asyncio
import logging

from node.context import NodeContext
from node.lane import Lane
from node.logs import event
from node.run_data import router_holdout_clips, router_training_data
from node.takeover import resume
from protocol.swarm_records import ROUTER
from protocol.swarm_run import router_lease_id

log = logging.getLogger("node.router")


def router_wanted(newest_step: int | None, target: int) -> bool:
    """Whether the router still needs training: no accepted router checkpoint is at its target. The router
    learns which cluster a noisy clip came from, so it does not wait for the experts; training it on past its
    target while they train only flooded verifiers with checkpoints (and its held-out loss drifts up as it
    overfits its sample)."""
    return newest_step is None or newest_step < target


async def maybe_run_router(ctx: NodeContext, lane: Lane, *, wait: bool) -> bool:
    """Train the router to its target if nobody else holds its lease and it is wanted. True if we trained."""
    from expert.train_router import router_trainer_from_clips

    spec, schedule = ctx.spec, ctx.schedule
    view = (await ctx.read_view()).decidable()
    newest = view.latest_checkpoint(ROUTER)
    if not router_wanted(None if newest is None else newest.step, schedule.router_target_steps):
        return False
    lease = lane.claims(router_lease_id(spec.run_id), 1)
    got = await ctx.unless_stopped(lease.claim(wait=wait, timeout=None if wait else 30.0))
    if got is None or ctx.stopping.is_set():
        await lease.release()
        return False
    lane.set_role("router")
    try:
        clips, labels = await router_training_data(ctx.store, ctx.run)
        held, held_labels = await router_holdout_clips(ctx.store, ctx.run)
        if lease.cluster is None:
            return True  # lost the lease while fetching
        trainer = await asyncio.to_thread(router_trainer_from_clips, spec, clips, labels,
                                          cap=schedule.router_cap, device=lane.device, holdout=held,
                                          holdout_labels=held_labels, efficiency=ctx.opts.efficiency)
        await resume(ctx, trainer, ROUTER, holds=lambda: lease.cluster is not None)
        if lease.cluster is None:
            return True
        if trainer.step >= schedule.router_target_steps:
            # our own newest checkpoint is at the target, only not accepted yet (the view lags it): nothing to
            # train; False sends the role loop to a seed round, and verification goes on in its own loop
            return False
        if await lane.train(trainer, ROUTER, schedule.router_target_steps, holds=lambda: lease.cluster is not None):
            report = await asyncio.to_thread(trainer.validation)
            event(log, "router validated on the held-out split", step=trainer.step, loss=round(report["loss"], 5),
                  accuracy=report["accuracy"], per_noise_level=report["per_noise_level"])
    finally:
        await lease.release()
        lane.set_role("seeder")
    return True
