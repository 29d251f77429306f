"""Checking a checkpoint's content against what its record claims, and replaying the interval it covers.

Both take a fresh trainer of the slot (built exactly as its trainer built it: same preset, seed, run, cluster,
training clips and held-out split), so the checks reuse the loading code's verification (hashes, kind, run,
cluster, preset) and the run's deterministic validation loss. No networking: node.checker fetches the bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from expert.checkpoint import read_group
from expert.train_loop import Trainer
from expert.validation import losses_agree
from protocol.checkpoint import CheckpointMeta
from protocol.errors import ParisError


@dataclass(frozen=True)
class ContentReport:
    """`content_ok`: the checkpoint itself is sound (loads for this slot, finite, its own checkpoint.json's
    validation loss recomputes); `ok`: and its record told the truth about it (step, parent, loss)."""

    ok: bool
    reason: str
    val_loss: float | None = None
    meta: CheckpointMeta | None = None
    content_ok: bool = False


@dataclass(frozen=True)
class ReplayReport:
    ok: bool
    exact: bool
    rel_error: float  # ‖replayed − published‖ / ‖published − parent‖ over the model's weights
    steps: int
    reason: str = ""


def _finite(tensors: dict[str, torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())


def check_content(trainer: Trainer, path: Path, *, step: int, parent: str | None, claimed_loss: float | None,
                  rtol: float, sampling_only: bool = False) -> ContentReport:
    """Load `path` into `trainer` (verifying it fits the slot), then check that it holds what was claimed:
    the step and parent of its record, finite weights, and a validation loss that matches the claim.
    `sampling_only`: `path` holds only the sampling weights (SAMPLING_FILES); those are what is checked."""
    try:
        meta = trainer.load_sampling_weights(path) if sampling_only else trainer.load(path)
    except (ParisError, OSError, ValueError) as e:
        return ContentReport(False, f"unusable: {e}")
    if not ((sampling_only or _finite(trainer.model.state_dict())) and _finite(trainer.ema.state_dict())):
        return ContentReport(False, "weights hold NaN or Inf", meta=meta)
    loss = trainer.validation_loss()
    if loss is None:
        raise ParisError("this trainer has no held-out split: it cannot verify checkpoints")
    if meta.val_loss is None or not losses_agree(loss, meta.val_loss, rtol):
        return ContentReport(False, f"validation loss recomputed {loss:.6g}, checkpoint.json says {meta.val_loss}",
                             loss, meta)
    if meta.step != step:
        return ContentReport(False, f"the record says step {step}, the checkpoint holds step {meta.step}", loss,
                             meta, content_ok=True)
    if meta.parent != parent:
        return ContentReport(False, "the record names another parent than the checkpoint", loss, meta,
                             content_ok=True)
    if claimed_loss is None or not losses_agree(loss, claimed_loss, rtol):
        return ContentReport(False, f"validation loss recomputed {loss:.6g}, claimed {claimed_loss}", loss, meta,
                             content_ok=True)
    return ContentReport(True, "", loss, meta, content_ok=True)


REPLAYED_GROUPS = ("model", "ema", "optimizer", "rng")  # everything a consumer uses: sampling and resuming


def _state(trainer: Trainer) -> dict[str, dict[str, torch.Tensor]]:
    return {g: {k: v.detach().clone().cpu() for k, v in tensors.items()}
            for g, tensors in trainer.state_groups().items() if g in REPLAYED_GROUPS}


def _distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a if a[k].is_floating_point())
                            or torch.zeros(())))


def _norm(a: dict[str, torch.Tensor]) -> float:
    return float(torch.sqrt(sum((v.double() ** 2).sum() for v in a.values() if v.is_floating_point())
                            or torch.zeros(())))


def replay(make_trainer: Callable[[], Trainer], parent: Path | None, child: Path, child_meta: CheckpointMeta, *,
           tolerance: float) -> ReplayReport:
    """Re-train the interval from `parent` (None: the initialisation) to `child` with the same seeds and compare
    the whole state a consumer uses: the model, the EMA (what is sampled and validated), the optimizer and the
    RNG, and the counters. On CPU with the same torch our resume is exact, so an honest interval replays bit
    for bit; elsewhere the model and the EMA must land within `tolerance` of the published ones relative to
    their update's size, the optimizer's moments within `tolerance` of their size, and the RNG exactly."""
    trainer = make_trainer()
    if parent is not None:
        trainer.load(parent)
    start = _state(trainer)
    steps = child_meta.step - trainer.step
    if steps <= 0:
        return ReplayReport(False, False, float("inf"), steps, "the child is not after its parent")
    trainer.train(steps)
    mine = _state(trainer)
    theirs = {g: read_group(child, child_meta, g) for g in mine}

    def fail(reason: str) -> ReplayReport:
        return ReplayReport(False, False, float("inf"), steps, reason)

    for g in mine:
        if set(theirs[g]) != set(mine[g]) or any(theirs[g][k].shape != mine[g][k].shape for k in mine[g]):
            return fail(f"the checkpoint's {g} state does not fit the model")
    if (trainer.samples_seen, trainer.skipped) != (child_meta.samples_seen, child_meta.skipped_steps):
        return fail(f"the checkpoint's counters (samples {child_meta.samples_seen}, skipped "
                    f"{child_meta.skipped_steps}) differ from the replay's ({trainer.samples_seen}, {trainer.skipped})")
    differs = [g for g in mine if not all(torch.equal(mine[g][k], theirs[g][k]) for k in mine[g])]
    if not differs:
        return ReplayReport(True, True, 0.0, steps)
    if "rng" in differs:
        return fail("replay differs: the checkpoint's RNG state is not the one its interval leaves")
    rel = 0.0
    for g in differs:
        scale = _distance(theirs[g], start[g]) if g in ("model", "ema") else _norm(theirs[g])
        rel = max(rel, _distance(mine[g], theirs[g]) / max(scale, 1e-12))
    ok = rel <= tolerance
    return ReplayReport(ok, False, rel, steps, "" if ok else f"replay differs by {rel:.3g} of the update in "
                                                             f"{', '.join(differs)} (tolerance {tolerance:g})")
