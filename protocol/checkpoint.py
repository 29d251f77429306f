"""Checkpoint metadata: what a checkpoint folder holds and how to verify it before use."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from protocol.data import Frozen
from protocol.model import ExpertPreset

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_META = "checkpoint.json"
# what sampling needs of a checkpoint: its metadata and the EMA weights (a quarter of it with AdamW's state);
# `fetch` downloads only these (swarm.cas ContentStore.get(files=...)), a takeover the whole folder
SAMPLING_FILES = (CHECKPOINT_META, "ema.safetensors")


class CheckpointFile(Frozen):
    file: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    bytes: int = Field(ge=0)


class CheckpointMeta(Frozen):
    """`checkpoint.json`. Files: `ema.safetensors` (weights for sampling), `model.safetensors`,
    `optimizer.safetensors` and `rng.safetensors` (the exact training state, for resume and takeover).
    `run_id`, `cluster` (None for the router) and `kind` bind it to one slot of one run: loading and
    assembling refuse a checkpoint of another."""

    format_version: Literal[1] = CHECKPOINT_FORMAT_VERSION
    kind: Literal["expert", "router"] = "expert"
    run_id: str | None = None
    cluster: int | None = Field(default=None, ge=0)
    step: int = Field(ge=0)
    samples_seen: int = Field(ge=0)
    loss_ema: float | None = None
    skipped_steps: int = Field(default=0, ge=0)
    # lineage: the CID of the checkpoint this one was trained from (None: the step-0 initialisation, which
    # anyone rebuilds from the run seed), and the trainer's own validation loss of the EMA weights
    parent: str | None = Field(default=None, pattern=r"^b[a-z2-7]{20,120}$")
    val_loss: float | None = Field(default=None, allow_inf_nan=False)
    preset: ExpertPreset
    files: tuple[CheckpointFile, ...]
    created_at: float
