"""One device of a daemon (`join --gpu 0,1,…` gives it several): the lease it holds, the training it drives,
the role it plays now.

A node keeps one identity and one content store however many devices it has; each device is a lane with its
own lease subkey (protocol.swarm_records.claimant: `peer/lane`), so one daemon trains one cluster per device
at once. The role modules take a lane: what belongs to the device (its device, driver, slot, role, lease) is
the lane's own; everything shared (the DHT node, the store, the publisher, the checker, the run) is the
daemon's, read through the lane. Lane 0 also seeds and verifies when it has nothing to train; further lanes
then wait a period.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from node.driver import Cadence, TrainingDriver
from node.logs import event
from node.role_expert import run_expert
from node.role_router import maybe_run_router
from protocol.errors import ParisError
from swarm.claims import ClaimManager

if TYPE_CHECKING:
    from node.daemon import Daemon

log = logging.getLogger("node.daemon")


class Lane:
    def __init__(self, daemon: Daemon, index: int, device, *, ddp_devices: list | None = None) -> None:
        self.daemon, self.index, self.device = daemon, index, device
        self.ddp_devices = list(ddp_devices or [])  # `join --ddp`: an expert trains over all of these (device first)
        self.driver: TrainingDriver | None = None
        self.role: str = "starting"
        self.cluster: int | None = None
        self._slot: str | None = None

    def __getattr__(self, name: str) -> Any:  # what the lanes share: the daemon's (node, store, publisher, …)
        return getattr(self.daemon, name)

    @property
    def label(self) -> str:
        return f"lane {self.index} ({self.device})"

    @property
    def current_slot(self) -> str | None:
        """The slot this lane's training driver works on now (None when it trains nothing)."""
        return self._slot

    def set_role(self, role: str, cluster: int | None = None) -> None:
        self.role, self.cluster = role, cluster
        self.daemon.write_node_file()
        event(log, f"role: {role}", cluster=cluster, **({"lane": self.index} if self.daemon.multi_lane else {}))

    def claims(self) -> ClaimManager:
        """A lease manager for this lane (its own subkey: one cluster per device)."""
        d = self.daemon
        assert d.node is not None and d.run_info is not None
        spec = d.run_info.spec
        return ClaimManager(d.node, spec.run_id, spec.num_clusters, period=d.opts.period, on_lost=self.on_lost,
                            done_oracle=d.reach, lane=self.index)

    def on_lost(self, cluster: int) -> None:
        log.warning("another node owns cluster %d now (a partition healed?); stopping this expert", cluster)
        if self.driver is not None:
            self.driver.stop.set()

    async def role_loop(self, role: str) -> None:
        d = self.daemon
        while not d.stopping.is_set():
            if role in ("auto", "expert"):
                manager = self.claims()
                wait = role == "expert" and not d._all_clusters_done_cached
                cluster = await d.unless_stopped(manager.claim(wait=wait, timeout=None if wait else 30.0))
                if d.stopping.is_set():
                    await manager.release()
                    break
                if cluster is not None and await self._survive(run_expert(self, manager, cluster)):
                    continue
            if role in ("auto", "router") and await self._survive(maybe_run_router(self, wait=role == "router")):
                continue
            if self.index:  # lane 0 seeds and verifies for the node; this device waits for work
                if self.role != "idle":
                    self.set_role("idle")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(d.stopping.wait(), d.opts.period)
                continue
            if d.opts.stop_when_done and await d.run_finished():
                event(log, "every expert and the router reached their targets; --stop-when-done: exiting")
                d.stopping.set()
                break
            await d.seed_round(verify=role in ("auto", "verifier"))

    async def _survive(self, coro) -> bool:
        """Run a role; a failure it can name (data nobody serves, a corrupt download) is logged and the lane
        goes on (the claim was released) instead of exiting. Returns the role's result, False on failure."""
        try:
            result = await coro
        except ParisError as e:
            log.error("role failed: %s; choosing again after a period", e)
            await asyncio.sleep(self.daemon.opts.period)
            return False
        return result is None or bool(result)

    async def train(self, trainer, slot: str, target: int, holds=lambda: True) -> bool:
        """Drive `trainer` to `target` in a worker thread; every checkpoint is published on the event loop while
        `holds()` says we still own the slot's lease (after losing it we keep our work locally, silently)."""
        d = self.daemon
        assert d.run_info is not None
        schedule = d.run_info.manifest.schedule
        loop = asyncio.get_running_loop()
        pending: list = []

        def on_checkpoint(path: Path, meta) -> None:  # worker thread: hand the publication to the event loop
            if not holds():
                log.warning("not publishing %s step %d: this node no longer holds the slot's lease", slot, meta.step)
                return
            pending.append(asyncio.run_coroutine_threadsafe(d.publisher.publish(slot, path, meta), loop))

        driver = TrainingDriver(trainer, target, d.checkpoint_root(slot),
                                Cadence(schedule.checkpoint_every, schedule.checkpoint_minutes * 60),
                                on_checkpoint=on_checkpoint)
        self.driver, self._slot = driver, slot
        if d.stopping.is_set():
            driver.stop.set()
        event(log, f"training {slot}", step=trainer.step, target=target, device=str(self.device))
        try:
            reached = await asyncio.to_thread(self._drive, driver)
            sps = driver.mean_samples_per_s
            w = driver.writer
            event(log, f"{slot} {'reached its target' if reached else 'stopped'}", step=trainer.step,
                  steps_run=driver.steps_done, seconds=round(driver.train_seconds, 3),
                  mean_samples_per_s=None if sps is None else round(sps, 3),
                  checkpoints=w.written if w else 0,
                  checkpoint_copy_seconds=round(w.snapshot_seconds, 3) if w else 0.0,
                  checkpoint_wait_seconds=round(w.waited_seconds, 3) if w else 0.0)
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
