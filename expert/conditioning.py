"""Whether a model uses its caption: the relative difference between its conditional and unconditional
velocities, ‖v_c − v_u‖ / ‖v_u‖, per noise level, on real clips of the prompts noised to that level.

A model that ignores its text has a ratio near 0 at every level, and then guidance does nothing (the demo's
expert that prompted issue "prompts must steer the video" measured 0.005). It is cheap: two forward
passes per clip and level, no sampling, so a run's eval or dashboard can afford it."""

from __future__ import annotations

import numpy as np
import torch

from expert.backbone import PixelCodec
from expert.flow import noisy, timestep
from expert.sampling import encode_prompts
from expert.text import TextEncoder

# 0.98 is where the caption is the only source of an object's colour: on the built-in data that colour can be
# read off x_t at the object's pixels with accuracy 1.0 at t = 0.5 and 0.8, 0.985 at 0.9, 0.75 at 0.95 and
# 0.38 at 0.98 (chance 0.17). Below ~0.9 an ideal model gains little from the caption, so its ratio there is
# small whether or not it follows the prompt.
T_LEVELS = (0.98, 0.9, 0.5, 0.1)


@torch.no_grad()
def conditioning_ratio(model: torch.nn.Module, text: TextEncoder, codec: PixelCodec, clips: np.ndarray,
                       prompts: list[str], *, t_levels: tuple[float, ...] = T_LEVELS, seed: int = 0,
                       device: torch.device | str = "cpu", batch: int = 8) -> dict[str, float]:
    """{"t=0.9": ratio, …}: ‖v_c − v_u‖ / ‖v_u‖ summed over `clips` (uint8 N×T×H×W×3, captioned by `prompts`)
    noised to each level with fixed noise from `seed`."""
    if len(clips) != len(prompts) or not len(prompts):
        raise ValueError("give one prompt per clip, and at least one")
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    x0 = codec.encode(torch.from_numpy(np.ascontiguousarray(clips)).to(device)).float()
    noise = torch.randn(x0.shape, generator=g).to(device)
    cond, null = encode_prompts(text, prompts)
    out = {}
    for level in t_levels:
        diff = base = 0.0
        for s in range(0, len(prompts), batch):
            x, c, u = x0[s : s + batch], cond[s : s + batch].to(device), null[s : s + batch].to(device)
            t = torch.full((len(x),), float(level), device=device)
            xt, _ = noisy(x, noise[s : s + batch], t)
            ts = timestep(t)
            v_c = model(xt, ts, c, return_dict=False)[0].float()
            v_u = model(xt, ts, u, return_dict=False)[0].float()
            diff += float((v_c - v_u).pow(2).sum())
            base += float(v_u.pow(2).sum())
        out[f"t={level:g}"] = round((diff ** 0.5) / max(base ** 0.5, 1e-12), 5)
    return out
