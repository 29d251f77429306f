"""One device of a daemon (`join --gpu 0,1,…` gives it several): the role it plays now, the cluster it holds,
the training it drives.

A node keeps one identity and one content store however many devices it has; each device is a lane with its
own lease subkey (protocol.swarm_records.claimant: `peer/lane`), so one daemon trains one cluster per device at
once. A lane owns what belongs to its device (device, DDP group, driver, slot, role); what the lanes share (the
DHT node, the store, the publisher, the run) is the NodeContext they are given. Which role a lane plays when is
node.role_loop's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from pathlib import Path

from node.context import NodeContext
from node.driver import Cadence, TrainingDriver
from node.logs import event
from node.tensorboard import LossBoard
from swarm.claims import ClaimManager

log = logging.getLogger("node.daemon")


class Lane:
    def __init__(self, ctx: NodeContext, index: int, device, *, ddp_devices: list | None = None,
                 on_role: Callable[[Lane], None] = lambda lane: None, board: LossBoard | None = None) -> None:
        self.ctx, self.index, self.device = ctx, index, device
        self.ddp_devices = list(ddp_devices or [])  # `join --ddp`: an expert trains over all of these (device first)
        self.driver: TrainingDriver | None = None
        self.role: str = "starting"
        self.cluster: int | None = None
        self._slot: str | None = None
        self._on_role = on_role  # the daemon rewrites node.json and logs the change
        self.board = board  # `--tensorboard DIR`: every step's loss and checkpoint's validation loss

    @property
    def label(self) -> str:
        return f"lane {self.index} ({self.device})"

    @property
    def current_slot(self) -> str | None:
        """The slot this lane's training driver works on now (None when it trains nothing)."""
        return self._slot

    def set_role(self, role: str, cluster: int | None = None) -> None:
        self.role, self.cluster = role, cluster
        self._on_role(self)

    def claims(self, lease_id: str | None = None, num_clusters: int | None = None, *, done_oracle=None
               ) -> ClaimManager:
        """A lease manager for this lane (its own subkey: one cluster per device): the run's clusters by default,
        or another lease table (the router's)."""
        ctx = self.ctx
        return ClaimManager(ctx.node, lease_id or ctx.spec.run_id, num_clusters or ctx.spec.num_clusters,
                            period=ctx.period, on_lost=self.on_lost, done_oracle=done_oracle, lane=self.index)

    def on_lost(self, cluster: int) -> None:
        log.warning("another node owns cluster %d now (a partition healed?); stopping this expert", cluster)
        if self.driver is not None:
            self.driver.stop.set()

    def stop(self) -> None:
        """Ask the training driver (if any) to finish its step, checkpoint and return."""
        if self.driver is not None:
            self.driver.stop.set()

    async def train(self, trainer, slot: str, target: int, holds=lambda: True) -> bool:
        """Drive `trainer` to `target` in a worker thread; every checkpoint is published on the event loop while
        `holds()` says we still own the slot's lease (after losing it we keep our work locally, silently)."""
        ctx = self.ctx
        schedule = ctx.schedule
        loop = asyncio.get_running_loop()
        pending: list = []

        def on_checkpoint(path: Path, meta) -> None:  # worker thread: hand the publication to the event loop
            if not holds():
                log.warning("not publishing %s step %d: this node no longer holds the slot's lease", slot, meta.step)
                return
            pending.append(asyncio.run_coroutine_threadsafe(ctx.publisher.publish(slot, path, meta), loop))

        driver = TrainingDriver(trainer, target, ctx.checkpoint_root(slot),
                                Cadence(schedule.checkpoint_every, schedule.checkpoint_minutes * 60),
                                on_checkpoint=on_checkpoint, board=self.board, duty_cycle=ctx.opts.duty_cycle)
        self.driver, self._slot = driver, slot
        if ctx.stopping.is_set():
            driver.stop.set()
        event(log, f"training {slot}", step=trainer.step, target=target, device=str(self.device))
        val0 = (trainer.validation_seconds, trainer.validation_cpu_seconds)
        try:
            reached = await asyncio.to_thread(self._drive, driver)
            sps = driver.mean_samples_per_s
            w = driver.writer
            event(log, f"{slot} {'reached its target' if reached else 'stopped'}", step=trainer.step,
                  steps_run=driver.steps_done, seconds=round(driver.train_seconds, 3),
                  rested_seconds=round(driver.rested_seconds, 3),  # of `seconds`: the duty cycle's rests
                  mean_samples_per_s=None if sps is None else round(sps, 3),
                  checkpoints=w.written if w else 0,
                  checkpoint_copy_seconds=round(w.snapshot_seconds, 3) if w else 0.0,
                  checkpoint_wait_seconds=round(w.waited_seconds, 3) if w else 0.0,
                  # the checkpoints' validation losses (benchmarks/daemon_overhead.py counts them apart)
                  validation_seconds=round(trainer.validation_seconds - val0[0], 3),
                  validation_cpu_seconds=round(trainer.validation_cpu_seconds - val0[1], 3),
                  validation_inline=w.inline if w else None)
        finally:
            for fut in pending:
                with contextlib.suppress(Exception):
                    await asyncio.wrap_future(fut)
            self.driver, self._slot = None, None
        return reached

    def _drive(self, driver: TrainingDriver) -> bool:
        """The training thread: `driver.run()`, as rank 0 of a DDP group over the lane's devices under
        `join --ddp` (experts only: the router trains on the first device)."""
        from expert.train_expert import ExpertTrainer

        trainer = driver.trainer
        if len(self.ddp_devices) < 2 or not isinstance(trainer, ExpertTrainer):
            return driver.run()
        from expert.ddp import DdpGroup, ExpertRecipe

        with DdpGroup(trainer, [str(d) for d in self.ddp_devices], ExpertRecipe.of(trainer)) as group:
            event(log, "DDP ranks up", slot=self.current_slot, world=len(self.ddp_devices),
                  devices=", ".join(map(str, self.ddp_devices)), follower_pids=group.pids)
            return driver.run()
