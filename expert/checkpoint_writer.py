"""Checkpoints written off the training thread: at a checkpoint the trainer's state is copied into host
memory (one device-to-host copy) and training goes on while a writer thread computes the snapshot's
validation loss, writes it atomically, points LATEST at it and reports it. One snapshot at a time: a
checkpoint that comes due while the previous one is still being written waits for it (bounded memory, and
the lineage stays in order), and that wait is counted."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from expert.checkpoint import publish_latest, step_dir
from expert.train_loop import StateSnapshot, Trainer
from protocol.checkpoint import CheckpointMeta


class BackgroundCheckpointer:
    """`submit()` in the training thread at a step boundary; `close()` when training ends (it waits until the
    last checkpoint is on disk and reported). A write's error (a non-finite state, a full disk) is raised in
    the training thread by the next `submit()` or by `close()`. `on_checkpoint(path, meta)` runs in the
    writer thread."""

    def __init__(self, trainer: Trainer, root: Path,
                 on_checkpoint: Callable[[Path, CheckpointMeta], None] | None = None) -> None:
        self.trainer, self.root, self.on_checkpoint = trainer, Path(root), on_checkpoint
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-writer")
        self._pending: Future | None = None
        # the snapshot's EMA weights are validated on a spare copy: the trainer's own EMA moves on meanwhile
        self._validator = copy.deepcopy(trainer.ema).requires_grad_(False) if trainer.held is not None else None
        self.written = 0
        self.snapshot_seconds = 0.0  # the training thread's cost of a checkpoint: the copy into host memory
        self.waited_seconds = 0.0  # the training thread's waits for a previous write still in progress

    def submit(self) -> None:
        """Checkpoint the trainer's current step (in the background)."""
        self._wait()
        t0 = time.perf_counter()
        snap = self.trainer.snapshot(copy=True)
        self.snapshot_seconds += time.perf_counter() - t0
        self._pending = self._pool.submit(self._write, snap)

    def _write(self, snap: StateSnapshot) -> None:
        path = step_dir(self.root, snap.step)
        meta = self.trainer.write_snapshot(path, snap, validator=self._validator)
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
