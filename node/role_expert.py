"""The expert role: hold one cluster's lease, fetch its clips, resume from the newest checkpoint that is
accepted and that this node has checked itself (a takeover, node.takeover) or from our own, train to the target
while publishing checkpoints, then record DONE."""

from __future__ import annotations

import asyncio
import logging

from node.bundle import fetch_cluster_clips
from node.context import NodeContext
from node.lane import Lane
from node.logs import event
from node.takeover import resume
from protocol.swarm_gossip import ClaimedEvent, DoneEvent
from protocol.swarm_records import expert_slot
from swarm.claims import ClaimManager

log = logging.getLogger("node.expert")


async def run_expert(ctx: NodeContext, lane: Lane, manager: ClaimManager, cluster: int) -> None:
    from expert.train_expert import ExpertTrainer

    spec = ctx.spec
    slot = expert_slot(cluster)
    lane.set_role("expert", cluster)
    await ctx.say(ClaimedEvent(run_id=spec.run_id, cluster=cluster))
    try:
        began = asyncio.get_running_loop().time()
        clips = await fetch_cluster_clips(ctx.store, ctx.run, cluster)
        held = await fetch_cluster_clips(ctx.store, ctx.run, cluster, holdout=True)
        event(log, f"{slot} clips ready", seconds=round(asyncio.get_running_loop().time() - began, 2))
        if manager.cluster != cluster:
            return  # the lease was lost while fetching: neither train nor publish
        trainer = await asyncio.to_thread(ExpertTrainer, spec.preset, clips, device=lane.device, seed=spec.seed,
                                          run_id=spec.run_id, cluster=cluster, holdout=held,
                                          validation=spec.validation, efficiency=ctx.opts.efficiency)
        await resume(ctx, trainer, slot, holds=lambda: manager.cluster == cluster)
        if manager.cluster != cluster:
            return
        reached = await lane.train(trainer, slot, spec.preset.train.target_steps,
                                   holds=lambda: manager.cluster == cluster)
        if reached and manager.cluster == cluster:
            cid = ctx.publisher.published.get(slot, (None, 0))[0]
            await manager.mark_done(trainer.step, cid)
            await ctx.say(DoneEvent(run_id=spec.run_id, cluster=cluster, step=trainer.step, checkpoint_cid=cid))
            event(log, f"cluster {cluster} reached its target", step=trainer.step, checkpoint=cid)
    finally:
        await manager.release()
        lane.set_role("seeder")
