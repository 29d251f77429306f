"""`join`'s options as one validated object, from flag to daemon: node.config resolves each value (flag,
`PARIS_*` environment, `HOME/config.toml`, default) into a dict, `JoinConfig` validates it once (pydantic: one
field per option, every cross-option rule a validator), and `daemon_options` turns it into the DaemonOptions the
daemon runs on. `join --print-config` prints both. Pure: no I/O, no torch."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from expert.efficiency import Efficiency
from node.options import DaemonOptions, DemoOptions, Role, network_config
from protocol.errors import ParisError
from protocol.swarm_records import _PEER_ID
from protocol.swarm_run import Schedule

LogFormat = Literal["text", "json"]
LogLevel = Literal["debug", "info", "warning", "error"]


class JoinConfig(BaseModel):
    """Every `join` option by its parameter name (ranges are checked by each option's own type first)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    home: Path
    gpu: str
    ddp: bool
    initial_peers: tuple[str, ...]
    initial_peers_file: Path | None
    run: str | None
    role: Role
    host: str
    port: int
    gossip_port: int | None
    announce_host: str | None
    nat: bool
    relay: bool
    behind_nat: bool
    data: Path | None
    clusters: int
    preset: str
    target_steps: int
    clips: int
    router_steps: int
    checkpoint_every: int | None
    checkpoint_minutes: float
    attestations: int
    replay_every: int
    progress_intervals: int
    allow_trainer: tuple[str, ...]
    loss_tolerance: float
    period: float
    record_days: float
    no_gossip: bool
    cache_gb: float
    stop_when_done: bool
    cpu_threads: int | None
    duty_cycle: float
    compile: bool
    grad_checkpointing: str
    metrics_port: int | None
    metrics_host: str
    tensorboard: Path | None
    log_format: LogFormat
    log_level: LogLevel

    @field_validator("initial_peers", "allow_trainer", mode="before")
    @classmethod
    def _list(cls, v):
        return tuple(v or ())

    @field_validator("preset")
    @classmethod
    def _demo_preset(cls, v: str) -> str:
        from expert.presets import LATENT_PRESETS, PRESETS

        if v not in PRESETS:
            raise ValueError(f"expected one of {', '.join(PRESETS)}")
        if v in LATENT_PRESETS:
            raise ValueError("trains through a VAE, which the demo run lacks: use `run init --vae DIR`, "
                             "then `join --run FILE`")
        return v

    @field_validator("allow_trainer")
    @classmethod
    def _peer_ids(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for peer_id in v:
            if not re.match(_PEER_ID, peer_id):
                raise ValueError(f"{peer_id!r} is not a peer id (like Qm…: see `node.json` of that node)")
        return v

    @model_validator(mode="after")
    def _gossip_port(self) -> JoinConfig:
        if self.announce_host and not self.effective_gossip_port and not self.no_gossip:
            raise ValueError("--announce-host needs a fixed gossip port too: give --port (gossip then uses --port + 1) "
                             "or --gossip-port")
        return self

    @property
    def effective_gossip_port(self) -> int:
        """--gossip-port, else --port + 1 when --port is set, else any free port (0)."""
        if self.gossip_port is not None:
            return self.gossip_port
        return self.port + 1 if 0 < self.port < 65535 else 0

    @classmethod
    def of(cls, values: dict) -> JoinConfig:
        """Validate resolved option values; the first problem is a one-line error naming its option."""
        try:
            return cls.model_validate({k: v for k, v in values.items() if k != "print_config"})
        except ValidationError as e:
            err = e.errors()[0]
            msg = err["msg"].removeprefix("Value error, ")
            if not err["loc"]:  # a rule across options names them itself
                raise ParisError(msg) from None
            where = "--" + str(err["loc"][0]).replace("_", "-")
            said = f" {err['input']!r}" if isinstance(err.get("input"), str) else ""
            raise ParisError(f"{where}{said}: {msg}") from None

    def daemon_options(self, peers: list[str]) -> DaemonOptions:
        """The daemon's options, with `peers` the initial peers read from flags and the peers file."""
        if self.behind_nat and not peers:
            raise ParisError("--behind-nat needs --initial-peers (or --initial-peers-file): their relays carry the "
                             "connections")
        return DaemonOptions(
            home=self.home.expanduser(), gpu=self.gpu, ddp=self.ddp, role=self.role, run=self.run, data=self.data,
            network=network_config(initial_peers=peers, host=self.host, port=self.port,
                                   announce_host=self.announce_host, nat_traversal=self.nat, use_relay=self.relay,
                                   behind_nat=self.behind_nat),
            demo=DemoOptions(clusters=self.clusters, preset=self.preset, target_steps=self.target_steps,
                             clips=self.clips),
            checkpoint_every_from_preset=self.checkpoint_every is None,
            schedule=Schedule(checkpoint_every=self.checkpoint_every or Schedule().checkpoint_every,
                              checkpoint_minutes=self.checkpoint_minutes, router_target_steps=self.router_steps,
                              attestations=self.attestations, replay_every=self.replay_every,
                              loss_tolerance=self.loss_tolerance, progress_intervals=self.progress_intervals),
            period=self.period, record_ttl=self.record_days * 86400.0, gossip=not self.no_gossip,
            gossip_host=self.host, gossip_port=self.effective_gossip_port, gossip_announce=self.announce_host,
            cache_bytes=int(self.cache_gb * 2**30), stop_when_done=self.stop_when_done, cpu_threads=self.cpu_threads,
            duty_cycle=self.duty_cycle,
            efficiency=Efficiency(compile=self.compile, grad_checkpointing=self.grad_checkpointing),
            metrics_port=self.metrics_port, metrics_host=self.metrics_host,
            tensorboard=self.tensorboard.expanduser() if self.tensorboard is not None else None,
            trainers=self.allow_trainer or None)
