"""`paris-node doctor`: one line per check of what makes a node work (software, GPU, disk, ports, peers,
protocol, clock, reachability, gossip), each pass / warn / fail with what to do about it. The checks are small functions
over injectable probes, so every failure they name is testable without breaking the machine."""

from __future__ import annotations

import asyncio
import contextlib
import platform
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from protocol.errors import ParisError
from protocol.swarm_dialback import DialBackResponse, tcp_endpoint

Verdict = Literal["pass", "warn", "fail"]
DISK_WARN = 20 * 2**30  # a small preset's run fits in much less; a base one needs tens of GiB
DISK_FAIL = 2 * 2**30
CLOCK_WARN_S, CLOCK_FAIL_S = 10.0, 30.0  # a lease is 3 × 10 s periods by default
MEMBER_REFRESH_S = 30.0  # how often members re-announce (node.loops.member_loop)


class Check(BaseModel):
    name: str
    verdict: Verdict
    detail: str
    fix: str = ""


@dataclass
class Probes:
    """What the checks look at; tests replace any of them."""

    free_space: Callable[[Path], int] = lambda p: shutil.disk_usage(p).free
    can_bind: Callable[[str, int], str] = None  # type: ignore[assignment]  # "" if free, else the reason

    def __post_init__(self) -> None:
        if self.can_bind is None:
            self.can_bind = _can_bind


def _can_bind(host: str, port: int) -> str:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError as e:
            return e.strerror or str(e)
    return ""


def software() -> Check:
    import diffusers
    import hivemind
    import torch

    cuda = torch.version.cuda or "none"
    return Check(name="software", verdict="pass",
                 detail=f"Python {platform.python_version()}, torch {torch.__version__} (CUDA {cuda}), "
                        f"diffusers {diffusers.__version__}, hivemind {hivemind.__version__}")


def gpu(device: str) -> Check:
    import torch

    if device == "cpu":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return Check(name="gpu", verdict="pass", detail=f"training on the CPU ({n} CUDA device(s) visible)",
                     fix="" if not n else "join --gpu 0 trains on the first one")
    if not torch.cuda.is_available():
        return Check(name="gpu", verdict="fail", detail=f"--gpu {device}: no CUDA device is usable",
                     fix="install the CUDA build of torch and the NVIDIA driver, or use --gpu cpu")
    try:
        props = torch.cuda.get_device_properties(int(device))
    except (ValueError, RuntimeError, AssertionError) as e:
        return Check(name="gpu", verdict="fail", detail=f"--gpu {device}: {e}",
                     fix=f"choose one of 0..{torch.cuda.device_count() - 1}")
    return Check(name="gpu", verdict="pass", detail=f"cuda:{device} {props.name}, {props.total_memory / 2**30:.1f} GiB")


def disk(home: Path, probes: Probes) -> Check:
    where = home if home.exists() else next((p for p in home.parents if p.exists()), Path("/"))
    try:
        free = probes.free_space(where)
    except OSError as e:
        return Check(name="disk", verdict="fail", detail=f"cannot read free space of {where}: {e}")
    text = f"{free / 2**30:.1f} GiB free in {where}"
    if free < DISK_FAIL:
        return Check(name="disk", verdict="fail", detail=text,
                     fix="free space or give --home on a larger disk (downloads are refused when they cannot fit)")
    if free < DISK_WARN:
        return Check(name="disk", verdict="warn", detail=text, fix="enough for the CPU presets; base/large need more")
    return Check(name="disk", verdict="pass", detail=text)


def ports(host: str, port: int, gossip_port: int, probes: Probes) -> list[Check]:
    if port == 0:
        return [Check(name="port", verdict="pass", detail="--port 0: any free port (reachable on this host only "
                                                          "unless you give a fixed --port and open it)")]
    out = []
    for what, p, flag in (("port", port, "--port"), ("gossip port", gossip_port, "--gossip-port")):
        if not p:
            continue
        why = probes.can_bind(host, p)
        fix = f"stop what holds it (e.g. `ss -ltnp | grep {p}`) or choose another {flag}" if why else ""
        out.append(Check(name=what, verdict="fail" if why else "pass",
                         detail=f"{host}:{p} {'cannot be bound: ' + why if why else 'is free'}", fix=fix))
    return out


def clock(now: float, member_ts: list[float]) -> Check:
    from swarm.clock import clock_offset

    offset = clock_offset(now, [(ts, MEMBER_REFRESH_S) for ts in member_ts])
    if offset is None:
        return Check(name="clock", verdict="warn", detail="fewer than two peers to compare clocks with")
    side = "ahead of" if offset > 0 else "behind"
    text = f"about {abs(offset):.0f} s {side} the swarm (±{MEMBER_REFRESH_S / 2:.0f} s)"
    if abs(offset) > CLOCK_FAIL_S:
        return Check(name="clock", verdict="fail", detail=text, fix="enable NTP time sync (timedatectl set-ntp true)")
    if abs(offset) > CLOCK_WARN_S:
        return Check(name="clock", verdict="warn", detail=text, fix="enable NTP time sync (timedatectl set-ntp true)")
    return Check(name="clock", verdict="pass", detail=text)


def reachability_verdict(answers: list[DialBackResponse], *, port: int, announced: str | None, asked: int,
                         offered: tuple[str, ...] = ()) -> Check:
    """What the helpers' dial-back answers mean for a node that would listen on `port` and announce
    `announced` (None: `offered`, the addresses its p2p daemon sees)."""
    relay_fix = "or join with --behind-nat to be reached through the relays of peers that run --relay"
    yes = [a for a in answers if a.reachable]
    if yes:
        detail = f"{len(yes)} of {len(answers)} peer(s) opened a new connection to {yes[0].dialed[0]}"
        if port == 0:
            detail += " (an ephemeral port; a fixed --port, open in the firewall, keeps it so)"
        return Check(name="reachable", verdict="pass", detail=detail)
    no = [a for a in answers if a.reachable is False]
    if no:
        where = ", ".join(no[0].dialed)
        return Check(name="reachable", verdict="fail",
                     detail=f"peers cannot open a connection to {where}: {no[0].detail or 'refused'}",
                     fix=f"open / forward TCP port {port or '(a fixed --port)'} to this machine and announce the "
                         f"public IP (--host 0.0.0.0 --announce-host IP), {relay_fix}")
    seen = sorted({a.observed_ip for a in answers if a.observed_ip})
    if seen and announced is not None and announced not in seen:
        return Check(name="reachable", verdict="fail",
                     detail=f"you announce {announced}, but peers see you at {', '.join(seen)}",
                     fix=f"--announce-host {seen[0]} (if that address forwards --port to this machine), {relay_fix}")
    mine = sorted({end[0] for m in offered if (end := tcp_endpoint(m)) is not None})
    if seen and announced is None and not set(seen) & set(mine):
        return Check(name="reachable", verdict="fail",
                     detail=f"peers see you at {', '.join(seen)}, which is none of this machine's addresses "
                            f"({', '.join(mine) or 'none'}): you are behind NAT",
                     fix=f"forward TCP port {port or '(a fixed --port)'} from {seen[0]} to this machine and "
                         f"--announce-host {seen[0]}, {relay_fix}")
    if answers:
        return Check(name="reachable", verdict="warn", detail=f"no peer tried to dial back: {answers[0].detail}",
                     fix=f"peers see you at {', '.join(seen)}; announce that address" if seen else "")
    return Check(name="reachable", verdict="warn",
                 detail=f"none of {asked} peer(s) answered a dial-back request (plain hivemind nodes, or an older "
                        "paris-node, do not)", fix="give --initial-peers of a running paris-node")


async def reachability(node, peers: list[str], *, host: str, port: int, announce_host: str | None) -> Check:
    """Listen where `join` would (a fresh identity that never dials out) and ask up to three peers to open a
    connection to the announced address (swarm.dialback)."""
    from hivemind.p2p import P2P

    from swarm.dht import tcp_maddr
    from swarm.dialback import request_dialback

    listen = tcp_maddr(host, port)
    announced = tcp_maddr(announce_host, port) if announce_host and port else None
    try:
        listener = await P2P.create(host_maddrs=[listen], announce_maddrs=[announced] if announced else None,
                                    nat_port_map=False, auto_nat=False, use_relay=False)  # no UPnP unasked
    except Exception as e:
        return Check(name="reachable", verdict="fail", detail=f"cannot listen on {listen}: {e}",
                     fix="check --host / --port")
    try:
        maddrs = [announced] if announced else [str(m) for m in await listener.get_visible_maddrs()]
        helpers = [m.rsplit("/p2p/", 1)[1] for m in peers if "/p2p/" in m]
        with contextlib.suppress(Exception):
            helpers += await node.routing_peers()
        helpers = list(dict.fromkeys(h for h in helpers if h != node.peer_id))[:3]
        p2p = await node.dht.replicate_p2p()
        results = await asyncio.gather(*(request_dialback(p2p, h, listener.peer_id.to_base58(), maddrs)
                                         for h in helpers), return_exceptions=True)
        answers = [r for r in results if isinstance(r, DialBackResponse)]
        return reachability_verdict(answers, port=port, announced=announce_host if announced else None,
                                    asked=len(helpers), offered=tuple(maddrs))
    finally:
        await listener.shutdown()


async def swarm_checks(peers: list[str], home: Path, run: str | None, *, host: str = "127.0.0.1", port: int = 0,
                       announce_host: str | None = None, dial_back: bool = True) -> list[Check]:
    """Dial the initial peers with a throwaway client identity; whether they can dial us back; then the newest
    run's protocol and clocks."""
    from hivemind.utils.timed_storage import get_dht_time

    from node.bundle import resolve_run_id
    from protocol.swarm_records import MemberBody
    from swarm.dht import NetworkConfig, ProtocolMismatchError, SwarmNode

    if not peers:
        return [Check(name="peers", verdict="warn", detail="no --initial-peers: swarm checks skipped",
                      fix="give --initial-peers (or --initial-peers-file) of a node in the swarm")]
    try:
        node = await asyncio.to_thread(SwarmNode.start, home, NetworkConfig(initial_peers=tuple(peers),
                                                                            client_mode=True))
    except ParisError as e:
        return [Check(name="peers", verdict="fail", detail=str(e),
                      fix="check the addresses, that those nodes run, and that their ports are reachable from here")]
    out = [Check(name="peers", verdict="pass", detail=f"reached the swarm through {len(peers)} initial peer(s)")]
    try:
        if dial_back:
            out.append(await reachability(node, peers, host=host, port=port, announce_host=announce_host))
        else:
            out.append(Check(name="reachable", verdict="warn", detail="not checked: the port cannot be bound"))
        try:
            run_id = await resolve_run_id(node, run)
        except ParisError as e:
            return [*out, Check(name="run", verdict="warn", detail=str(e))]
        try:
            foreign = await node.check_protocol(run_id)
            out.append(Check(name="protocol", verdict="warn" if foreign else "pass",
                             detail=f"run {run_id}: " + (f"{len(foreign)} peer(s) speak another protocol version"
                                                         if foreign else "every member speaks ours")))
        except ProtocolMismatchError as e:
            out.append(Check(name="protocol", verdict="fail", detail=str(e), fix="install a matching paris-node"))
        members = await node.read_members(run_id)  # check_protocol read every bucket: this adds what is due
        out.append(clock(get_dht_time(), [r.body.ts for r in members.records if isinstance(r.body, MemberBody)]))
    finally:
        await asyncio.to_thread(node.shutdown)
    return out


async def gossip_check(home: Path) -> Check:
    """Start the gossip worker once (a separate process: libp2p) and stop it."""
    from swarm.gossip import GossipClient
    from swarm.identity import load_identity

    client = GossipClient(load_identity(home), "doctor")
    try:
        await client.start(timeout=60)
        return Check(name="gossip", verdict="pass", detail=f"the gossip process starts ({client.peer_id})")
    except ParisError as e:
        return Check(name="gossip", verdict="fail", detail=str(e), fix="see its stderr above; reinstall paris-node")
    finally:
        await client.close()


async def run_checks(*, home: Path, gpu_device: str, host: str, port: int, gossip_port: int, peers: list[str],
                     run: str | None, announce_host: str | None = None, probes: Probes | None = None,
                     with_gossip: bool = True) -> list[Check]:
    probes = probes or Probes()
    port_checks = ports(host, port, gossip_port, probes)
    checks = [software(), gpu(gpu_device), disk(home, probes), *port_checks]
    bound = all(c.verdict == "pass" for c in port_checks if c.name == "port")
    checks += await swarm_checks(peers, home / "doctor-id", run, host=host, port=port, announce_host=announce_host,
                                 dial_back=bound)
    if with_gossip:
        checks.append(await gossip_check(home / "doctor-id"))
    return checks
