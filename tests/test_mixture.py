"""The mixture identity behind DDM, checked analytically.

Data: a mixture of K isotropic Gaussians N(μ_k, σ_k² I) with weights π_k. Along the flow
x_t = (1 - t)·x_0 + t·ε, expert k's exact velocity is closed-form, the exact posterior p(k | x_t) is
closed-form, and the exact velocity of the whole mixture follows from its score alone:
v(x, t) = (−t·∇log p_t(x) − x) / (1 − t). `full` routing through our ensemble code must reproduce it."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from expert.pipeline import ensemble_velocity
from expert.routing import parse_strategy
from protocol.model import BackboneConfig, RouterHead

SHAPE = (2, 1, 2, 2)  # a tiny "video": C×T×H×W, d = 8
D = math.prod(SHAPE)


class Mixture:
    def __init__(self, k: int = 3, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.mu = torch.randn(k, D, generator=g, dtype=torch.float64) * 2.5
        self.sigma = torch.rand(k, generator=g, dtype=torch.float64) * 0.4 + 0.2
        self.pi = torch.softmax(torch.randn(k, generator=g, dtype=torch.float64), 0)

    def log_components(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """B×K: log π_k + log N(x; (1−t)μ_k, s_k² I)."""
        t = t.view(-1, 1)
        s2 = (1 - t) ** 2 * self.sigma**2 + t**2  # B×K
        diff = x.view(-1, 1, D) - (1 - t).view(-1, 1, 1) * self.mu  # B×K×D
        return self.pi.log() - 0.5 * (diff**2).sum(-1) / s2 - 0.5 * D * torch.log(2 * math.pi * s2)

    def expert_velocity(self, k: int, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.view(-1, 1)
        s2 = (1 - t) ** 2 * self.sigma[k] ** 2 + t**2
        r = x.view(-1, D) - (1 - t) * self.mu[k]
        e_eps = t / s2 * r
        e_x0 = self.mu[k] + (1 - t) * self.sigma[k] ** 2 / s2 * r
        return e_eps - e_x0

    def exact_velocity(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, D).clone().requires_grad_(True)
        score = torch.autograd.grad(torch.logsumexp(self.log_components(x, t), 1).sum(), x)[0]
        return ((-t.view(-1, 1) * score - x) / (1 - t.view(-1, 1))).detach()

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        k = torch.multinomial(self.pi, n, replacement=True, generator=g)
        x0 = self.mu[k] + self.sigma[k].view(-1, 1) * torch.randn(n, D, generator=g, dtype=torch.float64)
        return x0, k


class AnalyticExpert(nn.Module):
    """Speaks the expert interface (x, timestep·1000, text) → (v,) with the closed-form flow of one component."""

    def __init__(self, mixture: Mixture, k: int) -> None:
        super().__init__()
        self.m, self.k = mixture, k

    def forward(self, x, timestep, text, return_dict=False):
        return (self.m.expert_velocity(self.k, x, timestep.double() / 1000).view(x.shape),)


class AnalyticRouter(nn.Module):
    def __init__(self, mixture: Mixture) -> None:
        super().__init__()
        self.m = mixture

    def forward(self, x, timestep, text=None):
        return self.m.log_components(x.view(-1, D), timestep.double() / 1000)

    def posterior(self, x, timestep, cond, null, mode=None):  # the x_t routing posterior (expert.router.Router)
        return self(x, timestep).float().softmax(-1)


def _points(n: int, t_value: float | None = None, seed: int = 1):
    m = Mixture()
    g = torch.Generator().manual_seed(seed)
    x0, _ = m.sample(n, g)
    t = torch.rand(n, generator=g, dtype=torch.float64) * 0.96 + 0.02 if t_value is None else torch.full(
        (n,), t_value, dtype=torch.float64)
    x = (1 - t.view(-1, 1)) * x0 + t.view(-1, 1) * torch.randn(n, D, generator=g, dtype=torch.float64)
    return m, x.view(n, *SHAPE), t


def _ensemble(m: Mixture, x, t, strategy: str, router=None):
    experts = [AnalyticExpert(m, k) for k in range(len(m.pi))]
    cond = torch.zeros(x.shape[0], 1, 1, dtype=torch.float64)
    out = []
    for i in range(x.shape[0]):  # the scheduler passes one t per step; here each point has its own
        v, probs, weights = ensemble_velocity(experts, router or AnalyticRouter(m), x[i : i + 1], t[i] * 1000,
                                              cond[i : i + 1], cond[i : i + 1], parse_strategy(strategy))
        out.append((v.double().view(1, D), probs, weights))
    return (torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out]).double(),
            torch.cat([o[2] for o in out]).double())


def test_full_routing_with_the_exact_posterior_is_the_exact_mixture_flow():
    m, x, t = _points(200)
    v_full, _, _ = _ensemble(m, x, t, "full")
    v_exact = m.exact_velocity(x, t)
    assert torch.allclose(v_full, v_exact, rtol=1e-4, atol=1e-4), (v_full - v_exact).abs().max()


def test_top1_departs_as_the_theory_says():
    errors = {}
    for tv in (0.1, 0.5, 0.95):
        m, x, t = _points(100, tv)
        v_top1, probs, _ = _ensemble(m, x, t, "top1")
        v_exact = m.exact_velocity(x, t)
        err = (v_top1 - v_exact).norm(dim=1)
        # |v − v_top1| = |Σ_k p_k (v_k − v_k*)| ≤ (1 − p_max) · max_k |v_k − v_k*|
        vk = torch.stack([m.expert_velocity(k, x, t) for k in range(len(m.pi))], 1)
        star = probs.argmax(1)
        spread = (vk - vk[torch.arange(len(x)), star].unsqueeze(1)).norm(dim=2).max(1).values
        assert (err <= (1 - probs.max(1).values) * spread + 1e-6).all()
        errors[tv] = float(err.mean())
    # nearly exact where the posterior is sharp (little noise), far off where it is flat (much noise)
    assert errors[0.1] < 1e-3 and errors[0.95] > 0.5 and errors[0.1] < errors[0.5] < errors[0.95]
    # top-2 is never worse than top-1 on average
    m, x, t = _points(100, 0.95)
    assert (_ensemble(m, x, t, "top2")[0] - m.exact_velocity(x, t)).norm(dim=1).mean() <= errors[0.95]


def _train_router(m: Mixture, steps: int):
    from expert.router import Router

    torch.manual_seed(0)
    cfg = BackboneConfig(frames=1, height=2, width=2, in_channels=SHAPE[0], patch_size=(1, 1, 1), num_layers=2,
                         num_heads=2, head_dim=16, ffn_dim=64, freq_dim=32)
    router = Router(cfg, RouterHead(num_experts=len(m.pi)), text_dim=8)
    opt = torch.optim.AdamW(router.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(5)
    for _ in range(steps):
        x0, k = m.sample(128, g)
        t = torch.sigmoid(torch.randn(128, generator=g, dtype=torch.float64))
        xt = (1 - t.view(-1, 1)) * x0 + t.view(-1, 1) * torch.randn(128, D, generator=g, dtype=torch.float64)
        logits = router(xt.float().view(-1, *SHAPE), (t * 1000).float())
        loss = nn.functional.cross_entropy(logits, k)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return router.eval()


class _Float(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x, ts, text=None):
        return self.inner(x.float(), ts.float())

    def posterior(self, x, ts, cond, null, mode=None):
        return self(x, ts).float().softmax(-1)


@pytest.mark.slow
def test_a_trained_tiny_router_comes_close_to_the_exact_flow():
    m, x, t = _points(150, seed=3)
    router = _Float(_train_router(m, 250))
    with torch.no_grad():
        v_trained, probs, _ = _ensemble(m, x, t, "full", router=router)
    v_exact = m.exact_velocity(x, t)
    exact_post = torch.softmax(m.log_components(x.view(-1, D), t), 1)
    uniform = torch.stack([m.expert_velocity(k, x, t) for k in range(len(m.pi))], 1).mean(1)
    err_trained = (v_trained - v_exact).norm(dim=1).mean()
    err_uniform = (uniform - v_exact).norm(dim=1).mean()
    assert err_trained < 0.25 * err_uniform, (err_trained, err_uniform)
    assert (probs - exact_post).abs().sum(1).mean() < 0.3
