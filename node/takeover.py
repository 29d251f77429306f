"""Where a trainer starts: the swarm's newest accepted checkpoint of its slot that passes this node's own
check (a takeover), or this node's own newest one, whichever is further; experts and the router alike."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from node.bundle import checkpoint_limit
from node.context import NodeContext
from node.logs import event
from protocol.errors import ParisError
from swarm.acceptance import known_facts

log = logging.getLogger("node.takeover")


async def resume(ctx: NodeContext, trainer, slot: str, holds=lambda: True) -> None:
    """Start from the most advanced of: the swarm's newest *accepted* checkpoint of `slot` that passes our own
    check (validation loss recomputed here), our own last one. A refused candidate is reported and the next
    one tried; what we took over is pinned and provided."""
    from expert.checkpoint import LATEST, read_meta, resolve_checkpoint

    began = asyncio.get_running_loop().time()
    own_root = ctx.checkpoint_root(slot)
    own_step = -1
    if (own_root / LATEST).is_file():
        with contextlib.suppress(ParisError, OSError):
            own_step = read_meta(resolve_checkpoint(own_root)).step
    view = (await ctx.read_view(fresh=True)).decidable()  # never resume from our own over a failed read
    for cand in view.accepted_checkpoints(slot):  # newest first; its only holder may be gone
        if cand.step <= own_step:
            break
        result = await ctx.checker.check(cand, known_facts(view.judged(slot)))
        if not result.ok:
            log.warning("not taking over %s from step %d (%s): %s", slot, cand.step, cand.cid, result.reason)
            continue
        try:
            path = await ctx.store.get(cand.cid, expected_bytes=cand.bytes, max_bytes=checkpoint_limit(ctx.run, slot))
            meta = await asyncio.to_thread(trainer.load, path)
        except (ParisError, OSError) as e:
            log.warning("checkpoint %s of %s (step %d) is unusable: %s", cand.cid, slot, cand.step, e)
            continue
        ctx.publisher.published[slot] = (cand.cid, meta.step)
        ctx.publisher.replace_pin(slot, cand.cid, meta.step)
        event(log, f"took over {slot} from its newest accepted checkpoint", step=meta.step, cid=cand.cid,
              val_loss=None if result.val_loss is None else round(result.val_loss, 6),
              seconds=round(asyncio.get_running_loop().time() - began, 2))
        return
    if own_step >= 0:
        meta = await asyncio.to_thread(trainer.load, own_root)
        event(log, f"resumed {slot} from our own checkpoint", step=meta.step)
        if holds():  # it may never have reached the swarm
            await ctx.publisher.publish(slot, resolve_checkpoint(own_root), meta)
