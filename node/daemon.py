"""The daemon behind `paris-node join`: open or join a run, take a role, train and publish, shut down cleanly.

Roles, chosen again whenever one ends, each in its own module:
  expert    (node.role_expert) claim a free cluster, fetch its clips, resume from the newest accepted
            checkpoint that passes our own check (a takeover) or from our own, train to the target while
            publishing checkpoints, then record DONE.
  router    (node.role_router) take the router lease, fetch every cluster's sample, train, publish.
  verifier  (node.role_verifier) check newly announced checkpoints and publish attestations; also seeds.
            In `auto`, a node with no free cluster and the router on target verifies.
  seeder    (node.role_seeder) keep the run's data and every slot's newest accepted checkpoint pinned and
            provided; in `auto`, check every period whether a cluster fell free.
What counts as a checkpoint is swarm.acceptance's rule; what a node checks itself is node.checker; every
publication goes through node.publisher. Training runs in a worker thread (node.driver).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Literal

import numpy as np
from hivemind.utils.timed_storage import get_dht_time
from pydantic import BaseModel, ConfigDict, Field

from expert.efficiency import Efficiency
from node.assets import fetch_assets, spec_assets
from node.bundle import LocalRun, fetch_run, publish_run, resolve_run_id
from node.checker import CheckpointChecker, slot_cluster
from node.cli_options import DEMO_STEPS
from node.driver import TrainingDriver
from node.keeper import OwnRecords, RunPointer
from node.lane import Lane
from node.logs import event
from node.metrics import NodeMetrics
from node.nodefile import NodeInfo, remove_node_info, write_node_info
from node.publisher import Publisher
from node.role_router import all_done
from node.role_seeder import archive_facts, keep_archive, replicate_accepted, seed_data
from node.role_verifier import MARGIN, Verifier
from node.tensorboard import LossBoard
from protocol.errors import ParisError
from protocol.swarm_gossip import CheckpointEvent, DoneEvent, GossipMessage, LeavingEvent, ProgressEvent
from protocol.swarm_records import MAX_RECORD_TTL, MemberBody, ProgressBody
from protocol.swarm_run import Schedule
from swarm.cas import ContentStore
from swarm.dht import RECORD_TTL, NetworkConfig, SwarmNode, tcp_maddr
from swarm.dialback import serve_dialback
from swarm.state import RunRules, VerifiedState, publish_progress, read_run, verified_state
from swarm.verify_plan import VerifyPlan, verifier_secret

log = logging.getLogger("node.daemon")

Role = Literal["auto", "expert", "router", "seeder", "verifier"]


class DemoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    clusters: int = Field(default=3, ge=1, le=64)
    preset: str = "small"
    target_steps: int = Field(default=DEMO_STEPS, ge=1)
    clips: int = Field(default=2000, ge=8)


class DaemonOptions(BaseModel):
    """Everything `join` was asked to do (validated at the CLI boundary)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    home: Path
    gpu: str = "cpu"
    ddp: bool = False  # one expert over all of `gpu`'s devices (DistributedDataParallel), not one per device
    role: Role = "auto"
    network: NetworkConfig = NetworkConfig()
    run: str | None = None  # a run id to join, or (starting a swarm) a run spec file
    data: Path | None = None  # where the run spec's data is, if not where `run init` saw it
    demo: DemoOptions = DemoOptions()
    schedule: Schedule = Schedule()
    checkpoint_every_from_preset: bool = False  # new swarm: the run preset's checkpoint_every, not schedule's
    period: float = Field(default=10.0, gt=0)  # lease renewal and progress publication interval
    record_ttl: float = Field(default=RECORD_TTL, gt=0, le=MAX_RECORD_TTL)  # long-lived records' DHT lifetime
    gossip: bool = True
    gossip_host: str = "127.0.0.1"
    gossip_port: int = Field(default=0, ge=0, le=65535)  # 0: any free port
    gossip_announce: str | None = None  # the host others dial for our gossip process (needs a fixed port)
    cache_bytes: int = Field(default=50 * 2**30, ge=0)
    stop_when_done: bool = False
    cpu_threads: int | None = Field(default=None, ge=1)  # torch intra-op threads (CPU training)
    efficiency: Efficiency = Efficiency()  # torch.compile, gradient checkpointing (this node's own choice)
    trainers: tuple[str, ...] | None = None  # new swarm: a permissioned run's trainer allowlist (peer ids)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus endpoint (None: off, 0: any)
    metrics_host: str = "127.0.0.1"
    tensorboard: Path | None = None  # training and validation loss per slot as TensorBoard event files


class Daemon:
    def __init__(self, opts: DaemonOptions) -> None:
        self.opts = opts
        self.home = Path(opts.home).expanduser()
        self.stopping = asyncio.Event()
        self._signals = 0
        self.node: SwarmNode | None = None
        self.store: ContentStore | None = None
        self.gossip = None
        self.run_info: LocalRun | None = None
        self.lanes: list[Lane] = []  # one per device (`--gpu 0,1,…`); lane 0 also seeds and verifies
        self.started_at = time.time()
        self.publisher: Publisher | None = None  # type: ignore[assignment]
        self.checker: CheckpointChecker | None = None  # type: ignore[assignment]
        self.verifier: Verifier | None = None  # checks checkpoints beside any role but `seeder`
        self.created_run = False  # we published the run (a new swarm, or `--run FILE` into an existing one)
        self._wake = asyncio.Event()
        self._verify_wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._join_command: str | None = None
        self._all_clusters_done_cached = False
        self._metrics_url: str | None = None
        self.own_records: OwnRecords | None = None  # type: ignore[assignment]
        self.archive_ledger = None  # swarm.archive.Ledger of the run, once this node keeps any of its records
        self.peers_seen = 0  # members of the run in the newest full read of its records
        self.member_addrs: dict[str, tuple[float, tuple[str, ...]]] = {}  # peer → (ts, maddrs), kept after expiry
        self.metrics: NodeMetrics | None = None
        if opts.metrics_port is not None:
            self.metrics = NodeMetrics()
            self.metrics.watch(self)
        self.board = LossBoard(opts.tensorboard) if opts.tensorboard is not None else None

    # ---- lifecycle ----------------------------------------------------------------------------------------

    async def run(self) -> int:
        self.home.mkdir(parents=True, exist_ok=True)
        network = self.opts.network
        event(log, "starting the DHT", home=str(self.home), initial_peers=len(network.initial_peers))
        # forks: before CUDA starts
        self.node = await asyncio.to_thread(SwarmNode.start, self.home, network, self.opts.record_ttl)
        self._install_signals()  # after the fork: a child must not inherit the loop's signal wake-up fd
        try:
            from expert.device import resolve_device, resolve_devices

            gpu = self.opts.gpu
            devices = resolve_devices(gpu) if "," in gpu or gpu.strip().lower() == "all" else [resolve_device(gpu)]
            if self.opts.ddp:
                self.lanes = [Lane(self, 0, devices[0], ddp_devices=devices)]
                event(log, "DDP: one expert at a time over every device", devices=", ".join(map(str, devices)))
            else:
                self.lanes = [Lane(self, i, dev) for i, dev in enumerate(devices)]
            if self.multi_lane:
                event(log, "one lane per device: a lease and a training loop each",
                      devices=", ".join(map(str, devices)))
            if self.opts.cpu_threads:
                import torch

                torch.set_num_threads(self.opts.cpu_threads)
            self.store = ContentStore(self.node, self.home / "store", limit_bytes=self.opts.cache_bytes or None)
            await self.store.start()
            await serve_dialback(await self.node.dht.replicate_p2p())
            if self.metrics is not None:
                port = self.metrics.serve(self.opts.metrics_host, self.opts.metrics_port)
                host = self.opts.metrics_host
                self._metrics_url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
            self.run_info = await self._open_run()
            if self.stopping.is_set():
                return 0
            if self.opts.ddp:
                from expert.ddp import check_world

                check_world(self.run_info.spec.preset.train.batch_size, len(self.lanes[0].ddp_devices))
            self.own_records = OwnRecords(self.node)
            self.checker = CheckpointChecker(self.store, self.run_info, self.device)
            self.publisher = Publisher(self.node, self.store, self.run_info.spec.run_id, self.gossip_event,
                                       metrics=self.metrics, keeper=self.own_records, vouch=self.checker.vouch)
            if self.opts.role != "seeder":
                self.verifier = self._make_verifier()
            await self._start_gossip()
            self.write_node_file()
            self._tasks += [asyncio.create_task(self._progress_loop()), asyncio.create_task(self._member_loop()),
                            asyncio.create_task(self._keep_loop()), asyncio.create_task(self._reconnect_loop())]
            if self.metrics is not None and self.gossip is not None:
                self._tasks.append(asyncio.create_task(self._gossip_stats_loop()))
            if self.created_run:
                self._tasks.append(asyncio.create_task(self._pointer_loop()))
            if self.verifier is not None:
                self._tasks.append(asyncio.create_task(self._verify_loop()))
            if self.created_run:
                self._announce_bootstrap()
            await self._role_loop()
        finally:
            await self._shutdown()
        return 0

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
            self._wake.set()
            for lane in self.lanes:
                if lane.driver is not None:
                    lane.driver.stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal was closed
            loop.add_signal_handler(sig, on_signal, sig)

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.gossip is not None:
            with contextlib.suppress(Exception):
                if self.run_info is not None:
                    await self.gossip.publish(LeavingEvent(run_id=self.run_info.spec.run_id, cluster=self.cluster))
                await self.gossip.close()
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

    # ---- the run --------------------------------------------------------------------------------------------

    async def _open_run(self) -> LocalRun:
        assert self.node is not None and self.store is not None
        self.created_run = not self.opts.network.initial_peers or (
            self.opts.run is not None and (Path(self.opts.run).suffix == ".json" or Path(self.opts.run).is_file()))
        if not self.created_run:
            run_id = await resolve_run_id(self.node, self.opts.run)
            event(log, "fetching the run", run=run_id)
            local = await fetch_run(self.node, self.store, run_id)
        else:
            spec, data_dir = await asyncio.to_thread(self._local_spec)
            event(log, "publishing the run into the content store", run=spec.run_id, clusters=spec.num_clusters)
            schedule = self.opts.schedule
            if self.opts.checkpoint_every_from_preset:
                schedule = schedule.with_preset_cadence(spec.preset.train)
            local = await publish_run(self.node, self.store, spec, data_dir, self.home / "runs" / spec.run_id,
                                      schedule, self.opts.trainers)
        spec = local.spec
        if assets := spec_assets(spec, sampling=False):  # the text weights: every trainer and verifier needs them
            event(log, "fetching the run's model assets", assets=", ".join(a.name for a in assets.values()))
            await fetch_assets(self.store, assets)
        event(log, "run ready", run=spec.run_id, clusters=spec.num_clusters, preset=spec.preset.name,
              target_steps=spec.preset.train.target_steps, bundle=local.bundle_cid)
        return local

    def _local_spec(self):
        """The spec to start a swarm on: `--run FILE`, or the demo run (made once, reused on restart); either way
        owned by this node's identity."""
        from protocol.run import RUN_FORMAT_VERSION, RunSpec

        me = self.node.identity.public_key_bytes.decode()
        if self.opts.run:
            path = Path(self.opts.run)
            if not path.is_file():
                raise ParisError(f"--run {path}: no such run spec file (a new swarm needs one from `run init`)")
            spec = RunSpec.load(path)
            data = self.opts.data or (Path(spec.data_hint) if spec.data_hint else None)
            if data is None:
                raise ParisError(f"{path} does not say where its data is: pass --data DIR")
            if spec.creator is None:  # a spec made without an identity: this node becomes its creator
                spec = spec.model_copy(update={"creator": me})
                event(log, "the run spec names no creator: publishing it as this node's run", run=spec.run_id)
            elif spec.creator != me:
                raise ParisError(f"{path} belongs to another creator (its run id commits to their key): only that "
                                 f"identity can publish it; join it with --run {spec.run_id} instead")
            return spec, data
        d = self.opts.demo
        root = self.home / "demo" / f"v{RUN_FORMAT_VERSION}-{d.preset}-k{d.clusters}-n{d.clips}-t{d.target_steps}"
        data, run_file = root / "data", root / "run.json"
        if not (data / "manifest.json").is_file():
            from expert.synth_dataset import write_synthetic

            event(log, "generating the built-in synthetic data", clips=d.clips, out=str(data))
            write_synthetic(data, clips=d.clips, seed=0)
        if not run_file.is_file():
            from expert.run_init import init_run

            event(log, "clustering the demo data", clusters=d.clusters)
            spec = init_run(data, d.clusters, preset_name=d.preset, seed=0, name="demo", target_steps=d.target_steps,
                            creator=me)
            spec.save(run_file)
        return RunSpec.load(run_file), data

    async def _start_gossip(self) -> None:
        if not self.opts.gossip:
            return
        from swarm.gossip import GossipClient, join_gossip

        assert self.node is not None and self.run_info is not None
        announce = tcp_maddr(self.opts.gossip_announce, self.opts.gossip_port) if self.opts.gossip_announce else None
        client = GossipClient(self.node.identity, self.run_info.spec.run_id,
                              listen=tcp_maddr(self.opts.gossip_host, self.opts.gossip_port),
                              on_message=self._on_gossip, key_file=self.home / "gossip.key", announce=announce)
        try:
            await client.start()
        except ParisError as e:
            log.warning("gossip is off for this session: %s", e)
            return
        self.gossip = client
        await join_gossip(self.node, client, role=self.opts.role, ttl=max(180.0, 6 * self.opts.period),
                          served_bytes=self.store.served_bytes if self.store else 0)

    def _on_gossip(self, msg: GossipMessage) -> None:
        ev = msg.event
        if isinstance(ev, CheckpointEvent | DoneEvent | LeavingEvent):
            self._wake.set()  # a seeder replicates (or a waiting node claims) without waiting out its period
            self._verify_wake.set()  # a verifier checks a new checkpoint at once
        log.debug("gossip from %s: %s", msg.sender, ev.type)

    def _announce_bootstrap(self) -> None:
        assert self.node is not None and self.run_info is not None
        maddrs = self.node.visible_maddrs()
        peers = " ".join(f"--initial-peers {m}" for m in maddrs[:2])
        self._join_command = f"paris-node join {peers} --run {self.run_info.spec.run_id}"
        self.write_node_file()
        what = "new run published into the swarm" if self.opts.network.initial_peers else "new swarm started"
        event(log, f"{what}; others join it with:\n\n    {self._join_command}\n")
        if all("/127.0.0.1/" in m or "/::1/" in m for m in maddrs):
            log.info("listening on loopback only: pass --host 0.0.0.0 (and --announce-host PUBLIC_IP) to let "
                     "other machines join")

    def write_node_file(self) -> None:
        assert self.node is not None
        role = ",".join(lane.role for lane in self.lanes) if self.multi_lane else self.role
        write_node_info(self.home, NodeInfo(
            peer_id=self.node.peer_id, maddrs=tuple(self.node.visible_maddrs()),
            gossip_maddrs=tuple(self.gossip.maddrs) if self.gossip else (),
            run_id=self.run_info.spec.run_id if self.run_info else None, role=role, cluster=self.cluster,
            pid=os.getpid(), started_at=self.started_at, join_command=self._join_command,
            metrics=self._metrics_url))

    def note_members(self, members: dict) -> None:
        """Remember where the run's members listen, beyond their records' TTL: what `_reconnect_loop` dials
        once a partition heals (a random 64 of them each period; the 1,024 newest are kept)."""
        self.peers_seen = len(members)
        for peer, m in members.items():
            if isinstance(m, MemberBody) and m.maddrs:
                self.member_addrs[peer] = (m.ts, m.maddrs)
        if len(self.member_addrs) > 1024:
            for peer in sorted(self.member_addrs, key=lambda p: self.member_addrs[p][0])[:-1024]:
                del self.member_addrs[peer]

    # ---- lanes: what the node does on its first device (one device: the node's role, cluster, training) ----

    @property
    def multi_lane(self) -> bool:
        return len(self.lanes) > 1

    @property
    def device(self):
        return self.lanes[0].device if self.lanes else None

    @property
    def driver(self) -> TrainingDriver | None:
        return self.lanes[0].driver if self.lanes else None

    @property
    def role(self) -> str:
        return self.lanes[0].role if self.lanes else "starting"

    @property
    def cluster(self) -> int | None:
        return self.lanes[0].cluster if self.lanes else None

    @property
    def current_slot(self) -> str | None:
        """The slot the first lane's training driver works on now (None when it trains nothing)."""
        return self.lanes[0].current_slot if self.lanes else None

    def set_role(self, role: str, cluster: int | None = None) -> None:
        self.lanes[0].set_role(role, cluster)

    # ---- background loops ----------------------------------------------------------------------------------

    async def _member_loop(self) -> None:
        """Refresh our member record and meet newcomers' gossip processes."""
        from swarm.gossip import join_gossip

        assert self.node is not None and self.run_info is not None
        while True:
            await asyncio.sleep(max(30.0, 3 * self.opts.period))
            try:
                if self.opts.gossip and (self.gossip is None or not self.gossip.alive):
                    log.warning("the gossip process is not running; starting it again (same identity and port)")
                    if self.gossip is not None:
                        with contextlib.suppress(Exception):
                            await self.gossip.close()
                        self.gossip = None
                    await self._start_gossip()
                    self.write_node_file()
                elif self.gossip is not None:
                    await join_gossip(self.node, self.gossip, role=self.opts.role,
                                      served_bytes=self.store.served_bytes if self.store else 0,
                                      ttl=max(180.0, 6 * self.opts.period))
            except Exception:
                log.exception("member refresh failed; retrying next period")

    async def _reconnect_loop(self) -> None:
        """Every period, ping the initial peers and known members that our DHT routing table lost (hivemind
        drops peers that stop answering and never bootstraps again): after a partition heals, or a network
        outage ends, both sides find each other within a period instead of staying split."""
        assert self.node is not None
        initial = {m.rsplit("/p2p/", 1)[1]: (m.rsplit("/p2p/", 1)[0],)
                   for m in self.opts.network.initial_peers if "/p2p/" in m}
        while True:
            await asyncio.sleep(min(max(self.opts.period, 1.0), 30.0))
            try:
                peers = {**initial, **{p: addrs for p, (_, addrs) in self.member_addrs.items()}}
                back = await self.node.reconnect(peers, timeout=max(2.0, min(self.opts.period, 10.0)))
                if back:
                    event(log, "reconnected to peers the DHT had lost", peers=len(back))
            except Exception:
                log.debug("reconnect round failed", exc_info=True)

    async def _keep_loop(self) -> None:
        """Re-announce our own checkpoint records and attestations (node.keeper), and the archived copies of
        the run's outcome this node keeps (node.role_seeder.keep_archive), before their TTL runs out."""
        assert self.node is not None
        while True:
            await asyncio.sleep(min(max(self.node.record_ttl / 6, 1.0), 300.0))
            try:
                await self.own_records.refresh()
                await keep_archive(self)
            except Exception:
                log.exception("re-announcing our records or the archive failed; retrying")

    async def _pointer_loop(self) -> None:
        """Keep the pointer to the run we created in the DHT (node.keeper.RunPointer): every 3 periods (at least
        30 s), or a third of the record TTL if that is sooner."""
        assert self.node is not None and self.run_info is not None
        spec = self.run_info.spec
        pointer = RunPointer(self.node, spec.run_id, self.run_info.bundle_cid, spec.num_clusters,
                             every=max(30.0, 3 * self.opts.period))
        while True:
            try:
                await pointer.refresh()
            except Exception:
                log.exception("re-announcing the run pointer failed; retrying")
            await asyncio.sleep(max(1.0, min(pointer.interval / 2, 30.0)))

    async def _gossip_stats_loop(self) -> None:
        """Keep the gossip worker's counters fresh for the metrics endpoint."""
        while True:
            with contextlib.suppress(Exception):  # a slow or restarting worker only delays the numbers
                self.metrics.gossip = (await self.gossip.stats()).model_dump()
            await asyncio.sleep(max(5.0, self.opts.period))

    def _make_verifier(self) -> Verifier:
        assert self.node is not None and self.run_info is not None and self.checker is not None
        spec, schedule = self.run_info.spec, self.run_info.manifest.schedule
        plan = VerifyPlan(verifier_secret(self.node.identity.private_key_der()),
                          wanted=max(schedule.attestations, 1) + MARGIN, replay_every=schedule.replay_every,
                          patience=3 * self.opts.period)
        return Verifier(self.node, self.checker, schedule, spec.run_id, spec.num_clusters, plan, self.own_records,
                        period=self.opts.period, lease_window=max(60.0, 6 * self.opts.period),
                        stopping=self.stopping,
                        training_data=self._training_data)

    async def _training_data(self, slot: str) -> tuple:
        """What a replay of `slot` trains on: the cluster's clips (no labels), or the router's sample."""
        from node.bundle import fetch_cluster_clips
        from node.role_router import router_training_data

        if slot == "router":
            return await router_training_data(self.store, self.run_info)
        return await fetch_cluster_clips(self.store, self.run_info, slot_cluster(slot)), None

    async def _verify_loop(self) -> None:
        """Check the checkpoints assigned to this node every period (or as soon as gossip announces one),
        beside whatever the lanes do: no role keeps a node from verifying (two `auto` nodes that both train
        still check each other, and a node training the router still checks the experts it waits for)."""
        assert self.node is not None and self.run_info is not None and self.verifier is not None
        spec = self.run_info.spec
        while not self.stopping.is_set():
            self._verify_wake.clear()
            try:
                view = await read_run(self.node, spec.run_id, spec.num_clusters, rules=self.rules,
                                      local=self.checker.verdicts)
                await self.unless_stopped(self.verifier.round(view))
            except (ParisError, OSError) as e:
                log.warning("verification round incomplete: %s", e)
            except Exception:  # what a peer serves must never end the node: log it and go on next period
                log.exception("verification round failed; retrying next period")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._verify_wake.wait(), self.opts.period)

    async def _progress_loop(self) -> None:
        """While training: our progress record in the DHT and a gossip event, every period."""
        assert self.node is not None and self.run_info is not None
        run_id = self.run_info.spec.run_id
        last_log = 0.0
        while True:
            await asyncio.sleep(self.opts.period)
            say = time.monotonic() - last_log >= 30
            for lane in self.lanes:
                driver, slot = lane.driver, lane.current_slot
                if driver is None or driver.latest is None or slot is None:
                    continue
                await self._publish_progress(run_id, lane, driver, slot, say)
            if say:
                last_log = time.monotonic()

    async def _publish_progress(self, run_id: str, lane: Lane, driver: TrainingDriver, slot: str, say: bool) -> None:
        p = driver.latest
        assert p is not None
        cluster = None if slot == "router" else int(slot.split("-")[1])
        cid = self.publisher.published.get(slot, (None, 0))[0]
        loss = None if p.loss_ema is None or not np.isfinite(p.loss_ema) else float(p.loss_ema)
        sps = float(p.samples_per_s) if np.isfinite(p.samples_per_s) else None
        body = ProgressBody(cluster=cluster, step=p.step, target=driver.target, loss=loss, samples_per_s=sps,
                            checkpoint_cid=cid, started_at=driver.started, ts=get_dht_time(), lane=lane.index or None)
        try:
            await publish_progress(self.node, run_id, body, ttl=max(120.0, 4 * self.opts.period))
            if self.gossip is not None:
                await self.gossip.publish(ProgressEvent(run_id=run_id, cluster=cluster, step=p.step,
                                                        target=driver.target, loss=loss, samples_per_s=sps))
        except Exception:
            log.exception("progress publication failed; retrying next period")
        if say:
            event(log, f"{slot} step {p.step}/{driver.target}", loss=None if loss is None else round(loss, 4),
                  samples_per_s=None if sps is None else round(sps, 1))

    # ---- roles ------------------------------------------------------------------------------------------------

    async def _role_loop(self) -> None:
        role = self.opts.role
        if not self.rules.may_train(self.node.peer_id):
            if role in ("expert", "router"):
                raise ParisError(f"--role {role}: this run is permissioned and {self.node.peer_id} is not on its "
                                 "trainer allowlist (verifiers and seeders are open to anyone: --role verifier)")
            if role == "auto":
                event(log, "this run is permissioned and this node is not on its trainer allowlist: verifying")
                role = "verifier"
        await asyncio.gather(*(lane.role_loop(role) for lane in self.lanes))

    async def unless_stopped(self, coro):
        """Await `coro`, or cancel it and return None as soon as a stop is requested."""
        task = asyncio.ensure_future(coro)
        stop = asyncio.ensure_future(self.stopping.wait())
        try:
            await asyncio.wait({task, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if task.done():
            return task.result()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        return None

    @property
    def rules(self) -> RunRules:
        assert self.run_info is not None
        return self.run_info.rules

    async def reach(self) -> VerifiedState:
        """Which clusters reached their target by the acceptance rule (with this node's own verdicts), and who
        is making progress on which: what the claim manager's snapshots are judged with."""
        assert self.node is not None and self.run_info is not None
        spec = self.run_info.spec
        view = (await read_run(self.node, spec.run_id, spec.num_clusters, rules=self.rules,
                               local=self.checker.verdicts)).decidable()
        self.note_members(view.members)
        self.publisher.settle(view)
        if self.verifier is not None:
            self.verifier.observe(view)
        return verified_state(view, self.checker.verdicts)

    def checkpoint_root(self, slot: str) -> Path:
        assert self.run_info is not None
        return self.home / "checkpoints" / self.run_info.spec.run_id / slot

    async def gossip_event(self, ev) -> None:
        if self.gossip is None:
            return
        try:
            await self.gossip.publish(ev)
        except Exception as e:  # gossip is a courtesy: the DHT records are the truth
            log.debug("gossip publish failed: %s", e)

    # ---- seeding and verifying -------------------------------------------------------------------------------

    async def seed_round(self, *, verify: bool) -> None:
        """Hold the run's data and every slot's newest accepted checkpoint, then wait a period (or a gossip
        nudge). Verifying happens in its own loop (`_verify_loop`), whatever the role; `verify` names the role."""
        assert self.node is not None and self.run_info is not None
        role = "verifier" if verify else "seeder"
        if self.role != role:
            self.set_role(role)
        spec = self.run_info.spec

        async def round_() -> None:
            await seed_data(self)
            view = await read_run(self.node, spec.run_id, spec.num_clusters, rules=self.rules,
                                  local=self.checker.verdicts)
            self._all_clusters_done_cached = all_done(view.states)
            if self.verifier is not None:
                self.verifier.observe(view)
            self.note_members(view.members)
            self.publisher.settle(view)
            await replicate_accepted(self, view)
            await archive_facts(self, view)

        # a stop cancels the round: DHT reads and fetches from peers that died can take many timeouts. A check
        # already running in a worker thread (validation loss, a replay) is not interrupted: the exit waits for it
        try:
            await self.unless_stopped(round_())
        except (ParisError, OSError) as e:
            log.warning("%s round incomplete: %s", role, e)
        except Exception:  # what a peer serves must never end the node: log it and go on next period
            log.exception("%s round failed; retrying next period", role)
        if self.stopping.is_set():
            return
        self._wake.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), self.opts.period)

    async def run_finished(self) -> bool:
        assert self.node is not None and self.run_info is not None
        spec = self.run_info.spec
        view = await read_run(self.node, spec.run_id, spec.num_clusters, rules=self.rules,
                              local=self.checker.verdicts)
        router = view.latest_checkpoint("router")
        return (not view.failed and all_done(view.states) and router is not None
                and router.step >= self.run_info.manifest.schedule.router_target_steps)


def network_config(*, initial_peers: list[str], host: str, port: int, announce_host: str | None,
                   nat_traversal: bool, use_relay: bool, client_mode: bool = False,
                   behind_nat: bool = False) -> NetworkConfig:
    """The DHT's listen/announce addresses from `--host/--port/--announce-host` (loopback by default)."""
    announce = (tcp_maddr(announce_host, port),) if announce_host else ()
    if announce_host and port == 0:
        raise ParisError("--announce-host needs a fixed --port (the announced address must be dialable)")
    return NetworkConfig(initial_peers=tuple(initial_peers), host_maddrs=(tcp_maddr(host, port),),
                         announce_maddrs=announce, nat_traversal=nat_traversal, use_relay=use_relay,
                         behind_nat=behind_nat, client_mode=client_mode)
