"""Training and validation loss per slot as TensorBoard event files (`train-local --tensorboard DIR`,
`join --tensorboard DIR`), beside the Prometheus metrics: a researcher's usual way to watch a run's curves.

Each slot (expert-0, …, router) is a TensorBoard run of its own, DIR/<slot>, with the same two tags
(`loss/train` every step, `loss/validation` at every checkpoint), so every slot's curves overlay in one chart.
Written through torch.utils.tensorboard (the `tensorboard` package); `tensorboard --logdir DIR` shows them.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path

from protocol.errors import ParisError
from protocol.swarm_records import ROUTER, expert_slot

TRAIN_TAG, VALIDATION_TAG = "loss/train", "loss/validation"


class LossBoard:
    """One event writer per slot under `root`, created on first use; safe to call from training threads."""

    def __init__(self, root: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # pragma: no cover - tensorboard is a dependency
            raise ParisError("--tensorboard needs the tensorboard package (pip install tensorboard)") from None
        self.root, self._make = Path(root).expanduser(), SummaryWriter
        self._writers: dict = {}
        self._lock = threading.Lock()

    def _writer(self, slot: str):
        with self._lock:
            if slot not in self._writers:
                try:
                    self._writers[slot] = self._make(log_dir=str(self.root / slot))
                except OSError as e:
                    raise ParisError(f"--tensorboard {self.root}: cannot write there ({e.strerror or e})") from None
            return self._writers[slot]

    def train(self, slot: str, step: int, loss: float | None) -> None:
        """A training step's loss (skipped steps, None or not finite, are left out)."""
        if loss is not None and math.isfinite(loss):
            self._writer(slot).add_scalar(TRAIN_TAG, loss, step)

    def validation(self, slot: str, step: int, loss: float | None) -> None:
        """A checkpoint's validation loss (the run's deterministic held-out loss)."""
        if loss is not None and math.isfinite(loss):
            w = self._writer(slot)
            w.add_scalar(VALIDATION_TAG, loss, step)
            w.flush()

    def close(self) -> None:
        with self._lock:
            for w in self._writers.values():
                w.close()
            self._writers.clear()


def slot_of(trainer) -> str:
    """The slot a trainer trains, named as the swarm names it: `expert-<cluster>` or `router`."""
    return ROUTER if trainer.kind == "router" else expert_slot(trainer.cluster or 0)
