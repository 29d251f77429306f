"""The swarm commands of `paris-node`: join (the daemon), status (the dashboard), fetch (the ensemble)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from node.cli_options import DEMO_STEPS, CheckpointingOpt, CompileOpt, RouterModeOpt
from node.console import console, fail, out, progress
from protocol.errors import ParisError

PeersOpt = Annotated[list[str] | None, typer.Option(
    "--initial-peers", help="Multiaddr of a peer already in the swarm (repeat for several).")]
PeersFileOpt = Annotated[Path | None, typer.Option(
    "--initial-peers-file", help="A node.json (or home folder) of a running node: dial its addresses.")]
RunOpt = Annotated[str | None, typer.Option("--run", help="Run id to join/watch (default: the swarm's newest run).")]


def _peers(initial_peers: list[str] | None, peers_file: Path | None, *, wait: float = 120.0) -> list[str]:
    from node.nodefile import peers_from_file

    peers = list(initial_peers or [])
    if peers_file is not None:
        peers += peers_from_file(peers_file, timeout=wait)
    for p in peers:
        if not p.startswith("/") or "/p2p/" not in p:
            raise ParisError(f"--initial-peers {p!r}: expected a full multiaddr like /ip4/1.2.3.4/tcp/31337/p2p/Qm…")
    return peers


def _client_node(peers: list[str], home: Path):
    """A client-mode DHT node (dials out, serves nothing) with a throwaway identity."""
    from swarm.dht import NetworkConfig, SwarmNode

    if not peers:
        fail("give --initial-peers (or --initial-peers-file): status and fetch watch an existing swarm")
    return SwarmNode.start(home, NetworkConfig(initial_peers=tuple(peers), client_mode=True))


def _print_config(values: dict, origin: dict, path: Path) -> None:
    """`join --print-config`: one line per option and where it came from, then the options the daemon would run
    on (or why it would refuse them); a JSON object with --log-format json."""
    from node.join_config import JoinConfig

    shown = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
             for k, v in sorted(values.items()) if k != "print_config"}
    try:
        cfg = JoinConfig.of(values)
        peers = list(cfg.initial_peers)
        with contextlib.suppress(ParisError):  # a node.json that is not there yet: the flags' peers alone
            peers = _peers(peers, cfg.initial_peers_file, wait=0.0)
        daemon, refused = json.loads(cfg.daemon_options(peers).model_dump_json()), None
    except ParisError as e:
        daemon, refused = None, str(e)
    if values.get("log_format") == "json":
        out.print_json(json.dumps({"config_file": str(path), "options": {
            k: {"value": v, "from": origin[k]} for k, v in shown.items()}, "daemon": daemon, "refused": refused}))
        return
    out.print(f"# config file: {path}{'' if path.is_file() else ' (none)'}", highlight=False)
    for k, val in shown.items():
        out.print(f"{k.replace('_', '-'):22} {json.dumps(val):40} # {origin[k]}", highlight=False)
    if refused:
        out.print(f"# the daemon would refuse these options: {refused}", highlight=False)
    else:
        out.print("# the daemon runs on:", highlight=False)
        out.print_json(json.dumps(daemon))


def _check_devices(gpu: str, ddp: bool) -> None:
    """A bad --gpu (or --ddp over one device) is said at once, before the daemon imports the model stack."""
    from expert.device import resolve_device, resolve_devices  # torch alone
    from protocol.swarm_records import MAX_LANES

    several = "," in gpu or gpu.strip().lower() == "all"
    devices = resolve_devices(gpu) if several else [resolve_device(gpu)]
    if ddp:
        if len(devices) < 2:
            fail(f"--ddp needs two or more devices in --gpu (got {gpu!r}: e.g. --gpu 0,1, all or cpu,cpu)")
    elif len(devices) > MAX_LANES:
        fail(f"--gpu {gpu}: {len(devices)} devices, a node trains on at most {MAX_LANES} at once")


def register(app: typer.Typer) -> None:
    @app.command("join")
    def join(
        ctx: typer.Context,
        gpu: Annotated[str, typer.Option("--gpu", help="CUDA device index, or 'cpu'; several (0,1 / all / cpu,cpu): "
                                         "one lease and one expert per device.")] = "cpu",
        ddp: Annotated[bool, typer.Option("--ddp", help=(
            "Instead of one expert per device: one expert on all the --gpu devices at once "
            "(DistributedDataParallel, one process per device, the batch split)."))] = False,
        initial_peers: PeersOpt = None,
        initial_peers_file: PeersFileOpt = None,
        run: Annotated[str | None, typer.Option(
            "--run", help="Joining: the run id (default: the swarm's newest). Starting a swarm: a run spec file "
                          "from `run init` (default: the built-in demo run).")] = None,
        role: Annotated[str, typer.Option(help="auto | expert | router | verifier | seeder.")] = "auto",
        home: Annotated[Path, typer.Option(help="Identity, content store, checkpoints.")] = Path("~/.paris"),
        host: Annotated[str, typer.Option(help="Listen address (0.0.0.0 to accept other machines).")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="Listen port (0: any free port).")] = 0,
        gossip_port: Annotated[int | None, typer.Option(min=0, max=65535, help=(
            "The gossip process's port (default: --port + 1 when --port is set, else any free port); "
            "--announce-host applies to it too."))] = None,
        announce_host: Annotated[str | None, typer.Option(help="Public address others dial (needs --port).")] = None,
        nat: Annotated[bool, typer.Option("--nat", help="UPnP/NAT-PMP port mapping and AutoNAT.")] = False,
        relay: Annotated[bool, typer.Option("--relay", help=(
            "Dial through circuit relays and serve as one (a public node that lets NATed peers in)."))] = False,
        behind_nat: Annotated[bool, typer.Option("--behind-nat", help=(
            "This machine cannot be dialed (NAT, no port forwarding): be reached through the relays of the "
            "initial peers (they need --relay)."))] = False,
        data: Annotated[Path | None, typer.Option(help="With --run FILE: where its data is.")] = None,
        clusters: Annotated[int, typer.Option(min=1, max=64, help="Demo run: clusters K.")] = 3,
        preset: Annotated[str, typer.Option(help="Demo run: model preset.")] = "small",
        target_steps: Annotated[int, typer.Option(min=1, help="Demo run: steps per expert.")] = DEMO_STEPS,
        clips: Annotated[int, typer.Option(min=8, help="Demo run: synthetic clips.")] = 2000,
        router_steps: Annotated[int, typer.Option(min=1, help="New swarm: the router's target steps.")] = 500,
        checkpoint_every: Annotated[int | None, typer.Option(min=1, help=(
            "New swarm: publish every N steps (default: the preset's, 100 for tiny/small, 2000 for "
            "base/large)…"))] = None,
        checkpoint_minutes: Annotated[float, typer.Option(min=0.05, help="…or every M minutes.")] = 10.0,
        attestations: Annotated[int, typer.Option(min=0, max=64, help=(
            "New swarm: verifiers (other than its trainer) that must accept a checkpoint before it counts; "
            "0 for a private swarm."))] = 1,
        replay_every: Annotated[int, typer.Option(min=0, help=(
            "New swarm: verifiers re-train one checkpoint interval in N (0: never; 1: every verifier that "
            "checks an interval replays it)."))] = 10,
        progress_intervals: Annotated[int, typer.Option(min=1, help=(
            "New swarm: an owner that publishes no unrejected checkpoint for N checkpoint intervals "
            "(--checkpoint-minutes each) loses its cluster to the next joiner."))] = 3,
        allow_trainer: Annotated[list[str] | None, typer.Option("--allow-trainer", help=(
            "New swarm: a permissioned run; only these peer ids may train (repeat the option). Verifiers and "
            "seeders stay open to anyone."))] = None,
        loss_tolerance: Annotated[float, typer.Option(min=0, help=(
            "New swarm: how much worse (relative) than its parent's a checkpoint's validation loss may be."))] = 0.1,
        period: Annotated[float, typer.Option(min=0.5, help="Seconds between lease renewals.")] = 10.0,
        record_days: Annotated[float, typer.Option(min=1e-4, max=30, help=(
            "Lifetime of this node's long-lived records (run pointer, DONE, checkpoints, attestations) in "
            "days; seeders keep them alive past it."))] = 14.0,
        no_gossip: Annotated[bool, typer.Option("--no-gossip", help="Do not start the gossip process.")] = False,
        cache_gb: Annotated[float, typer.Option(min=0, help="Content store size limit (0: none).")] = 50.0,
        stop_when_done: Annotated[bool, typer.Option(
            "--stop-when-done", help="Exit once every expert and the router reached their targets.")] = False,
        cpu_threads: Annotated[int | None, typer.Option(min=1, help="CPU threads for training (default: all).")]
        = None,
        duty_cycle: Annotated[float, typer.Option(min=0.01, max=1.0, help=(
            "The share of the time training may take: after each step the node rests (1 - D) / D of that "
            "step's time, so that a machine someone uses stays usable (verification and serving go on)."))] = 1.0,
        compile: CompileOpt = False,  # named so: the option, PARIS_COMPILE and config.toml's `compile`
        grad_checkpointing: CheckpointingOpt = "auto",
        metrics_port: Annotated[int | None, typer.Option(min=0, max=65535, help=(
            "Serve Prometheus metrics on this port (0: any free port, written to node.json)."))] = None,
        metrics_host: Annotated[str, typer.Option(help="Address the metrics endpoint listens on.")] = "127.0.0.1",
        tensorboard: Annotated[Path | None, typer.Option(help=(
            "Write each slot's training and validation loss here as TensorBoard event files."))] = None,
        log_format: Annotated[str, typer.Option(help="text | json.")] = "text",
        log_level: Annotated[str, typer.Option(help="debug | info | warning | error.")] = "info",
        print_config: Annotated[bool, typer.Option(
            "--print-config", help="Print every option's value and where it came from (flag, PARIS_* "
                                   "environment variable, HOME/config.toml, default), then exit.")] = False,
    ) -> None:
        """Run the daemon: start a swarm (no --initial-peers) or join one, take a role, train, publish.

        Every option can also come from a PARIS_<OPTION> environment variable (PARIS_PORT, PARIS_INITIAL_PEERS
        as a comma-separated list, …) or from HOME/config.toml (a [join] table: port = 31337); a flag beats
        the environment, which beats the file."""
        from node import config
        from node.join_config import JoinConfig
        from node.logs import LOG_LEVELS, setup_logging

        v, origin, config_path = config.load(ctx)
        if print_config:
            _print_config(v, origin, config_path)
            return
        cfg = JoinConfig.of(v)  # a ParisError: one line (node.cli.main)
        setup_logging(cfg.log_format, LOG_LEVELS[cfg.log_level])
        peers = _peers(list(cfg.initial_peers), cfg.initial_peers_file)
        opts = cfg.daemon_options(peers)
        _check_devices(cfg.gpu, cfg.ddp)
        # after the checks above: the daemon imports the whole model stack (about ten seconds on a CPU)
        from node.daemon import Daemon

        raise SystemExit(asyncio.run(Daemon(opts).run()))

    @app.command("doctor")
    def doctor(
        initial_peers: PeersOpt = None,
        initial_peers_file: PeersFileOpt = None,
        run: RunOpt = None,
        home: Annotated[Path, typer.Option(help="The node's home (free disk is checked there).")] = Path("~/.paris"),
        gpu: Annotated[str, typer.Option("--gpu", help="The device `join` would use.")] = "cpu",
        host: Annotated[str, typer.Option(help="The listen address `join` would use.")] = "127.0.0.1",
        port: Annotated[int, typer.Option(min=0, max=65535, help="The port `join` would use.")] = 0,
        gossip_port: Annotated[int | None, typer.Option(min=0, max=65535, help="Default: --port + 1.")] = None,
        announce_host: Annotated[str | None, typer.Option(help="The public address `join` would announce.")] = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print the checks as JSON.")] = False,
    ) -> None:
        """Check what a node needs: software, GPU, disk, ports, peers (and whether they can dial us back),
        protocol, clock, gossip. Exit 1 if any check fails."""
        from node.doctor import run_checks

        peers = _peers(initial_peers, initial_peers_file, wait=0.0) if (initial_peers or initial_peers_file) else []
        gport = gossip_port if gossip_port is not None else (port + 1 if 0 < port < 65535 else 0)
        home = home.expanduser()
        home.mkdir(parents=True, exist_ok=True)
        checks = asyncio.run(run_checks(home=home, gpu_device=gpu, host=host, port=port, gossip_port=gport,
                                        peers=peers, run=run, announce_host=announce_host))
        if json_out:
            out.print_json(json.dumps({"ok": all(c.verdict != "fail" for c in checks),
                                       "checks": [c.model_dump() for c in checks]}))
        else:
            style = {"pass": "green", "warn": "yellow", "fail": "bold red"}
            for c in checks:
                out.print(f"[{style[c.verdict]}]{c.verdict:4}[/] {c.name:12} {c.detail}"
                          + (f"  [dim]→ {c.fix}[/]" if c.fix and c.verdict != "pass" else ""), highlight=False)
        if any(c.verdict == "fail" for c in checks):
            raise SystemExit(1)

    @app.command("status")
    def status(
        initial_peers: PeersOpt = None,
        initial_peers_file: PeersFileOpt = None,
        run: RunOpt = None,
        once: Annotated[bool, typer.Option("--once", help="Draw one frame and exit.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print the state as JSON and exit.")] = False,
        watch: Annotated[bool, typer.Option("--watch", help=(
            "With --json: one JSON object per line every --interval seconds, until interrupted (a script that "
            "follows a run keeps one DHT client instead of starting one per look)."))] = False,
        interval: Annotated[float, typer.Option(min=0.5, help="Seconds between refreshes.")] = 2.0,
        no_gossip: Annotated[bool, typer.Option("--no-gossip", help="No live event feed.")] = False,
    ) -> None:
        """A live dashboard of a swarm, from any machine that knows one peer (client mode, holds no data)."""
        if watch and not json_out:
            fail("--watch streams JSON: give --json too (the dashboard itself refreshes every --interval)")
        peers = _peers(initial_peers, initial_peers_file)
        with tempfile.TemporaryDirectory(prefix="paris-status-") as tmp:
            asyncio.run(_status(peers, Path(tmp), run, once=(once or json_out) and not watch, json_out=json_out,
                                interval=interval, gossip=not (no_gossip or once or json_out)))

    @app.command("fetch")
    def fetch(
        out_dir: Annotated[Path, typer.Option("--out", help="Ensemble folder to write.")],
        initial_peers: PeersOpt = None,
        initial_peers_file: PeersFileOpt = None,
        run: RunOpt = None,
        allow_partial: Annotated[bool, typer.Option("--allow-partial", help="Assemble the experts that exist.")]
        = False,
        router_mode: RouterModeOpt = None,
        replay_disputed: Annotated[int, typer.Option(
            "--replay-disputed", min=0,
            help="Contested checkpoints to replay here (a failed replay that another verifier's replay "
                 "contradicts): each costs one interval of training; 0 takes the older ones.")] = 2,
        gpu: Annotated[str, typer.Option("--gpu", help="Device that checks and replays: a CUDA index, or 'cpu'.")]
        = "cpu",
        json_out: Annotated[bool, typer.Option("--json", help="Print the swarm manifest as JSON.")] = False,
    ) -> None:
        """Download, verify and assemble the newest ensemble (every expert + the router) as a diffusers folder."""
        peers = _peers(initial_peers, initial_peers_file)
        with tempfile.TemporaryDirectory(prefix="paris-fetch-") as tmp:
            manifest = asyncio.run(_fetch(peers, Path(tmp), run, out_dir, allow_partial, router_mode,
                                          replay_disputed=replay_disputed, gpu=gpu))
        if json_out:
            out.print_json(json.dumps(manifest))
            return
        for d in manifest["disputes"]:
            out.print(f"replayed the contested {d['slot']} checkpoint of step {d['step']} here: {d['outcome']}"
                      + (f" ({d['reason']})" if d["reason"] else ""), highlight=False)
        if manifest["disputes_unsettled"]:
            out.print(f"contested checkpoints of {', '.join(manifest['disputes_unsettled'])} were left unsettled: "
                      "older ones were assembled (raise --replay-disputed to replay them)", highlight=False)
        missing = f"; missing experts {manifest['missing']}" if manifest["missing"] else ""
        out.print(f"wrote the ensemble of {len(manifest['clusters'])} experts + router (step "
                  f"{manifest['router']['step']}) of run {manifest['run_id']} to {out_dir}{missing}", highlight=False)


async def _status(peers: list[str], home: Path, run: str | None, *, once: bool, json_out: bool, interval: float,
                  gossip: bool) -> None:
    from rich.live import Live

    from node.bundle import fetch_run, resolve_run_id
    from node.dashboard import render
    from node.swarm_view import EventRow, LossHistory, gather_status
    from swarm.cas import ContentStore

    logging.getLogger("hivemind").setLevel(logging.WARNING)  # its INFO lines would tear the live screen
    node = await asyncio.to_thread(_client_node, peers, home / "id")
    history = LossHistory()
    store = ContentStore(node, home / "store")
    client = None
    events: list[EventRow] = []
    try:
        await store.start()
        run_id = await resolve_run_id(node, run)
        local = None

        async def bundle():  # the dashboard works from DHT records alone while the bundle is slow to come
            nonlocal local
            if local is None:
                with contextlib.suppress(Exception):
                    local = await asyncio.wait_for(fetch_run(node, store, run_id, timeout=10), 30)
            return (None, None, None) if local is None else (local.spec, local.manifest.schedule,
                                                              local.manifest.trainers)

        spec, schedule, trainers = await bundle()
        if gossip:
            client = await _watch_gossip(node, run_id, events)
        st = history.apply(await gather_status(node, run_id, spec=spec, schedule=schedule, events=events,
                                               store=store, trainers=trainers))
        if json_out and once:
            out.print_json(st.model_dump_json())
            return
        if json_out:  # --watch: JSON lines until interrupted; a frame that fails says why and the next one retries
            print(st.model_dump_json(), flush=True)
            while True:
                await asyncio.sleep(interval)
                try:
                    spec, schedule, trainers = await bundle()
                    st = history.apply(await gather_status(node, run_id, spec=spec, schedule=schedule,
                                                           events=events, store=store, trainers=trainers))
                except ParisError as e:
                    print(json.dumps({"error": str(e)}), flush=True)
                    continue
                print(st.model_dump_json(), flush=True)
        if once:
            out.print(render(st))
            return
        with Live(render(st), console=out, refresh_per_second=4, screen=False) as live:
            while True:
                await asyncio.sleep(interval)
                st = history.apply(await gather_status(node, run_id, spec=spec, schedule=schedule, events=events,
                                                       store=store, trainers=trainers))
                live.update(render(st))
    finally:
        if client is not None:
            await client.close()
        await store.close()
        await asyncio.to_thread(node.shutdown)


def _round(value):
    """Event-feed numbers at a readable precision (a loss of 0.2468, not 0.24683912…)."""
    return f"{value:.4g}" if isinstance(value, float) else value


async def _watch_gossip(node, run_id: str, events: list):
    """Join the run's gossip as an observer; received events are appended (bounded) to `events`."""
    from node.swarm_view import EventRow
    from protocol.errors import ParisError
    from swarm.gossip import GossipClient, join_gossip

    def on_message(msg) -> None:
        ev = msg.event
        detail = " ".join(f"{k}={_round(v)}" for k, v in ev.model_dump(exclude={"type", "run_id"}).items()
                          if v is not None)
        events.append(EventRow(ts=msg.ts, sender=msg.sender, type=ev.type, detail=detail))
        del events[:-50]

    client = GossipClient(node.identity, run_id, on_message=on_message)
    try:
        await client.start()
        await join_gossip(node, client, role="observer")
    except ParisError as e:
        console.print(f"[yellow]no live event feed: {e}[/]")
        await client.close()
        return None
    return client


async def _fetch(peers: list[str], home: Path, run: str | None, out_dir: Path, allow_partial: bool,
                 router_mode: str | None = None, *, replay_disputed: int = 2, gpu: str = "cpu") -> dict:
    from rich.progress import DownloadColumn

    from expert.device import resolve_device
    from node.bundle import fetch_run, resolve_run_id
    from node.fetch import fetch_ensemble
    from swarm.cas import ContentStore

    node = await asyncio.to_thread(_client_node, peers, home / "id")
    store = ContentStore(node, home / "store")
    try:
        await store.start()
        run_id = await resolve_run_id(node, run)
        local = await fetch_run(node, store, run_id)
        with progress(DownloadColumn()) as bar:
            tasks: dict[str, int] = {}

            def on_progress(slot: str, body, done: int, total: int) -> None:
                key = f"{slot}@{body.cid}"
                if key not in tasks:
                    tasks[key] = bar.add_task(f"{slot} step {body.step}", total=max(total, 1))
                bar.update(tasks[key], completed=done, total=max(total, 1))

            t0 = time.monotonic()
            manifest = await fetch_ensemble(node, store, local, out_dir, allow_partial=allow_partial,
                                            on_progress=on_progress, router_mode=router_mode,
                                            replay_disputed=replay_disputed, device=resolve_device(gpu))
        console.print(f"fetched and verified in {time.monotonic() - t0:.1f}s", highlight=False)
        return manifest
    finally:
        await store.close()
        await asyncio.to_thread(node.shutdown)
