"""The run bundle: what a swarm publishes about a run besides its spec, so that a joiner can find each
cluster's data by CID and every node agrees on the daemon's schedule (targets, checkpoint cadence).

The bundle is a directory in the content store holding `run.json` (the RunSpec), `swarm.json` (this
manifest) and `creator.sig`; its root CID is what the run's spec pointer in the DHT names. The run id commits
to the creator's key, which signs both files: the creator defines the run, nobody else can redefine it, and
everything else a joiner receives is checked against the bundle (CIDs, clip counts, run id).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from protocol.data import Frozen
from protocol.model import TrainConfig
from protocol.records_io import read_model
from protocol.swarm_records import Cid, PeerIdStr, RunId, Timestamp

SWARM_RUN_FORMAT = 1
SPEC_FILE = "run.json"
SWARM_FILE = "swarm.json"
SIGNATURE_FILE = "creator.sig"  # the creator's RSA signature of both files (node.bundle.bundle_digest)


def router_lease_id(run_id: str) -> str:
    """The router's lease is a one-cluster claim under a run id of its own."""
    return f"{run_id}.router"


class ClusterData(Frozen):
    """One cluster's clips as data sets of their own (safetensors shards + manifest) in the content store:
    the training clips (`cid`), and the held-out clips of the run's validation split (`holdout_cid`), which
    verifiers fetch without the rest."""

    cluster: int = Field(ge=0, lt=1024)
    cid: Cid
    clips: int = Field(ge=1)
    bytes: int = Field(ge=0)
    holdout_cid: Cid
    holdout_clips: int = Field(ge=1)
    holdout_bytes: int = Field(ge=0)


class Schedule(Frozen):
    """When daemons publish checkpoints, when the router counts as trained, and what makes a checkpoint count
    (see swarm.acceptance): `attestations` verifiers other than its trainer (0: a private swarm that trusts
    the rule's other checks and every consumer's own recomputation), a validation loss no worse than its
    parent's by more than `loss_tolerance` (relative), and at most `checkpoint_every` steps past its parent.
    Verifiers replay one interval in `replay_every` (0: never)."""

    checkpoint_every: int = Field(default=100, ge=1)  # steps
    checkpoint_minutes: float = Field(default=10.0, gt=0)
    router_target_steps: int = Field(default=500, ge=1)
    router_cap: int = Field(default=2000, ge=1)  # clips per cluster in the router's stratified sample
    attestations: int = Field(default=1, ge=0, le=64)
    loss_tolerance: float = Field(default=0.1, ge=0, le=10)
    # the router's held-out cross-entropy may also rise by this fraction of ln K (it is noisy near zero:
    # measured here, honest tiny routers moved by up to 0.04 nats between checkpoints at K=2)
    router_loss_slack: float = Field(default=0.1, ge=0, le=10)
    replay_every: int = Field(default=10, ge=0)
    replay_tolerance: float = Field(default=0.01, gt=0, lt=1)  # ‖replayed − published‖ / ‖published − parent‖
    # a lease is earned by progress: an owner that publishes no checkpoint the rule does not reject within
    # this many checkpoint intervals (`checkpoint_minutes` each) loses its claim to the next joiner
    progress_intervals: int = Field(default=3, ge=1)

    def with_preset_cadence(self, train: TrainConfig) -> Schedule:
        """This schedule publishing every `train.checkpoint_every` steps (the preset's: larger models write
        bigger checkpoints, less often); `checkpoint_minutes` still bounds the interval by the clock."""
        return self.model_copy(update={"checkpoint_every": train.checkpoint_every})


class SwarmRunManifest(Frozen):
    kind: Literal["swarm-run"] = "swarm-run"
    format_version: int = SWARM_RUN_FORMAT
    run_id: RunId
    clusters: tuple[ClusterData, ...]
    schedule: Schedule = Schedule()
    created_by: PeerIdStr
    # a permissioned run: only these peers' leases and checkpoints count (None: anyone may train);
    # verifiers and seeders stay open to anyone
    trainers: tuple[PeerIdStr, ...] | None = Field(default=None, max_length=4096)
    created_at: Timestamp

    @model_validator(mode="after")
    def _check(self) -> SwarmRunManifest:
        if self.format_version != SWARM_RUN_FORMAT:
            raise ValueError(f"swarm run format {self.format_version} is not supported (expected {SWARM_RUN_FORMAT})")
        if [c.cluster for c in self.clusters] != list(range(len(self.clusters))):
            raise ValueError("cluster data must list clusters 0..K-1 in order")
        return self

    @classmethod
    def load(cls, path) -> SwarmRunManifest:
        return read_model(cls, path, what="swarm run manifest")
