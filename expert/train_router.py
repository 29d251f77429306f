"""Training the router: cross-entropy of its logits on noisy clips against their true cluster, on the loop of
`train_loop`; its preset and sample are the pure rules of `router_preset`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from expert.efficiency import Efficiency
from expert.flow import noisy, timestep
from expert.router_preset import router_holdout, run_router_preset, stratified_sample
from expert.shards import ClipBatch
from expert.train_inputs import run_clips
from expert.train_loop import Trainer
from expert.validation import router_validation
from protocol.errors import ParisError
from protocol.model import ExpertPreset


class RouterTrainer(Trainer):
    """Cross-entropy of the router's logits on noisy clips x_t against their true cluster.

    Clips come from a bounded, stratified sample (at most `cap` per cluster); each cluster's loss is
    weighted by (its share of the data) / (its share of the sample), so that the optimum is still the
    posterior p(k | x_t, t) of the full data, priors included."""

    kind = "router"

    def __init__(self, preset: ExpertPreset, clips: ClipBatch, labels: np.ndarray, *,
                 data_sizes: np.ndarray | None = None, **kw) -> None:
        if preset.router is None:
            raise ParisError("a router needs a preset with a router head")
        k = preset.router.num_experts
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        sample_sizes = np.bincount(labels, minlength=k).astype(np.float64)
        sizes = sample_sizes if data_sizes is None else np.asarray(data_sizes, dtype=np.float64)
        weight = (sizes / sizes.sum()) / np.maximum(sample_sizes / sample_sizes.sum(), 1e-12)
        self.class_weight = torch.tensor(np.where(sample_sizes > 0, weight, 0.0), dtype=torch.float32)
        super().__init__(preset, clips, **kw)
        self.class_weight = self.class_weight.to(self.device)

    def _build_model(self, seed: int) -> nn.Module:
        from expert.router import Router

        return Router(self.preset.backbone, self.preset.router, self.text_width, seed=seed)

    def validation(self, model: nn.Module | None = None) -> dict | None:
        """Held-out cross-entropy and accuracy per noise level of the EMA router, or of `model` (None without a
        split)."""
        if self.held is None:
            return None
        return router_validation(self.ema if model is None else model, self.held,
                                 batch=self.preset.train.batch_size, device=self.device)

    def validation_loss(self, model: nn.Module | None = None) -> float | None:
        report = self.validation(model)
        return None if report is None else float(report["loss"])

    def _logits(self, model: nn.Module, g: torch.Generator, idx: torch.Tensor, *, dropout: bool):
        """(trunk logits, t, the caption states it was given) for clips `idx`; with `dropout` a share
        `cond_dropout` of the captions is replaced by the null caption."""
        x0, noise, t = self._noisy_batch(g, idx)
        xt, _ = noisy(x0, noise, t)
        text = self.text_states.get(idx)
        if dropout:
            drop = (torch.rand(len(idx), generator=g) < self.preset.train.cond_dropout).view(-1, 1, 1)
            text = torch.where(drop, self.text_states.null.unsqueeze(0), text)
        text = text.to(self.device)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return model(xt, timestep(t), text), t, text

    def _micro_loss(self) -> torch.Tensor:
        """The trunk's cross-entropy, plus the caption prior's on the same (dropped-out) captions: a dropped
        caption teaches the prior that the null caption means p(k), so `combined` on it is p(k | x_t)."""
        g = self.generator
        idx = torch.randint(self.num_clips, (self.preset.train.batch_size,), generator=g)
        logits, _, text = self._logits(self.model, g, idx, dropout=True)
        labels = self.labels[idx].to(self.device)
        loss = nn.functional.cross_entropy(logits.float(), labels, weight=self.class_weight)
        if self.model.prior is not None:
            prior = self.model.caption_logits(text).float()
            loss = loss + nn.functional.cross_entropy(prior, labels, weight=self.class_weight)
        return loss

    @torch.no_grad()
    def evaluate(self, samples: int = 256, seed: int = 1234, *, bins: int = 5, ema: bool = True) -> dict:
        """Accuracy overall and per noise level (t in `bins` equal bins): near t=0 the clip is visible and
        the router should be right; near t=1 it is pure noise and the best is the majority cluster."""
        g = torch.Generator().manual_seed(seed)
        model = self.ema if ema else self.model
        correct, ts = [], []
        for start in range(0, samples, self.preset.train.batch_size):
            n = min(self.preset.train.batch_size, samples - start)
            idx = torch.randint(self.num_clips, (n,), generator=g)
            logits, t, _ = self._logits(model, g, idx, dropout=False)
            correct.append((logits.argmax(1).cpu() == self.labels[idx]).float())
            ts.append(t.cpu())
        c, t = torch.cat(correct), torch.cat(ts)
        edges = torch.linspace(0, 1, bins + 1)
        per_bin = {}
        for i in range(bins):
            m = (t >= edges[i]) & (t < edges[i + 1])
            if m.any():
                per_bin[f"{edges[i]:.1f}-{edges[i + 1]:.1f}"] = round(float(c[m].mean()), 4)
        return {"accuracy": round(float(c.mean()), 4), "per_noise_level": per_bin, "samples": samples}


def router_trainer_for_run(spec, *, data_dir: Path | None = None, cap: int = 2000, preset: ExpertPreset | None = None,
                           device: torch.device | str = "cpu", seed: int | None = None,
                           efficiency: Efficiency | None = None) -> RouterTrainer:
    """A router trainer on the run's local data; `preset` (default: the run's, `run_router_preset`) lets an
    experiment train another router (expert.router_preset.router_preset's options)."""
    clips = run_clips(spec, data_dir)
    held = set(router_holdout(spec))
    train = [i for i in range(len(spec.assignments)) if i not in held]
    labels = np.asarray(spec.assignments)
    holdout = router_holdout(spec)
    return router_trainer_from_clips(spec, clips.select(train), labels[train], cap=cap, preset=preset,
                                     device=device, seed=seed, holdout=clips.select(holdout),
                                     holdout_labels=labels[holdout], efficiency=efficiency)


def router_trainer_from_clips(spec, clips: ClipBatch, labels: np.ndarray, *, cap: int = 2000,
                              preset: ExpertPreset | None = None,
                              device: torch.device | str = "cpu", seed: int | None = None,
                              holdout: ClipBatch | None = None, holdout_labels: np.ndarray | None = None,
                              efficiency: Efficiency | None = None) -> RouterTrainer:
    """A router trainer on a stratified sample (≤ `cap` per cluster) of `clips` labelled by cluster; the loss
    is reweighted to the cluster sizes of the whole run, which may hold more clips than `clips`. `holdout`
    (every cluster's held-out clips, labelled) gives the validation loss that verifiers recompute."""
    seed = spec.seed if seed is None else seed
    idx = stratified_sample(labels, cap, seed)
    preset = preset or run_router_preset(spec)
    return RouterTrainer(preset, clips.select(idx), labels[idx],
                         data_sizes=np.bincount(np.asarray(spec.assignments), minlength=spec.num_clusters),
                         device=device, seed=seed, run_id=spec.run_id, holdout=holdout,
                         holdout_labels=holdout_labels, validation=spec.validation if holdout is not None else None,
                         efficiency=efficiency)
