"""Checkpoint folders: safetensors for every tensor, `checkpoint.json` for the rest, written atomically.

A training run's output folder holds `step-XXXXXXXX/` checkpoints and a `LATEST` file naming the newest;
`resolve_checkpoint` accepts either the run folder or one checkpoint folder. Loading verifies each file's
SHA-256 and the preset before anything is used.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from protocol.atomic import atomic_write_text
from protocol.canonical import canonical_json, sha256_hex
from protocol.checkpoint import CHECKPOINT_META, CheckpointFile, CheckpointMeta
from protocol.errors import ConfigMismatchError, IntegrityError, ParisError
from protocol.model import ExpertPreset
from protocol.records_io import read_model

LATEST = "LATEST"


class NonFiniteStateError(ParisError):
    """The training state holds NaN or Inf: it must not be written as a checkpoint."""


def _check_finite(groups: dict[str, dict[str, torch.Tensor]]) -> None:
    for group, tensors in groups.items():
        for name, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise NonFiniteStateError(f"refusing to save a checkpoint: {group}/{name} holds NaN or Inf")


def write_checkpoint(path: Path, groups: dict[str, dict[str, torch.Tensor]], meta_fields: dict) -> CheckpointMeta:
    """Write `groups` (file stem → tensors) and the metadata into folder `path`, atomically: everything goes
    into a temporary sibling folder which is renamed into place; an existing `path` is replaced."""
    path = Path(path)
    _check_finite(groups)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        files = []
        for stem, tensors in groups.items():
            data = st_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})
            name = f"{stem}.safetensors"
            with open(tmp / name, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            files.append(CheckpointFile(file=name, sha256=sha256_hex(data), bytes=len(data)))
        meta = CheckpointMeta(files=tuple(files), created_at=time.time(), **meta_fields)
        (tmp / CHECKPOINT_META).write_bytes(canonical_json(meta))
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return meta


def read_meta(path: Path) -> CheckpointMeta:
    meta_path = Path(path) / CHECKPOINT_META
    if not meta_path.is_file():
        raise IntegrityError(f"{path} is not a checkpoint (no {CHECKPOINT_META})")
    return read_model(CheckpointMeta, meta_path, what="checkpoint metadata")


def read_group(path: Path, meta: CheckpointMeta, stem: str) -> dict[str, torch.Tensor]:
    """Load one verified safetensors file of a checkpoint."""
    name = f"{stem}.safetensors"
    entry = next((f for f in meta.files if f.file == name), None)
    if entry is None:
        raise IntegrityError(f"checkpoint {path} has no {name}")
    file = Path(path) / name
    if not file.is_file():
        raise IntegrityError(f"checkpoint {path} is missing {name}")
    data = file.read_bytes()
    if len(data) != entry.bytes or sha256_hex(data) != entry.sha256:
        raise IntegrityError(f"checkpoint {path}: {name} is corrupt (its hash does not match checkpoint.json)")
    try:
        return st_load(data)
    except SafetensorError as e:
        raise IntegrityError(f"checkpoint {path}: {name} cannot be parsed: {e}") from None


def check_slot(meta: CheckpointMeta, path: Path, *, kind: str, run_id: str | None, cluster: int | None
               ) -> CheckpointMeta:
    """Refuse a checkpoint of another kind, run or cluster (None counts as a value: a checkpoint that names
    no run does not fit a run)."""
    if meta.kind != kind:
        raise ConfigMismatchError(f"checkpoint {path} is a {meta.kind} checkpoint, not a {kind} one")
    if meta.run_id != run_id:
        have, want = meta.run_id or "(none)", run_id or "(none)"
        raise ConfigMismatchError(f"checkpoint {path} belongs to run {have}, not {want}")
    if meta.cluster != cluster:
        what = "the router" if cluster is None else f"cluster {cluster}"
        have = "the router" if meta.cluster is None else f"cluster {meta.cluster}"
        raise ConfigMismatchError(f"checkpoint {path} is for {have}, not {what}")
    return meta


def check_preset(meta: CheckpointMeta, expected: ExpertPreset, path: Path) -> None:
    if meta.preset == expected:
        return
    have, want = meta.preset.model_dump(), expected.model_dump()
    diffs = [f"{section}.{k}" for section in want if isinstance(want[section], dict)
             for k in want[section] if have.get(section, {}).get(k) != want[section][k]]
    if meta.preset.name != expected.name:
        diffs.insert(0, "name")
    raise ConfigMismatchError(
        f"checkpoint {path} was made with a different model config ({', '.join(diffs) or 'preset'} differ): "
        "it cannot be used with this run")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def publish_latest(root: Path, ckpt: Path, *, keep: int = 2) -> None:
    """Point `root/LATEST` at `ckpt` (atomically) and prune all but the newest `keep` step folders."""
    atomic_write_text(Path(root) / LATEST, ckpt.name + "\n")
    steps = sorted(p for p in Path(root).glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        if old != ckpt:
            shutil.rmtree(old, ignore_errors=True)


def resolve_checkpoint(path: Path) -> Path:
    """A checkpoint folder, or a training output folder (its LATEST checkpoint)."""
    path = Path(path)
    if (path / CHECKPOINT_META).is_file():
        return path
    latest = path / LATEST
    if latest.is_file():
        name = latest.read_text().strip()
        target = path / name
        if "/" in name or not (target / CHECKPOINT_META).is_file():
            raise IntegrityError(f"{latest} names a checkpoint that does not exist")
        return target
    raise IntegrityError(f"{path} holds no checkpoint (neither {CHECKPOINT_META} nor {LATEST})")
