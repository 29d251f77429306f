"""Checkpoints written off the training thread: at a checkpoint the trainer's state is copied into host
memory (one device-to-host copy) and training goes on while a writer thread computes the snapshot's
validation loss, writes it atomically, points LATEST at it and reports it. One snapshot at a time: a
checkpoint that comes due while the previous one is still being written waits for it (bounded memory, and
the lineage stays in order), and that wait is counted.

On a CPU whose cores the training's torch threads already fill, the validation loss is computed in the
training thread at the checkpoint instead: a second team of torch threads beside the training's would
oversubscribe the cores, and an OpenMP team whose threads lose their core waits at every barrier (and while
it lives, libgomp throttles every team: expert.threads). Only the write stays in the background."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path

import torch

from expert.checkpoint import publish_latest, step_dir
from expert.threads import ShortLivedThreads
from expert.train_loop import StateSnapshot, Trainer
from protocol.checkpoint import CheckpointMeta


def validates_inline(device: torch.device | str) -> bool:
    """True when a validation beside the training would have no core of its own: a CPU device whose torch
    threads, twice over, outnumber the cores this process may run on."""
    if torch.device(device).type != "cpu":
        return False
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return 2 * torch.get_num_threads() > cores


class BackgroundCheckpointer:
    """`submit()` in the training thread at a step boundary; `close()` when training ends (it waits until the
    last checkpoint is on disk and reported). A write's error (a non-finite state, a full disk) is raised in
    the training thread by the next `submit()` or by `close()`. `on_checkpoint(path, meta)` runs in the
    writer thread. `inline`: validate in the training thread (default: `validates_inline` of its device)."""

    def __init__(self, trainer: Trainer, root: Path,
                 on_checkpoint: Callable[[Path, CheckpointMeta], None] | None = None, *,
                 inline: bool | None = None) -> None:
        self.trainer, self.root, self.on_checkpoint = trainer, Path(root), on_checkpoint
        # a writer thread ends after each write: its torch ops leave no OpenMP team behind (expert.threads)
        self._pool = ShortLivedThreads(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending: Future | None = None
        self.inline = validates_inline(trainer.device) if inline is None else inline
        # in the background, the snapshot's EMA weights are validated on a spare copy: the trainer's own EMA
        # moves on meanwhile
        background = trainer.held is not None and not self.inline
        self._validator = copy.deepcopy(trainer.ema).requires_grad_(False) if background else None
        self.written = 0
        self.snapshot_seconds = 0.0  # the training thread's cost of a checkpoint: the copy into host memory
        self.waited_seconds = 0.0  # the training thread's waits for a previous write still in progress

    def submit(self) -> None:
        """Checkpoint the trainer's current step (in the background)."""
        self._wait()
        t0 = time.perf_counter()
        snap = self.trainer.snapshot(copy=True)
        self.snapshot_seconds += time.perf_counter() - t0
        # inline: the EMA model has not moved on from the snapshot's step yet
        val = self.trainer.checkpoint_validation() if self.inline and self.trainer.held is not None else None
        self._pending = self._pool.submit(self._write, snap, val)

    def _write(self, snap: StateSnapshot, val: float | None) -> None:
        path = step_dir(self.root, snap.step)
        meta = self.trainer.write_snapshot(path, snap, validator=self._validator, val_loss=val)
        publish_latest(self.root, path)
        self.written += 1
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, meta)

    def _wait(self) -> None:
        if self._pending is None:
            return
        t0 = time.perf_counter()
        try:
            self._pending.result()
        finally:
            self._pending = None
            self.waited_seconds += time.perf_counter() - t0

    def close(self) -> None:
        """Wait for the last write (raising its error, if any) and stop the writer thread."""
        try:
            self._wait()
        finally:
            self._pool.shutdown(wait=True)
