"""The deterministic validation loss that judges a checkpoint: the same number on every machine (within the
run's stated tolerance), so that a verifier, a takeover and `fetch` can each recompute what a trainer claims.

Experts: flow-matching MSE of the weights over the cluster's held-out clips × the run's fixed t grid, with
noise drawn per clip from the run's noise seed, in fp32, forward passes only, batched. The router: held-out
cross-entropy (and accuracy) against the true cluster over every cluster's held-out clips, per noise level.
Per-sample losses are averaged in float64 in a fixed order, so the batch size only enters through the
kernels' rounding (measured in tests: far below the tolerance).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from expert.backbone import PixelCodec
from expert.flow import noisy, timestep
from expert.shards import ClipBatch
from expert.text import TextEncoder
from protocol.errors import ParisError
from protocol.run import ValidationSpec


@dataclass
class HeldOut:
    """Held-out clips prepared once: encoded x0, caption states, labels (for the router) and fixed noise."""

    x0: torch.Tensor  # N × C × T × H × W (model space)
    text: torch.Tensor  # N × L × D
    labels: torch.Tensor  # N (cluster of each clip)
    noise: torch.Tensor  # N × G × C × T × H × W
    t_grid: torch.Tensor  # G

    def __len__(self) -> int:
        return len(self.x0)


def _noise_seed(spec_seed: int, cluster: int, position: int) -> int:
    return (spec_seed * 1_000_003 + cluster) * 1_000_033 + position


@torch.no_grad()
def prepare_holdout(clips: ClipBatch, labels: list[int] | np.ndarray, spec: ValidationSpec, codec: PixelCodec,
                    text: TextEncoder) -> HeldOut:
    """Encode the held-out clips and draw their fixed noise. `labels[i]` is clip i's cluster; a clip's noise
    depends only on (noise seed, its cluster, its position among that cluster's held-out clips)."""
    if len(clips) == 0:
        raise ParisError("no held-out clips: this run has no validation split for the cluster")
    labels = np.asarray(labels, dtype=np.int64)
    frames = torch.from_numpy(np.ascontiguousarray(clips.frames))
    x0 = torch.cat([codec.encode(frames[i:i + 16]).float().cpu() for i in range(0, len(frames), 16)])
    states = torch.cat([text(torch.from_numpy(clips.tokens[i:i + 256])) for i in range(0, len(clips), 256)])
    grid = torch.tensor(spec.t_grid, dtype=torch.float32)
    noise = torch.empty((len(x0), len(grid), *x0.shape[1:]), dtype=torch.float32)
    seen: dict[int, int] = {}
    for i, k in enumerate(labels):
        pos = seen.get(int(k), 0)
        seen[int(k)] = pos + 1
        g = torch.Generator().manual_seed(_noise_seed(spec.noise_seed, int(k), pos))
        noise[i] = torch.randn((len(grid), *x0.shape[1:]), generator=g)
    return HeldOut(x0=x0, text=states.float().cpu(), labels=torch.from_numpy(labels), noise=noise, t_grid=grid)


@contextlib.contextmanager
def _exact_fp32():
    """fp32 matmuls on CUDA too (no TF32), so that GPUs and CPUs agree within the stated tolerance."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _pairs(held: HeldOut, batch: int):
    """(clip index, grid index) pairs in a fixed order, `batch` at a time."""
    pairs = [(i, j) for i in range(len(held)) for j in range(len(held.t_grid))]
    for start in range(0, len(pairs), batch):
        chunk = pairs[start:start + batch]
        yield torch.tensor([p[0] for p in chunk]), torch.tensor([p[1] for p in chunk])


@torch.no_grad()
def expert_validation_loss(model: nn.Module, held: HeldOut, *, batch: int = 16,
                           device: torch.device | str = "cpu") -> float:
    """Mean flow-matching MSE over held-out clips × t grid (float64 mean of fp32 per-sample losses)."""
    device = torch.device(device)
    total, count = 0.0, 0
    with _exact_fp32():
        for ci, gi in _pairs(held, batch):
            x0, noise, t = held.x0[ci], held.noise[ci, gi], held.t_grid[gi]
            xt, target = noisy(x0, noise, t)
            pred = model(xt.to(device), timestep(t).to(device), held.text[ci].to(device), return_dict=False)[0]
            per = ((pred.float().cpu() - target) ** 2).flatten(1).mean(1).double()
            total += float(per.sum())
            count += len(per)
    return total / count


@torch.no_grad()
def router_validation(model: nn.Module, held: HeldOut, *, batch: int = 16, device: torch.device | str = "cpu",
                      class_weight: torch.Tensor | None = None) -> dict:
    """Held-out cross-entropy (the router's validation loss) and accuracy, overall and per noise level."""
    device = torch.device(device)
    ce_sum, n = 0.0, 0
    grid = [float(t) for t in held.t_grid]
    correct = {t: [0, 0] for t in grid}
    ce_per = {t: 0.0 for t in grid}
    with _exact_fp32():
        for ci, gi in _pairs(held, batch):
            x0, noise, t = held.x0[ci], held.noise[ci, gi], held.t_grid[gi]
            xt, _ = noisy(x0, noise, t)
            logits = model(xt.to(device), timestep(t).to(device), held.text[ci].to(device)).float().cpu()
            labels = held.labels[ci]
            ce = nn.functional.cross_entropy(logits, labels, reduction="none").double()
            ce_sum += float(ce.sum())
            n += len(ce)
            hit = logits.argmax(1) == labels
            for row, j in enumerate(gi.tolist()):
                correct[grid[j]][0] += int(hit[row])
                correct[grid[j]][1] += 1
                ce_per[grid[j]] += float(ce[row])
    return {
        "loss": ce_sum / n,
        "accuracy": round(sum(c for c, _ in correct.values()) / n, 4),
        "per_noise_level": {f"t={t:g}": {"accuracy": round(c / m, 4), "cross_entropy": round(ce_per[t] / m, 4)}
                            for t, (c, m) in correct.items()},
        "samples": n,
    }


def losses_agree(a: float, b: float, rtol: float) -> bool:
    """Whether two validation losses are the same number up to the run's stated tolerance."""
    return bool(np.isfinite(a) and np.isfinite(b) and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12))
