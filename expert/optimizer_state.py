"""Whether an AdamW state could have come from honest training: a peer's checkpoint carries its optimizer
state, and a state no clipped training can leave (a moment of 1e30 freezes the weights) is refused before
anyone resumes from it."""

from __future__ import annotations

import torch


def optimizer_state_problem(state: dict[int, dict[str, torch.Tensor]], params: list[torch.Tensor], grad_clip: float,
                            updates: int) -> str:
    """Why an AdamW state cannot have come from training with gradients clipped to `grad_clip` ("" if it can):
    every moment fits its parameter and is finite; the first moment's norm and the second moment's sum are at
    most `grad_clip`² (averages of clipped gradients and of their squares); the second moment is not negative;
    each step counter equals the number of optimizer updates (`updates`: steps less skipped ones). A state that
    passes resumes training as its own trainer would; one that fails (a moment of 1e30 freezes the weights)
    is refused before anyone trains from it."""
    first = second = 0.0
    for i, entry in state.items():
        for name, t in entry.items():
            if name == "step":
                if t.numel() != 1 or float(t) != float(updates):
                    return f"optimizer step counter {t.flatten()[:1].tolist()} is not its {updates} updates"
                continue
            if name not in ("exp_avg", "exp_avg_sq"):
                return f"unexpected optimizer moment {name!r}"
            if t.shape != params[i].shape or not t.is_floating_point() or not bool(torch.isfinite(t).all()):
                return f"optimizer moment {i}.{name} does not fit its parameter or is not finite"
            if name == "exp_avg":
                first += float((t.double() ** 2).sum())
            elif bool((t < 0).any()):
                return f"optimizer moment {i}.exp_avg_sq is negative"
            else:
                second += float(t.double().sum())
    bound = grad_clip**2 * (1 + 1e-3) + 1e-12
    if first > bound or second > bound:
        return (f"optimizer moments (|m|² = {first:.3g}, Σv = {second:.3g}) exceed what gradients clipped to "
                f"{grad_clip:g} can leave ({grad_clip**2:g})")
    return ""
