"""The daemon behind `paris-node join`: its lifecycle, and nothing else. It starts the DHT node and the content
store, opens the run (node.run_open), builds the NodeContext that every role and loop receives, starts the
background loops (node.loops) and the lanes' role loops (node.role_loop), and on a signal or at the end stops
them, says it leaves and shuts everything down. Which role a lane plays is node.role_loop's; what counts as a
checkpoint is swarm.acceptance's rule; what a node checks itself is node.checker; every publication goes through
node.publisher. Training runs in a worker thread (node.driver)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from expert.threads import ShortLivedThreads
from node import loops
from node.checker import CheckpointChecker
from node.context import NodeContext
from node.gossip_link import GossipLink
from node.keeper import OwnRecords
from node.lane import Lane
from node.logs import event
from node.members import MemberBook
from node.metrics import NodeMetrics
from node.nodefile import NodeInfo, remove_node_info, write_node_info
from node.options import DaemonOptions
from node.publisher import Publisher
from node.role_loop import play_roles
from node.role_seeder import Seeder
from node.role_verifier import Verifier, make_verifier
from node.run_open import open_run
from node.status import NodeStatus, lane_status, tally
from node.tensorboard import LossBoard
from swarm.cas import ContentStore
from swarm.dht import SwarmNode
from swarm.dialback import serve_dialback

log = logging.getLogger("node.daemon")


class Daemon:
    def __init__(self, opts: DaemonOptions) -> None:
        self.opts = opts
        self.home = opts.home.expanduser()
        self.stopping = asyncio.Event()
        self.wake = asyncio.Event()  # a gossip nudge or a stop ends a seed round's wait
        self.verify_wake = asyncio.Event()  # a gossip nudge starts a verification round at once
        self.started_at = time.time()
        self.node: SwarmNode | None = None
        self.store: ContentStore | None = None
        self.ctx: NodeContext | None = None
        self.gossip: GossipLink | None = None
        self.lanes: list[Lane] = []  # one per device (`--gpu 0,1,…`); lane 0 also seeds
        self.members = MemberBook()
        self.verifier: Verifier | None = None  # checks checkpoints beside any role but `seeder`
        self.metrics = NodeMetrics() if opts.metrics_port is not None else None
        self.board = LossBoard(opts.tensorboard) if opts.tensorboard is not None else None  # `--tensorboard DIR`
        self._signals = 0
        self._tasks: list[asyncio.Task] = []
        self._join_command: str | None = None
        self._metrics_url: str | None = None
        if self.metrics is not None:
            self.metrics.watch(lambda: self.status(store_bytes=True))

    async def run(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        # every to_thread job in a thread that ends when idle: no OpenMP team outlives the torch work that made it
        workers = min(32, (os.cpu_count() or 1) + 4)  # ThreadPoolExecutor's default bound
        asyncio.get_running_loop().set_default_executor(ShortLivedThreads(workers, "asyncio"))
        event(log, "starting the DHT", home=str(self.home), initial_peers=len(self.opts.network.initial_peers))
        # forks: before CUDA starts
        self.node = await asyncio.to_thread(SwarmNode.start, self.home, self.opts.network, self.opts.record_ttl)
        self._install_signals()  # after the fork: a child must not inherit the loop's signal wake-up fd
        try:
            devices = self._devices()
            self.store = ContentStore(self.node, self.home / "store", limit_bytes=self.opts.cache_bytes or None)
            await self.store.start()
            await serve_dialback(await self.node.dht.replicate_p2p())
            self._serve_metrics()
            run = await open_run(self.node, self.store, self.opts, self.home)
            if self.stopping.is_set():
                return 0
            if self.opts.ddp:
                from expert.ddp import check_world

                check_world(run.spec.preset.train.batch_size, len(devices))
            ctx = self.ctx = self._context(run, devices[0])
            ddp = self.opts.ddp
            self.lanes = ([Lane(ctx, 0, devices[0], ddp_devices=devices, on_role=self._on_role, board=self.board)]
                          if ddp else [Lane(ctx, i, dev, on_role=self._on_role, board=self.board)
                                       for i, dev in enumerate(devices)])
            seeder = Seeder(ctx)
            if self.opts.role != "seeder":
                self.verifier = make_verifier(ctx)
                ctx.observers.append(self.verifier.observe)
            await self.gossip.start(self.store.served_bytes)
            self.write_node_file()
            self._start_loops(ctx, seeder)
            if self.opts.creates_run:
                self._announce_bootstrap()
            await play_roles(ctx, self.lanes, seeder, self.wake)
        finally:
            await self._shutdown()
        return 0

    def _devices(self) -> list:
        from expert.device import resolve_device, resolve_devices

        gpu = self.opts.gpu
        devices = resolve_devices(gpu) if "," in gpu or gpu.strip().lower() == "all" else [resolve_device(gpu)]
        if self.opts.ddp:
            event(log, "DDP: one expert at a time over every device", devices=", ".join(map(str, devices)))
        elif len(devices) > 1:
            event(log, "one lane per device: a lease and a training loop each", devices=", ".join(map(str, devices)))
        if self.opts.cpu_threads:
            import torch

            torch.set_num_threads(self.opts.cpu_threads)
        return devices

    def _context(self, run, device) -> NodeContext:
        assert self.node is not None and self.store is not None
        self.gossip = GossipLink(self.opts, self.home, self.node, run.spec.run_id, (self.wake, self.verify_wake))
        keeper = OwnRecords(self.node)
        checker = CheckpointChecker(self.store, run, device)
        publisher = Publisher(self.node, self.store, run.spec.run_id, self.gossip.say, metrics=self.metrics,
                              keeper=keeper, vouch=checker.vouch)
        return NodeContext(opts=self.opts, home=self.home, node=self.node, store=self.store, run=run,
                           checker=checker, publisher=publisher, keeper=keeper, stopping=self.stopping,
                           say=self.gossip.say, observers=[self.members.note, publisher.settle])

    def _start_loops(self, ctx: NodeContext, seeder: Seeder) -> None:
        assert self.gossip is not None
        store = ctx.store
        coros = [loops.progress_loop(ctx, self.lanes, ctx.say),
                 loops.member_loop(self.gossip, lambda: store.served_bytes, ctx.period, self.write_node_file),
                 loops.keep_loop(ctx.node, ctx.keeper, seeder),
                 loops.reconnect_loop(ctx.node, self.members, self.opts.network.initial_peers, ctx.period)]
        if self.metrics is not None and self.gossip.client is not None:
            coros.append(loops.gossip_stats_loop(self.gossip, self.metrics, ctx.period))
        if self.opts.creates_run:
            coros.append(loops.pointer_loop(ctx))
        if self.verifier is not None:
            coros.append(loops.verify_loop(ctx, self.verifier, self.verify_wake))
        self._tasks += [asyncio.create_task(c) for c in coros]

    def _serve_metrics(self) -> None:
        if self.metrics is None:
            return
        host = self.opts.metrics_host
        port = self.metrics.serve(host, self.opts.metrics_port)
        self._metrics_url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            self._signals += 1
            if self._signals > 1:
                log.warning("second interrupt: exiting now, without a final checkpoint")
                os._exit(130)
            log.warning("stopping: finishing the current step, publishing a checkpoint and releasing the claim "
                        "(interrupt again to exit at once)")
            self.stopping.set()
            self.wake.set()
            for lane in self.lanes:
                lane.stop()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal was closed
            loop.add_signal_handler(sig, on_signal, sig)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.gossip is not None:
            await self.gossip.close(self.lanes[0].cluster if self.lanes else None)
        if self.store is not None:
            await self.store.close()
        if self.node is not None:
            await asyncio.to_thread(self.node.shutdown)
        if self.metrics is not None:
            self.metrics.close()
        if self.board is not None:
            self.board.close()
        remove_node_info(self.home)
        event(log, "stopped")

    # ---- what the node tells the outside: node.json, the metrics snapshot, the join command ----------------

    def status(self, *, store_bytes: bool = False) -> NodeStatus:
        """What this daemon is doing now, over every lane (node.status)."""
        held = None
        if store_bytes and self.store is not None:
            with contextlib.suppress(OSError):
                held = self.store.total_bytes()
        return NodeStatus(
            peer_id=self.node.peer_id if self.node is not None else "",
            run_id=self.ctx.spec.run_id if self.ctx is not None else "",
            lanes=tuple(lane_status(lane) for lane in self.lanes),
            served_bytes=self.store.served_bytes if self.store is not None else 0,
            fetched_bytes=self.store.fetched_bytes if self.store is not None else 0, store_bytes=held,
            peers_seen=self.members.seen,
            verdicts=tally(self.verifier.attested.values()) if self.verifier is not None else {})

    def _on_role(self, lane: Lane) -> None:
        self.write_node_file()
        event(log, f"role: {lane.role}", cluster=lane.cluster, **({"lane": lane.index} if len(self.lanes) > 1 else {}))

    def write_node_file(self) -> None:
        assert self.node is not None
        st = self.status()
        write_node_info(self.home, NodeInfo(
            peer_id=self.node.peer_id, maddrs=tuple(self.node.visible_maddrs()),
            gossip_maddrs=self.gossip.maddrs if self.gossip is not None else (),
            run_id=st.run_id or None, role=st.role, cluster=st.cluster, pid=os.getpid(), started_at=self.started_at,
            join_command=self._join_command, metrics=self._metrics_url))

    def _announce_bootstrap(self) -> None:
        assert self.node is not None and self.ctx is not None
        maddrs = self.node.visible_maddrs()
        peers = " ".join(f"--initial-peers {m}" for m in maddrs[:2])
        self._join_command = f"paris-node join {peers} --run {self.ctx.spec.run_id}"
        self.write_node_file()
        what = "new run published into the swarm" if self.opts.network.initial_peers else "new swarm started"
        event(log, f"{what}; others join it with:\n\n    {self._join_command}\n")
        if all("/127.0.0.1/" in m or "/::1/" in m for m in maddrs):
            log.info("listening on loopback only: pass --host 0.0.0.0 (and --announce-host PUBLIC_IP) to let "
                     "other machines join")
