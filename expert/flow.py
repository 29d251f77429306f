"""Flow matching in the convention of diffusers' FlowMatchEulerDiscreteScheduler:
x_t = (1 - t)·x_0 + t·ε, the network predicts v = ε - x_0, timestep = 1000·t."""

from __future__ import annotations

import torch


def sample_t(n: int, generator: torch.Generator, *, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Logit-normal t in (0, 1), as in SD3 / Paris: more weight on the middle of the path."""
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator))


def sample_train_t(n: int, generator: torch.Generator, *, mean: float = 0.0, std: float = 1.0,
                   uniform: float | None = None) -> torch.Tensor:
    """Training t: logit-normal, with a share `uniform` of the rows drawn from U(0, 1) instead (None: the
    logit-normal draw alone, exactly as before the option existed)."""
    t = sample_t(n, generator, mean=mean, std=std)
    if uniform is None:
        return t
    flat = torch.rand(n, generator=generator)
    return torch.where(torch.rand(n, generator=generator) < uniform, flat, t)


def noisy(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity)."""
    tt = t.view(-1, *([1] * (x0.dim() - 1))).to(x0)
    return (1 - tt) * x0 + tt * noise, noise - x0


def timestep(t: torch.Tensor) -> torch.Tensor:
    return t * 1000.0
