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


def rest_after(step_seconds: float, duty_cycle: float) -> float:
    """How long to rest after a step of `step_seconds` so that training takes `duty_cycle` of the time."""
    return step_seconds * (1.0 - duty_cycle) / duty_cycle if 0.0 < duty_cycle < 1.0 else 0.0


class TrainingDriver:
    """`run()` (blocking; call it in a thread) trains until `target` steps or until `stop` is set, and always
    ends with a checkpoint of the last step taken, on disk when it returns. `on_checkpoint(path, meta)` is
    called in the checkpoint writer's thread right after each checkpoint is on disk; it must not block for long
    (hand the work to the event loop). With a `board`, every step's loss and every checkpoint's validation loss
    go to TensorBoard under the trainer's slot. With a `duty_cycle` under 1 it rests after each step (see
    `rest_after`; a stop ends the rest at once)."""

    def __init__(self, trainer: Trainer, target: int, checkpoint_root: Path, cadence: Cadence, *,
                 on_checkpoint: Callable[[Path, CheckpointMeta], None] | None = None,
                 board: LossBoard | None = None, duty_cycle: float = 1.0) -> None:
        if not 0.0 < duty_cycle <= 1.0:
            raise ValueError(f"duty_cycle must be in (0, 1], not {duty_cycle}")
        self.trainer, self.target, self.root, self.cadence = trainer, target, Path(checkpoint_root), cadence
        self.duty_cycle = duty_cycle
        self.rested_seconds = 0.0  # the rests that the duty cycle asked for
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
                started = time.perf_counter()
                self.steps_done += t.train(1, on_progress=self._on_progress)
                if (rest := rest_after(time.perf_counter() - started, self.duty_cycle)) and t.step < self.target:
                    self.rested_seconds += rest
                    self.stop.wait(rest)
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
