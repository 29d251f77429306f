"""Which role each lane plays, chosen again whenever one ends: read what the run needs, ask a pure rule, act.

  expert    (node.role_expert) claim a free cluster, train it to its target, record DONE.
  router    (node.role_router) take the router lease while no accepted router checkpoint is at its target.
  seeder    (node.role_seeder) keep the run's data, accepted checkpoints and outcome records alive; in `auto`,
            come back every period (or at a gossip nudge) to see whether a cluster fell free.
Verifying runs in a loop of its own beside all of these (node.loops.verify_loop), for every role but `seeder`.
Lane 0 seeds for the node; further lanes wait a period when they have nothing to train.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from node.context import NodeContext
from node.lane import Lane
from node.logs import event
from node.role_expert import run_expert
from node.role_router import maybe_run_router
from node.role_seeder import Seeder
from protocol.errors import ParisError

log = logging.getLogger("node.daemon")


def effective_role(role: str, may_train: bool, peer_id: str = "this node") -> str:
    """The role a node plays in a run: a permissioned run's outsider verifies in `auto`, and may not ask to
    train (a one-line error)."""
    if may_train:
        return role
    if role in ("expert", "router"):
        raise ParisError(f"--role {role}: this run is permissioned and {peer_id} is not on its trainer allowlist "
                         "(verifiers and seeders are open to anyone: --role verifier)")
    return "verifier" if role == "auto" else role


def seed_role(role: str) -> str:
    """What a lane that seeds calls itself: a node that also verifies is a verifier, `--role seeder` a seeder."""
    return "verifier" if role in ("auto", "verifier") else "seeder"


async def play_roles(ctx: NodeContext, lanes: list[Lane], seeder: Seeder, wake: asyncio.Event) -> None:
    """Every lane's role loop, until the node stops (`wake`: a gossip nudge ends a seed round's wait early)."""
    role = effective_role(ctx.opts.role, ctx.rules.may_train(ctx.node.peer_id), ctx.node.peer_id)
    if role != ctx.opts.role:
        event(log, "this run is permissioned and this node is not on its trainer allowlist: verifying")
    await asyncio.gather(*(lane_loop(ctx, lane, role, seeder, wake) for lane in lanes))


async def lane_loop(ctx: NodeContext, lane: Lane, role: str, seeder: Seeder, wake: asyncio.Event) -> None:
    while not ctx.stopping.is_set():
        if role in ("auto", "expert"):
            manager = lane.claims(done_oracle=ctx.reach)
            wait = role == "expert" and not seeder.all_clusters_done
            cluster = await ctx.unless_stopped(manager.claim(wait=wait, timeout=None if wait else 30.0))
            if ctx.stopping.is_set():
                await manager.release()
                break
            if cluster is not None and await _survive(ctx, run_expert(ctx, lane, manager, cluster)):
                continue
        if role in ("auto", "router") and await _survive(ctx, maybe_run_router(ctx, lane, wait=role == "router")):
            continue
        if lane.index:  # lane 0 seeds for the node; this device waits for work
            if lane.role != "idle":
                lane.set_role("idle")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(ctx.stopping.wait(), ctx.period)
            continue
        if ctx.opts.stop_when_done and await ctx.run_finished():
            event(log, "every expert and the router reached their targets; --stop-when-done: exiting")
            ctx.stopping.set()
            break
        await seed_round(ctx, lane, seeder, seed_role(role), wake)


async def seed_round(ctx: NodeContext, lane: Lane, seeder: Seeder, role: str, wake: asyncio.Event) -> None:
    """One seeder round, then wait a period (or a gossip nudge). A stop cancels the round: DHT reads and fetches
    from peers that died can take many timeouts. A check already running in a worker thread is not interrupted."""
    if lane.role != role:
        lane.set_role(role)
    try:
        await ctx.unless_stopped(seeder.round())
    except (ParisError, OSError) as e:
        log.warning("%s round incomplete: %s", role, e)
    except Exception:  # what a peer serves must never end the node: log it and go on next period
        log.exception("%s round failed; retrying next period", role)
    if ctx.stopping.is_set():
        return
    wake.clear()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(wake.wait(), ctx.period)


async def _survive(ctx: NodeContext, coro) -> bool:
    """Run a role; a failure it can name (data nobody serves, a corrupt download) is logged and the lane goes on
    (the claim was released) instead of exiting. Returns the role's result, False on failure."""
    try:
        result = await coro
    except ParisError as e:
        log.error("role failed: %s; choosing again after a period", e)
        await asyncio.sleep(ctx.period)
        return False
    return result is None or bool(result)
