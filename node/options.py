"""What `join` asks a daemon to do, as one validated object (`DaemonOptions`): built once from the flags, the
`PARIS_*` environment and `HOME/config.toml` (node.config resolves where each value comes from), printed by
`join --print-config`, and the only configuration any part of the daemon reads."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from expert.efficiency import Efficiency
from expert.presets import DEMO_STEPS
from protocol.errors import ParisError
from protocol.swarm_records import MAX_RECORD_TTL
from protocol.swarm_run import Schedule
from swarm.dht import RECORD_TTL, NetworkConfig, tcp_maddr

Role = Literal["auto", "expert", "router", "seeder", "verifier"]
ROLES: tuple[str, ...] = Role.__args__  # type: ignore[attr-defined]


class DemoOptions(BaseModel):
    """The built-in synthetic run a node starts when it joins nobody and names no run file."""

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
    duty_cycle: float = Field(default=1.0, gt=0, le=1)  # the share of the time training may take (node.driver)
    efficiency: Efficiency = Efficiency()  # torch.compile, gradient checkpointing (this node's own choice)
    trainers: tuple[str, ...] | None = None  # new swarm: a permissioned run's trainer allowlist (peer ids)
    metrics_port: int | None = Field(default=None, ge=0, le=65535)  # Prometheus endpoint (None: off, 0: any)
    metrics_host: str = "127.0.0.1"
    tensorboard: Path | None = None  # training and validation loss per slot as TensorBoard event files

    @property
    def creates_run(self) -> bool:
        """Whether this node publishes the run: a new swarm (no peers), or `--run FILE` into an existing one."""
        return not self.network.initial_peers or (
            self.run is not None and (Path(self.run).suffix == ".json" or Path(self.run).is_file()))


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
