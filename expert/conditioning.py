"""Whether a model uses its caption, measured without sampling on real clips of the prompts noised to fixed
levels t (two forward passes per clip and level, so a run's eval or dashboard can afford it):

- `conditioning_ratio`: ‖v_c − v_u‖ / ‖v_u‖, the relative difference between the conditional and the
  unconditional velocities. A model that ignores its text is near 0 at every level, and then guidance does
  nothing (the demo's expert that prompted issue "prompts must steer the video" measured 0.005).
- `denoised_accuracy`: the synthetic-data judge's attribute accuracy on the one-step estimate of the clean
  clip, x̂₀ = x_t − t·v, with the caption and with the empty one. It says *where* the caption is needed and
  whether the model uses it there: at a level where x̂₀ without the caption already shows the prompt's
  attributes, x_t shows them, and no model, however faithful, gains from the caption; its ratio there is
  small by necessity. By Bayes, E[x₀ | x_t] = Σ_a p(a | x_t) E[x₀ | x_t, a] over the attributes a a caption
  names, so ‖E[x₀ | x_t, a] − E[x₀ | x_t]‖ ≤ (1 − p(a | x_t)) · max_a' ‖E[x₀ | x_t, a] − E[x₀ | x_t, a']‖:
  once x_t gives the attributes away (p(a | x_t) → 1), the ideal model's v_c and v_u coincide."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from expert.backbone import PixelCodec
from expert.evaluate import PROMPT_ATTRIBUTES
from expert.flow import noisy, timestep
from expert.sampling import encode_prompts
from expert.synth_classifier import SynthJudge, accuracy
from expert.text import TextEncoder

# 0.98 is where the caption is the only source of an object's colour: on the built-in data that colour can be
# read off x_t at the object's pixels with accuracy 1.0 at t = 0.5 and 0.8, 0.985 at 0.9, 0.75 at 0.95 and
# 0.38 at 0.98 (chance 0.17). Below ~0.9 an ideal model gains little from the caption, so its ratio there is
# small whether or not it follows the prompt.
T_LEVELS = (0.98, 0.9, 0.5, 0.1)


@torch.no_grad()
def _velocities(model: torch.nn.Module, text: TextEncoder, codec: PixelCodec, clips: np.ndarray,
                prompts: list[str], t_levels: tuple[float, ...], seed: int, device: torch.device | str,
                batch: int) -> Iterator[tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]]:
    """(level, x_t, v_c, v_u) per batch of `clips` noised to each level with fixed noise from `seed`."""
    if len(clips) != len(prompts) or not len(prompts):
        raise ValueError("give one prompt per clip, and at least one")
    device = torch.device(device)
    g = torch.Generator().manual_seed(seed)
    x0 = codec.encode(torch.from_numpy(np.ascontiguousarray(clips)).to(device)).float()
    noise = torch.randn(x0.shape, generator=g).to(device)
    cond, null = encode_prompts(text, prompts)
    for level in t_levels:
        for s in range(0, len(prompts), batch):
            x, c, u = x0[s : s + batch], cond[s : s + batch].to(device), null[s : s + batch].to(device)
            t = torch.full((len(x),), float(level), device=device)
            xt, _ = noisy(x, noise[s : s + batch], t)
            ts = timestep(t)
            v_c, v_u = (model(xt, ts, text_states, return_dict=False)[0].float() for text_states in (c, u))
            yield level, xt, v_c, v_u


def conditioning_ratio(model: torch.nn.Module, text: TextEncoder, codec: PixelCodec, clips: np.ndarray,
                       prompts: list[str], *, t_levels: tuple[float, ...] = T_LEVELS, seed: int = 0,
                       device: torch.device | str = "cpu", batch: int = 8) -> dict[str, float]:
    """{"t=0.9": ratio, …}: ‖v_c − v_u‖ / ‖v_u‖ summed over `clips` (uint8 N×T×H×W×3, captioned by `prompts`)
    noised to each level with fixed noise from `seed`."""
    diff = {level: 0.0 for level in t_levels}
    base = dict(diff)
    for level, _, v_c, v_u in _velocities(model, text, codec, clips, prompts, t_levels, seed, device, batch):
        diff[level] += float((v_c - v_u).pow(2).sum())
        base[level] += float(v_u.pow(2).sum())
    return {f"t={level:g}": round((diff[level] ** 0.5) / max(base[level] ** 0.5, 1e-12), 5) for level in t_levels}


def denoised_accuracy(model: torch.nn.Module, text: TextEncoder, codec: PixelCodec, judge: SynthJudge,
                      clips: np.ndarray, present: np.ndarray, prompts: list[str], *,
                      t_levels: tuple[float, ...] = T_LEVELS, seed: int = 0, device: torch.device | str = "cpu",
                      batch: int = 8) -> dict[str, dict[str, dict[str, float]]]:
    """{"t=0.5": {"with_caption": {attribute: accuracy}, "without_caption": {…}}, …}: the judge's accuracy
    (against `present`, N×A×V as `expert.synth_classifier.generator_clips` gives it) on x̂₀ = x_t − t·v from
    the conditional and the unconditional velocity, per level."""
    seen: dict[float, tuple[list[np.ndarray], list[np.ndarray]]] = {level: ([], []) for level in t_levels}
    for level, xt, v_c, v_u in _velocities(model, text, codec, clips, prompts, t_levels, seed, device, batch):
        for out, v in zip(seen[level], (v_c, v_u), strict=True):
            out.append(codec.decode(xt - level * v).cpu().numpy())
    result = {}
    for level, (with_c, without) in seen.items():
        result[f"t={level:g}"] = {
            name: {a: v for a, v in accuracy(judge.predict(np.concatenate(videos)), present).items()
                   if a in PROMPT_ATTRIBUTES}
            for name, videos in (("with_caption", with_c), ("without_caption", without))}
    return result
