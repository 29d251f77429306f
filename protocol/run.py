"""The run spec: the one record every peer of a run agrees on (data, clusters, model preset, targets)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from protocol.atomic import atomic_write_bytes
from protocol.canonical import canonical_json, content_id
from protocol.data import DataManifest, Frozen
from protocol.errors import IntegrityError
from protocol.model import ExpertPreset
from protocol.records_io import read_model

RUN_FORMAT_VERSION = 1


class EmbeddingInfo(Frozen):
    """How clips were embedded before clustering, so that new clips can be assigned the same way:
    embed with `method`, standardise with (x - mean) / scale, nearest centroid."""

    method: str
    dim: int = Field(ge=1)
    detail: str = ""
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    two_stage_fine: int | None = None


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


class RunSpec(Frozen):
    """Identity of a run. `run_id` is the content hash of everything except `data_hint`, a local path
    that only says where this machine keeps the data."""

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
            raise ValueError(f"run spec format {self.format_version} is not supported (expected {RUN_FORMAT_VERSION})")
        return self

    @property
    def run_id(self) -> str:
        return content_id(self, prefix="run", exclude={"data_hint"})

    def cluster_clips(self, cluster: int) -> list[int]:
        if not 0 <= cluster < self.num_clusters:
            raise IntegrityError(f"cluster {cluster} does not exist in this run (K={self.num_clusters})")
        return [i for i, a in enumerate(self.assignments) if a == cluster]

    def save(self, path: Path) -> None:
        atomic_write_bytes(Path(path), canonical_json(self))

    @classmethod
    def load(cls, path: Path) -> RunSpec:
        return read_model(cls, path, what="run spec")
