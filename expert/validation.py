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
from expert.shards import ClipBatch, tokenize
from expert.text import TextEncoder
from expert.train_inputs import TextStates
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
    null: torch.Tensor | None = None  # L × D: the null caption's states (the unconditional branch)

    def __len__(self) -> int:
        return len(self.x0)


def _noise_seed(spec_seed: int, cluster: int, position: int) -> int:
    return (spec_seed * 1_000_003 + cluster) * 1_000_033 + position


@torch.no_grad()
def prepare_holdout(clips: ClipBatch, labels: list[int] | np.ndarray, spec: ValidationSpec, codec: PixelCodec | None,
                    text: TextEncoder | None) -> HeldOut:
    """Encode the held-out clips (or take a latent data set's latents as they are: `codec` None) and draw
    their fixed noise. `labels[i]` is clip i's cluster; a clip's noise depends only on (noise seed, its
    cluster, its position among that cluster's held-out clips). Latents encoded once by the run's creator
    make every verifier's loss start from the same bytes, whatever VAE kernels its device has."""
    if len(clips) == 0:
        raise ParisError("no held-out clips: this run has no validation split for the cluster")
    labels = np.asarray(labels, dtype=np.int64)
    if codec is None:
        if clips.latents is None:
            raise ParisError("held-out clips without latents need the model's codec to encode them")
        x0 = torch.from_numpy(np.ascontiguousarray(clips.latents)).float()
    else:
        frames = torch.from_numpy(np.ascontiguousarray(clips.pixels("the held-out")))
        x0 = torch.cat([codec.encode(frames[i:i + 16]).float().cpu() for i in range(0, len(frames), 16)])
    if text is None:  # a stored encoder: the states came with the data (computed once at `run init`)
        stored = TextStates.stored(clips)
        states, null = stored.get(torch.arange(len(clips))), stored.null
    else:
        states = torch.cat([text(torch.from_numpy(clips.tokens[i:i + 256])) for i in range(0, len(clips), 256)])
        null = text(torch.from_numpy(tokenize([""])))[0].float().cpu()
    grid = torch.tensor(spec.t_grid, dtype=torch.float32)
    noise = torch.empty((len(x0), len(grid), *x0.shape[1:]), dtype=torch.float32)
    seen: dict[int, int] = {}
    for i, k in enumerate(labels):
        pos = seen.get(int(k), 0)
        seen[int(k)] = pos + 1
        g = torch.Generator().manual_seed(_noise_seed(spec.noise_seed, int(k), pos))
        noise[i] = torch.randn((len(grid), *x0.shape[1:]), generator=g)
    return HeldOut(x0=x0, text=states.float().cpu(), labels=torch.from_numpy(labels), noise=noise, t_grid=grid,
                   null=null)


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


def _trunk_inputs(model: nn.Module, held: HeldOut) -> dict[str, bool]:
    """Which trunk inputs a router is trained on: the caption (every router; Paris' ignores it) and, for a
    caption-reading trunk trained with caption dropout, the null caption too."""
    return {"caption": True, "null": bool(model.head.use_text) and held.null is not None}


@torch.no_grad()
def router_validation(model: nn.Module, held: HeldOut, *, batch: int = 16, device: torch.device | str = "cpu",
                      class_weight: torch.Tensor | None = None) -> dict:
    """Held-out cross-entropy (the router's validation loss) and accuracy, overall and per noise level, on
    the run's t grid and fixed noise. The loss is the sum of what the router is trained on: the trunk's mean
    cross-entropy on the caption, on the null caption (caption-reading trunks) and the caption prior's."""
    device = torch.device(device)
    inputs = _trunk_inputs(model, held)
    grid = [float(t) for t in held.t_grid]
    stats = {(name, t): [0.0, 0, 0] for name, on in inputs.items() if on for t in grid}  # ce, hits, n
    with _exact_fp32():
        for ci, gi in _pairs(held, batch):
            xt, _ = noisy(held.x0[ci], held.noise[ci, gi], held.t_grid[gi])
            labels = held.labels[ci]
            for name, on in inputs.items():
                if not on:
                    continue
                text = held.text[ci] if name == "caption" else held.null.expand(len(ci), -1, -1)
                logits = model(xt.to(device), timestep(held.t_grid[gi]).to(device), text.to(device)).float().cpu()
                ce = nn.functional.cross_entropy(logits, labels, reduction="none").double()
                hit = logits.argmax(1) == labels
                for row, j in enumerate(gi.tolist()):
                    s = stats[(name, grid[j])]
                    s[0] += float(ce[row])
                    s[1] += int(hit[row])
                    s[2] += 1
    n = sum(s[2] for (name, _), s in stats.items() if name == "caption")
    loss = sum(sum(s[0] for (nm, _), s in stats.items() if nm == name) / n
               for name, on in inputs.items() if on)
    report = {
        "accuracy": round(sum(s[1] for (nm, _), s in stats.items() if nm == "caption") / n, 4),
        "per_noise_level": {f"t={t:g}": {"accuracy": round(stats[("caption", t)][1] / stats[("caption", t)][2], 4),
                                         "cross_entropy": round(stats[("caption", t)][0] / stats[("caption", t)][2], 4)}
                            for t in grid},
        "samples": n,
    }
    if inputs["null"]:
        report["per_noise_level_null_caption"] = {
            f"t={t:g}": {"accuracy": round(stats[("null", t)][1] / stats[("null", t)][2], 4),
                         "cross_entropy": round(stats[("null", t)][0] / stats[("null", t)][2], 4)} for t in grid}
    if getattr(model, "prior", None) is not None:
        with _exact_fp32():
            logits = torch.cat([model.caption_logits(held.text[i:i + 256].to(device)).float().cpu()
                                for i in range(0, len(held), 256)])
        ce = nn.functional.cross_entropy(logits, held.labels, reduction="none").double()
        loss += float(ce.mean())
        report["caption_prior"] = {"accuracy": round(float((logits.argmax(1) == held.labels).float().mean()), 4),
                                   "cross_entropy": round(float(ce.mean()), 4)}
    return {"loss": loss, **report}


REPORT_LEVELS = (0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.98, 1.0)


def expected_calibration_error(probs: torch.Tensor, labels: torch.Tensor, bins: int = 10) -> float:
    """ECE: the gap between confidence and accuracy, averaged over `bins` equal-width confidence bins
    weighted by how many predictions fall in each."""
    conf, pred = probs.max(1)
    hit = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = 0.0
    for i in range(bins):
        m = (conf > edges[i]) & (conf <= edges[i + 1]) if i else (conf <= edges[1])
        if m.any():
            total += float(m.float().mean()) * abs(float(hit[m].mean()) - float(conf[m].mean()))
    return total


@torch.no_grad()
def router_report(model: nn.Module, held: HeldOut, *, levels: tuple[float, ...] = REPORT_LEVELS, batch: int = 16,
                  device: torch.device | str = "cpu", seed: int = 0) -> dict:
    """For every routing mode the router offers (protocol.model.RouterHead.modes) and every noise level
    (t = 1 included: pure noise, where only the caption can tell the cluster): held-out accuracy,
    cross-entropy (NLL) and expected calibration error of the routing posterior. Noise is drawn from `seed`
    per level; a report, not the verified validation loss."""
    device = torch.device(device)
    modes = model.head.modes
    null = held.null if held.null is not None else torch.zeros_like(held.text[0])
    out: dict[str, dict] = {m: {} for m in modes}
    for level in levels:
        g = torch.Generator().manual_seed(seed * 1009 + round(level * 1000))
        probs: dict[str, list[torch.Tensor]] = {m: [] for m in modes}
        for start in range(0, len(held), batch):
            x0 = held.x0[start:start + batch]
            t = torch.full((len(x0),), float(level))
            xt, _ = noisy(x0, torch.randn(x0.shape, generator=g), t)
            cond = held.text[start:start + batch].to(device)
            for m in modes:
                probs[m].append(model.posterior(xt.to(device), timestep(t).to(device), cond,
                                                null.expand(len(x0), -1, -1).to(device), m).float().cpu())
        for m in modes:
            p = torch.cat(probs[m])
            out[m][f"t={level:g}"] = {
                "accuracy": round(float((p.argmax(1) == held.labels).float().mean()), 4),
                "nll": round(float(-p.clamp_min(1e-12).log().gather(1, held.labels[:, None]).mean()), 4),
                "ece": round(expected_calibration_error(p, held.labels), 4)}
    return {"modes": out, "samples": len(held), "levels": list(levels)}


def losses_agree(a: float, b: float, rtol: float) -> bool:
    """Whether two validation losses are the same number up to the run's stated tolerance."""
    return bool(np.isfinite(a) and np.isfinite(b) and abs(a - b) <= rtol * max(abs(a), abs(b), 1e-12))
