"""The expert role: hold one cluster's lease, fetch its clips, resume from the newest checkpoint that is
accepted and that this node has checked itself (a takeover) or from our own, train to the target while
publishing checkpoints, then record DONE."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from node.logs import event
from protocol.errors import ParisError
from protocol.swarm_gossip import ClaimedEvent, DoneEvent
from swarm.acceptance import known_facts
from swarm.claims import ClaimManager
from swarm.state import read_run

if TYPE_CHECKING:
    from node.lane import Lane

log = logging.getLogger("node.expert")


async def run_expert(d: Lane, manager: ClaimManager, cluster: int) -> None:
    from expert.train_expert import ExpertTrainer
    from node.bundle import fetch_cluster_clips

    assert d.store is not None and d.run_info is not None
    spec = d.run_info.spec
    slot = f"expert-{cluster}"
    d.set_role("expert", cluster)
    await d.gossip_event(ClaimedEvent(run_id=spec.run_id, cluster=cluster))
    try:
        began = asyncio.get_running_loop().time()
        clips = await fetch_cluster_clips(d.store, d.run_info, cluster)
        held = await fetch_cluster_clips(d.store, d.run_info, cluster, holdout=True)
        event(log, f"{slot} clips ready", seconds=round(asyncio.get_running_loop().time() - began, 2))
        if manager.cluster != cluster:
            return  # the lease was lost while fetching: neither train nor publish
        trainer = await asyncio.to_thread(ExpertTrainer, spec.preset, clips, device=d.device, seed=spec.seed,
                                          run_id=spec.run_id, cluster=cluster, holdout=held,
                                          validation=spec.validation, efficiency=d.opts.efficiency)
        await resume(d, trainer, slot, holds=lambda: manager.cluster == cluster)
        if manager.cluster != cluster:
            return
        reached = await d.train(trainer, slot, spec.preset.train.target_steps,
                                holds=lambda: manager.cluster == cluster)
        if reached and manager.cluster == cluster:
            cid = d.publisher.published.get(slot, (None, 0))[0]
            await manager.mark_done(trainer.step, cid)
            await d.gossip_event(DoneEvent(run_id=spec.run_id, cluster=cluster, step=trainer.step,
                                           checkpoint_cid=cid))
            event(log, f"cluster {cluster} reached its target", step=trainer.step, checkpoint=cid)
    finally:
        await manager.release()
        d.set_role("seeder")


async def resume(d: Lane, trainer, slot: str, holds=lambda: True) -> None:
    """Start from the most advanced of: the swarm's newest *accepted* checkpoint of `slot` that passes our own
    check (validation loss recomputed here), our own last one. A refused candidate is reported and the next
    one tried; what we took over is pinned and provided."""
    from expert.checkpoint import LATEST, read_meta, resolve_checkpoint
    from node.bundle import checkpoint_limit

    assert d.node is not None and d.store is not None and d.run_info is not None
    began = asyncio.get_running_loop().time()
    own_root = d.checkpoint_root(slot)
    own_step = -1
    if (own_root / LATEST).is_file():
        with contextlib.suppress(ParisError, OSError):
            own_step = read_meta(resolve_checkpoint(own_root)).step
    view = (await read_run(d.node, d.run_info.spec.run_id, d.run_info.spec.num_clusters, rules=d.rules,
                           local=d.checker.verdicts)).decidable()  # never resume from our own over a failed read
    for cand in view.accepted_checkpoints(slot):  # newest first; its only holder may be gone
        if cand.step <= own_step:
            break
        result = await d.checker.check(cand, known_facts(view.judged(slot)))
        if not result.ok:
            log.warning("not taking over %s from step %d (%s): %s", slot, cand.step, cand.cid, result.reason)
            continue
        try:
            path = await d.store.get(cand.cid, expected_bytes=cand.bytes,
                                     max_bytes=checkpoint_limit(d.run_info, slot))
            meta = await asyncio.to_thread(trainer.load, path)
        except (ParisError, OSError) as e:
            log.warning("checkpoint %s of %s (step %d) is unusable: %s", cand.cid, slot, cand.step, e)
            continue
        d.publisher.published[slot] = (cand.cid, meta.step)
        d.publisher.replace_pin(slot, cand.cid, meta.step)
        event(log, f"took over {slot} from its newest accepted checkpoint", step=meta.step, cid=cand.cid,
              val_loss=None if result.val_loss is None else round(result.val_loss, 6),
              seconds=round(asyncio.get_running_loop().time() - began, 2))
        return
    if own_step >= 0:
        meta = await asyncio.to_thread(trainer.load, own_root)
        event(log, f"resumed {slot} from our own checkpoint", step=meta.step)
        if holds():  # it may never have reached the swarm
            await d.publisher.publish(slot, resolve_checkpoint(own_root), meta)
