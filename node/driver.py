"""Drives a Trainer toward a target in a worker thread, checkpointing every N steps or M minutes, so that
the daemon's event loop (lease renewals, serving chunks, gossip) keeps running during long steps.
Checkpoints are written in the background (expert.checkpoint_writer): training stops only for the copy."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from expert.checkpoint_writer import BackgroundCheckpointer
from expert.train_loop import Progress, Trainer
from node.tensorboard import LossBoard, slot_of
from protocol.checkpoint import CheckpointMeta


@dataclass(frozen=True)
class Cadence:
    every_steps: int
    every_seconds: float


class TrainingDriver:
    """`run()` (blocking; call it in a thread) trains until `target` steps or until `stop` is set, and always
    ends with a checkpoint of the last step taken, on disk when it returns. `on_checkpoint(path, meta)` is
    called in the checkpoint writer's thread right after each checkpoint is on disk; it must not block for long
    (hand the work to the event loop). With a `board`, every step's loss and every checkpoint's validation loss
    go to TensorBoard under the trainer's slot."""

    def __init__(self, trainer: Trainer, target: int, checkpoint_root: Path, cadence: Cadence, *,
                 on_checkpoint: Callable[[Path, CheckpointMeta], None] | None = None,
                 board: LossBoard | None = None) -> None:
        self.trainer, self.target, self.root, self.cadence = trainer, target, Path(checkpoint_root), cadence
        self.on_checkpoint, self.board, self.slot = on_checkpoint, board, slot_of(trainer)
        self.stop = threading.Event()
        self.latest: Progress | None = None
        self.started = time.time()
        self.steps_done = 0
        self.train_seconds = 0.0  # wall time inside run(), checkpoints included
        self.writer: BackgroundCheckpointer | None = None  # of the current or last run()

    @property
    def mean_samples_per_s(self) -> float | None:
        t = self.trainer.preset.train
        return self.steps_done * t.batch_size * t.grad_accum / self.train_seconds if self.train_seconds else None

    def _on_progress(self, p: Progress) -> None:
        self.latest = p
        if self.board is not None:
            self.board.train(self.slot, p.step, p.loss)

    def _checkpointed(self, path: Path, meta: CheckpointMeta) -> None:
        if self.board is not None:
            self.board.validation(self.slot, meta.step, meta.val_loss)
        if self.on_checkpoint is not None:
            self.on_checkpoint(path, meta)

    def run(self) -> bool:
        """True when the target was reached, False when stopped first."""
        t0 = time.perf_counter()
        try:
            return self._run()
        finally:
            self.train_seconds += time.perf_counter() - t0

    def _run(self) -> bool:
        t = self.trainer
        writer = BackgroundCheckpointer(t, self.root, self._checkpointed)
        self.writer = writer
        last_time, last_step = time.monotonic(), t.step
        try:
            while t.step < self.target and not self.stop.is_set():
                self.steps_done += t.train(1, on_progress=self._on_progress)
                due = (t.step - last_step >= self.cadence.every_steps
                       or time.monotonic() - last_time >= self.cadence.every_seconds or t.step >= self.target)
                if due:
                    writer.submit()  # a copy of the state; it is validated and written while training goes on
                    last_time, last_step = time.monotonic(), t.step
            if t.step != last_step:  # stopped between checkpoints: keep every step taken
                writer.submit()
        finally:
            writer.close()  # returns once the last checkpoint is on disk and reported
        return t.step >= self.target
