"""The router r(x_t, t [, text]) → K logits, whose optimum under cross-entropy is the posterior p(k | x_t, t).

It is the experts' own architecture (a diffusers Wan video transformer, the same patching, time
modulation and cross-attention) with a pooled head: the per-patch outputs have K channels and are averaged
over the video. Paris' router sees only x_t and t (`use_text=False`: the text input is a constant zero
token); DDM's also reads the caption.
"""

from __future__ import annotations

import torch
from torch import nn

from expert.backbone import build_backbone
from protocol.model import BackboneConfig, RouterHead


class Router(nn.Module):
    def __init__(self, cfg: BackboneConfig, head: RouterHead, text_dim: int, *, seed: int = 0) -> None:
        super().__init__()
        self.head = head
        self.text_dim = text_dim
        self.trunk = build_backbone(cfg, text_dim, seed=seed, out_channels=head.num_experts)

    @classmethod
    def from_trunk(cls, trunk: torch.nn.Module, head: RouterHead, text_dim: int) -> Router:
        """Wrap an already built (for example loaded) trunk."""
        router = cls.__new__(cls)
        nn.Module.__init__(router)
        router.head, router.text_dim, router.trunk = head, text_dim, trunk
        return router

    def forward(self, x: torch.Tensor, timestep: torch.Tensor, text: torch.Tensor | None = None) -> torch.Tensor:
        if not self.head.use_text or text is None:
            text = x.new_zeros((x.shape[0], 1, self.text_dim))
        out = self.trunk(x, timestep, text, return_dict=False)[0]  # B×K×T×H×W
        logits = out.float().mean(dim=(2, 3, 4))
        return logits if self.head.keep is None else logits[:, list(self.head.keep)]
