"""`paris-node doctor`: one line per check of what makes a node work (software, GPU, disk, ports, peers,
protocol, clock, gossip), each pass / warn / fail with what to do about it. The checks are small functions
over injectable probes, so every failure they name is testable without breaking the machine."""

from __future__ import annotations

import asyncio
import platform
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from protocol.errors import ParisError

Verdict = Literal["pass", "warn", "fail"]
DISK_WARN = 20 * 2**30  # a small preset's run fits in much less; a base one needs tens of GiB
DISK_FAIL = 2 * 2**30
CLOCK_WARN_S, CLOCK_FAIL_S = 10.0, 30.0  # a lease is 3 × 10 s periods by default
MEMBER_REFRESH_S = 30.0  # how often members re-announce (node.daemon._member_loop)


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


async def swarm_checks(peers: list[str], home: Path, run: str | None) -> list[Check]:
    """Dial the initial peers with a throwaway client identity; then the newest run's protocol and clocks."""
    from hivemind.utils.timed_storage import get_dht_time

    from node.bundle import resolve_run_id
    from protocol.swarm_records import MemberBody, run_key
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
        members = await node.get(run_key(run_id, "members"))
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
                     run: str | None, probes: Probes | None = None, with_gossip: bool = True) -> list[Check]:
    probes = probes or Probes()
    checks = [software(), gpu(gpu_device), disk(home, probes), *ports(host, port, gossip_port, probes)]
    checks += await swarm_checks(peers, home / "doctor-id", run)
    if with_gossip:
        checks.append(await gossip_check(home / "doctor-id"))
    return checks
