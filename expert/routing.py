"""Routing strategies: from the router's posterior p(k | x_t, t) to the weights that mix the experts.

Pure functions over tensors, so that they can be tested against the theory without any model:
`full` keeps every weight (the exact mixture when the router is the true posterior); `topk:K` keeps the K
largest and renormalises (`top1` = DDM's choice, `top2` = Paris'); `threshold:P` keeps every weight ≥ P
(at least the largest) and renormalises; `sample:K` draws K experts from the posterior without
replacement and weighs them equally.
"""

from __future__ import annotations

import re
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from protocol.errors import ParisError


class Strategy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["full", "topk", "threshold", "sample"]
    k: int = Field(default=1, ge=1)
    p: float = Field(default=0.0, ge=0.0, le=1.0)

    def __str__(self) -> str:
        if self.kind == "full":
            return "full"
        if self.kind == "threshold":
            return f"threshold:{self.p:g}"
        return f"{self.kind}:{self.k}"


def parse_strategy(text: str) -> Strategy:
    """`full`, `top1`, `top2`, `topk:K`, `threshold:P`, `sample:K`."""
    s = text.strip().lower()
    if s == "full":
        return Strategy(kind="full")
    if m := re.fullmatch(r"top(\d+)", s) or re.fullmatch(r"topk:(\d+)", s):
        return Strategy(kind="topk", k=max(1, int(m.group(1))))
    if m := re.fullmatch(r"threshold:(0?\.\d+|[01](\.\d*)?)", s):
        return Strategy(kind="threshold", p=float(m.group(1)))
    if m := re.fullmatch(r"sample:(\d+)", s):
        return Strategy(kind="sample", k=max(1, int(m.group(1))))
    raise ParisError(f"unknown strategy {text!r}: use full, top1, top2, topk:K, threshold:P or sample:K")


def routing_weights(probs: torch.Tensor, strategy: Strategy, generator: torch.Generator | None = None) -> torch.Tensor:
    """B×K posterior → B×K mixing weights (rows sum to 1; zero for experts that are not run)."""
    b, k = probs.shape
    if strategy.kind == "full":
        return probs / probs.sum(1, keepdim=True)
    if strategy.kind == "topk":
        top = probs.topk(min(strategy.k, k), dim=1)
        w = torch.zeros_like(probs).scatter(1, top.indices, top.values)
    elif strategy.kind == "threshold":
        keep = probs >= strategy.p
        keep[torch.arange(b), probs.argmax(1)] = True
        w = probs * keep
    else:
        idx = torch.multinomial(probs.float().cpu(), min(strategy.k, k), replacement=False, generator=generator)
        w = torch.zeros_like(probs).scatter(1, idx.to(probs.device), 1.0)
    return w / w.sum(1, keepdim=True)


def combine_posteriors(p_xt: torch.Tensor, p_c: torch.Tensor, p_k: torch.Tensor) -> torch.Tensor:
    """p(k | x_t, c) ∝ p(k | x_t) · p(k | c) / p(k), row-normalised (B×K, B×K, K → B×K).

    Exact when x_t and the caption are independent given the cluster (p(x_t | k, c) = p(x_t | k)): Bayes'
    rule on both and dividing out the prior counted twice. At pure noise p(k | x_t) = p(k) and the caption
    decides; near clean data p(k | x_t) is sharp and the image does. The assumption is wrong where the caption
    says more about x_t than the cluster does (its colour or shape words describe the same pixels the x_t
    router reads); then the evidence is counted twice and the posterior is over-confident. How wrong it is on a
    run is measured by the router's calibration report (expert.validation.router_report)."""
    logp = p_xt.float().clamp_min(1e-30).log() + p_c.float().clamp_min(1e-30).log() \
        - p_k.float().clamp_min(1e-30).log()
    return logp.softmax(-1)


def mix(weights: torch.Tensor, velocities: dict[int, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """Σ_k w_k · v_k over the experts that were run; `velocities[k]` holds rows for every batch item."""
    out = torch.zeros_like(like, dtype=torch.float32)
    for k, v in velocities.items():
        out += weights[:, k].view(-1, *([1] * (like.dim() - 1))).to(out) * v.float()
    return out
