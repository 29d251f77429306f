"""The run spec: the one record every peer of a run agrees on (data, clusters, model preset, targets)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from protocol.atomic import atomic_write_bytes
from protocol.canonical import canonical_json, content_id
from protocol.data import DataManifest, Frozen
from protocol.errors import IntegrityError
from protocol.model import Asset, ExpertPreset
from protocol.records_io import read_model
from protocol.run_config import RunConfig

RUN_FORMAT_VERSION = 2  # 2: a held-out validation split per cluster


class EmbeddingInfo(Frozen):
    """How clips were embedded before clustering, so that new clips can be assigned the same way:
    embed with `method`, standardise with (x - mean) / scale, nearest centroid."""

    method: str
    dim: int = Field(ge=1)
    detail: str = ""
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    two_stage_fine: int | None = None
    weights: Asset | None = None  # the open_clip image tower's weights (open_clip-image), part of the bundle


class ClusterStats(Frozen):
    cluster: int = Field(ge=0)
    size: int = Field(ge=0)
    majority: dict[str, str] = Field(default_factory=dict)


class BalanceReport(Frozen):
    sizes: tuple[int, ...]
    largest: int
    smallest: int
    ratio: float
    clusters: tuple[ClusterStats, ...] = ()
    purity: dict[str, float] = Field(default_factory=dict)
    purity_chance: dict[str, float] = Field(default_factory=dict)
    nmi: dict[str, float] = Field(default_factory=dict)


class ValidationSpec(Frozen):
    """The held-out split and the deterministic validation loss that every peer recomputes to judge a checkpoint.

    `holdout[k]` lists the global clip indices of cluster k that honest trainers never train on (about
    `fraction` of the cluster, at least `min_clips`, at most `max_clips`, never more than half of it). The loss
    is the flow-matching MSE of the EMA weights over those clips × `t_grid`, with noise drawn from `noise_seed`
    (per cluster), in fp32, forward passes only. Two machines agree on it within `rtol` (relative)."""

    fraction: float = Field(default=0.02, gt=0, lt=1)
    min_clips: int = Field(default=8, ge=1)
    max_clips: int = Field(default=256, ge=1)
    t_grid: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    noise_seed: int = 0
    rtol: float = Field(default=1e-3, gt=0, lt=1)
    holdout: tuple[tuple[int, ...], ...]

    @model_validator(mode="after")
    def _check_grid(self) -> ValidationSpec:
        if not self.t_grid or any(not 0.0 < t < 1.0 for t in self.t_grid):
            raise ValueError("t_grid must list noise levels strictly between 0 and 1")
        return self


def holdout_size(cluster_size: int, fraction: float = 0.02, min_clips: int = 8, max_clips: int = 256) -> int:
    """How many of a cluster's clips are held out: fraction, clamped to [min, max], at most half the cluster."""
    return max(0, min(max(min_clips, round(fraction * cluster_size)), max_clips, cluster_size // 2))


def choose_holdout(assignments: tuple[int, ...] | list[int], num_clusters: int, *, seed: int, fraction: float = 0.02,
                   min_clips: int = 8, max_clips: int = 256) -> tuple[tuple[int, ...], ...]:
    """A fixed, seeded split: for each cluster, a sorted random subset of its clips (global indices)."""
    rng = np.random.default_rng([seed, 0x5EED])
    assignments = np.asarray(assignments)
    out = []
    for k in range(num_clusters):
        members = np.flatnonzero(assignments == k)
        n = holdout_size(len(members), fraction, min_clips, max_clips)
        out.append(tuple(int(i) for i in np.sort(rng.choice(members, n, replace=False))) if n else ())
    return tuple(out)


class RunSpec(Frozen):
    """Identity of a run. `run_id` is a 128-bit content hash of everything except `data_hint` (a local path
    that only says where this machine keeps the data), so it commits to the spec *and* to `creator`, the
    OpenSSH public key of the peer that owns the run: only that key's pointer and signed bundle count."""

    format_version: int = RUN_FORMAT_VERSION
    name: str = "run"
    data: DataManifest
    num_clusters: int = Field(ge=1, le=1024)
    assignments: tuple[int, ...]
    centroids: tuple[tuple[float, ...], ...]
    embedding: EmbeddingInfo
    preset: ExpertPreset
    balance: BalanceReport
    seed: int = 0
    validation: ValidationSpec
    creator: str | None = Field(default=None, pattern=r"^ssh-rsa [A-Za-z0-9+/=]{100,2000}$")
    # the run config it was made from (`run init --config`), local paths left out; None: a preset as it is
    config: RunConfig | None = None
    data_hint: str | None = None

    @model_validator(mode="after")
    def _check(self) -> RunSpec:
        if len(self.assignments) != self.data.total_clips:
            raise ValueError(f"{len(self.assignments)} assignments for {self.data.total_clips} clips")
        if any(not 0 <= a < self.num_clusters for a in self.assignments):
            raise ValueError("an assignment names a cluster outside 0..K-1")
        if len(self.centroids) != self.num_clusters or any(len(c) != self.embedding.dim for c in self.centroids):
            raise ValueError("centroids do not match num_clusters × embedding.dim")
        if self.format_version != RUN_FORMAT_VERSION:
            raise ValueError(f"run spec format {self.format_version} is not supported (expected {RUN_FORMAT_VERSION}"
                             "; re-run `paris-node run init`)")
        held = self.validation.holdout
        if len(held) != self.num_clusters:
            raise ValueError(f"validation.holdout lists {len(held)} clusters, the run has {self.num_clusters}")
        for k, idx in enumerate(held):
            if list(idx) != sorted(set(idx)) or any(not 0 <= i < len(self.assignments) or self.assignments[i] != k
                                                    for i in idx):
                raise ValueError(f"validation.holdout[{k}] must list distinct clips of cluster {k}, ascending")
        return self

    @property
    def run_id(self) -> str:
        return content_id(self, prefix="run", exclude={"data_hint"}, digits=32)

    def cluster_clips(self, cluster: int) -> list[int]:
        """Every clip of `cluster` (global indices, ascending), held-out ones included."""
        if not 0 <= cluster < self.num_clusters:
            raise IntegrityError(f"cluster {cluster} does not exist in this run (K={self.num_clusters})")
        return [i for i, a in enumerate(self.assignments) if a == cluster]

    def train_clips(self, cluster: int) -> list[int]:
        """The clips of `cluster` that trainers train on: all but the held-out ones."""
        held = set(self.holdout_clips(cluster))
        return [i for i in self.cluster_clips(cluster) if i not in held]

    def holdout_clips(self, cluster: int) -> list[int]:
        """The held-out clips of `cluster` (global indices): for the validation loss only."""
        if not 0 <= cluster < self.num_clusters:
            raise IntegrityError(f"cluster {cluster} does not exist in this run (K={self.num_clusters})")
        return list(self.validation.holdout[cluster])

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), canonical_json(self))

    @classmethod
    def load(cls, path: Path) -> RunSpec:
        return read_model(cls, path, what="run spec")
