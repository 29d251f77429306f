"""Training one expert: flow matching on one cluster's clips, with condition dropout for classifier-free
guidance, on the loop of `train_loop`. `trainer_for_run` is what the daemon, `train-local` and verifiers
build."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from expert.backbone import build_backbone
from expert.efficiency import Efficiency
from expert.flow import noisy, timestep
from expert.train_inputs import run_clips
from expert.train_loop import Trainer
from expert.validation import expert_validation_loss


class ExpertTrainer(Trainer):
    """Flow matching for one expert with condition dropout for classifier-free guidance."""

    kind = "expert"

    def _build_model(self, seed: int) -> nn.Module:
        model = build_backbone(self.preset.backbone, self.text_width, seed=seed)
        if self.preset.backbone.init_from is not None:  # an open model's weights (verifiers load the same ones)
            from expert.init_weights import load_initial_weights

            load_initial_weights(model, self.preset.backbone.init_from)
        return model

    def validation_loss(self, model: nn.Module | None = None) -> float | None:
        if self.held is None:
            return None
        return expert_validation_loss(self.ema if model is None else model, self.held,
                                      batch=self.preset.train.batch_size, device=self.device)

    def _micro_batch(self) -> tuple[torch.Tensor, ...]:
        """The preset's batch, drawn in full on every rank (so all ranks consume the RNG alike) and cut to this
        rank's share (`shard`): with DDP over R ranks, rank r trains rows r·B/R … (r+1)·B/R of the very batch one
        process would have trained."""
        tc, g = self.preset.train, self.generator
        idx = torch.randint(self.num_clips, (tc.batch_size,), generator=g)
        keep = self.shard_rows(tc.batch_size)
        x0, noise, t = self._noisy_batch(g, idx, keep)
        drop = (torch.rand(tc.batch_size, generator=g) < tc.cond_dropout).view(-1, 1, 1)[keep]
        idx = idx[keep]
        text = torch.where(drop, self.text_states.null.unsqueeze(0), self.text_states.get(idx)).to(self.device)
        return x0, noise, t, text

    def _loss(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        xt, target = noisy(x0, noise, t)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            pred = self.forward_model(xt, timestep(t), text, return_dict=False)[0]
        return nn.functional.mse_loss(pred.float(), target)

    def _micro_loss(self) -> torch.Tensor:
        return self._loss(*self._micro_batch())

    @torch.no_grad()
    def evaluate(self, batches: int = 4, seed: int = 1234, *, ema: bool = False) -> float:
        """Mean flow-matching loss on fixed clips, noise and t drawn from `seed` (no condition dropout):
        comparable across steps and runs, and it leaves the training RNG untouched."""
        tc = self.preset.train
        g = torch.Generator().manual_seed(seed)
        model = self.ema if ema else self.model
        losses = []
        for _ in range(batches):
            idx = torch.randint(self.num_clips, (tc.batch_size,), generator=g)
            x0, noise, t = self._noisy_batch(g, idx)
            xt, target = noisy(x0, noise, t)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
                pred = model(xt, timestep(t), self.text_states.get(idx).to(self.device), return_dict=False)[0]
            losses.append(nn.functional.mse_loss(pred.float(), target).item())
        return float(np.mean(losses))


def trainer_for_run(spec, cluster: int, *, data_dir: Path | None = None, device: torch.device | str = "cpu",
                    seed: int | None = None, efficiency: Efficiency | None = None) -> ExpertTrainer:
    """A trainer for cluster `cluster` of run `spec` (a protocol.run.RunSpec), on verified local data."""
    clips = run_clips(spec, data_dir)
    return ExpertTrainer(spec.preset, clips.select(spec.train_clips(cluster)), device=device,
                         seed=spec.seed if seed is None else seed, run_id=spec.run_id, cluster=cluster,
                         holdout=clips.select(spec.holdout_clips(cluster)), validation=spec.validation,
                         efficiency=efficiency)
