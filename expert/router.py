"""The router r(x_t, t [, text]) → K logits, whose optimum under cross-entropy is the posterior p(k | x_t, t).

It is the experts' own architecture (a diffusers Wan video transformer, the same patching, time
modulation and cross-attention; narrower and coarser for the light router, `expert.router_preset.light_backbone`)
with a pooled head: the per-patch outputs have K channels and are averaged over the video. Paris' router
sees only x_t and t (`use_text=False`: the text input is a constant zero token); DDM's also reads the
caption. A caption-reading trunk trained with caption dropout serves both: with the null caption it
estimates p(k | x_t), with the caption p(k | x_t, c).

Beside the trunk an optional caption prior p(k | c) (`CaptionPrior`) reads only the frozen text states.
`Router.posterior` turns these into the routing posterior of a mode (protocol.model.RouterHead).
"""

from __future__ import annotations

import torch
from torch import nn

from expert.backbone import build_backbone, real_tokens
from expert.routing import combine_posteriors
from expert.seeding import seeded
from protocol.errors import ParisError
from protocol.model import BackboneConfig, RouterHead


class CaptionPrior(nn.Module):
    """p(k | c) from the frozen text states: the mean and the max of the real (non-padding) tokens' states,
    through a two-layer MLP. The max lets one decisive word (a background's name) show through however long
    the caption; about 25k parameters at text width 96, nothing beside a transformer step."""

    def __init__(self, text_dim: int, num_experts: int, *, hidden: int = 128, seed: int = 0) -> None:
        super().__init__()
        with seeded(seed * 7919 + 17):
            self.net = nn.Sequential(nn.LayerNorm(2 * text_dim), nn.Linear(2 * text_dim, hidden), nn.GELU(),
                                     nn.Linear(hidden, num_experts))

    def forward(self, text: torch.Tensor) -> torch.Tensor:
        keep = real_tokens(text).unsqueeze(-1)  # B×L×1
        states = text.float()
        mean = (states * keep).sum(1) / keep.sum(1).clamp_min(1)
        peak = states.masked_fill(~keep, float("-inf")).amax(1)
        return self.net(torch.cat([mean, peak], -1))


class Router(nn.Module):
    def __init__(self, cfg: BackboneConfig, head: RouterHead, text_dim: int, *, seed: int = 0) -> None:
        super().__init__()
        self.head = head
        self.text_dim = text_dim
        self.trunk = build_backbone(cfg, text_dim, seed=seed, out_channels=head.num_experts)
        self.prior = CaptionPrior(text_dim, head.num_experts, seed=seed) if head.caption_prior else None

    @classmethod
    def from_trunk(cls, trunk: torch.nn.Module, head: RouterHead, text_dim: int,
                   prior: CaptionPrior | None = None) -> Router:
        """Wrap an already built (for example loaded) trunk and caption prior."""
        if bool(head.caption_prior) != (prior is not None):
            raise ParisError("the router's head and its caption prior disagree (one is missing)")
        router = cls.__new__(cls)
        nn.Module.__init__(router)
        router.head, router.text_dim, router.trunk, router.prior = head, text_dim, trunk, prior
        return router

    def _kept(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.head.keep is None else logits[:, list(self.head.keep)]

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        """The trunk's logits (kept outputs): p(k | x_t) for Paris' router, p(k | x_t, c) for DDM's."""
        if not self.head.use_text or text is None:
            text = x.new_zeros((x.shape[0], 1, self.text_dim))
        out = self.trunk(x, timestep, text, return_dict=False)[0]  # B×K×T×H×W
        return self._kept(out.float().mean(dim=(2, 3, 4)))

    def caption_logits(self, text: torch.Tensor) -> torch.Tensor:
        """The caption prior's logits (kept outputs)."""
        if self.prior is None:
            raise ParisError("this router has no caption prior (routing modes caption and combined need one)")
        return self._kept(self.prior(text))

    def cluster_prior(self) -> torch.Tensor:
        """p(k) over the kept outputs, renormalised."""
        if self.head.cluster_prior is None:
            raise ParisError("this router does not record the clusters' shares of the data (mode combined)")
        p = torch.tensor(self.head.cluster_prior, dtype=torch.float32)
        p = p if self.head.keep is None else p[list(self.head.keep)]
        return p / p.sum()

    def posterior(self, x: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor, null: torch.Tensor,
                  mode: str | None = None) -> torch.Tensor:
        """B×K routing posterior of `mode` (default: the head's): `xt` the trunk on the null caption (Paris),
        `joint` the trunk on the caption (DDM), `caption` the caption prior alone, `combined` both (see
        expert.routing.combine_posteriors for the assumption it makes)."""
        mode = mode or self.head.default_mode
        if mode not in self.head.modes:
            raise ParisError(f"router mode {mode!r} is not available: this router offers {', '.join(self.head.modes)}")
        if mode == "joint":
            return self(x, timestep, cond).float().softmax(-1)
        if mode == "caption":
            return self.caption_logits(cond).float().softmax(-1)
        p_x = self(x, timestep, null).float().softmax(-1)
        if mode == "xt":
            return p_x
        p_c = self.caption_logits(cond).float().softmax(-1)
        return combine_posteriors(p_x, p_c, self.cluster_prior().to(p_x.device))
