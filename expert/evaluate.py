"""Offline evaluation on the synthetic data: FVD-synth and prompt-attribute accuracy of a sampler, plus FVD
(I3D) and CLIP text-video similarity when their pretrained networks are given.

Prompts come from fresh generator clips (a seed no run trains on), so every prompt has known attributes
and a real clip to compare against. The sampler turns prompts into videos; the judge
(`expert.synth_classifier`) gives features for the Fréchet distance and predicted attributes. The real
clips are brought to the generated clips' frames and size first (as the model's codec would), so that
both sets reach every feature network through the same resampling and only content differs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
from torch import nn

from expert.metrics import frechet_distance_features
from expert.synth_classifier import SynthJudge, accuracy, generator_clips

EVAL_SEED = 30_000
# attributes a prompt states (the object count is not asked for); with two objects, either object's counts
PROMPT_ATTRIBUTES = ("shape", "colour", "motion", "background")


class VideoFeatures(Protocol):
    """A feature network for a Fréchet distance (e.g. `expert.i3d.I3DFeatures`)."""

    def features(self, videos: np.ndarray) -> np.ndarray: ...


class TextVideoScore(Protocol):
    """A per-video text-video score (e.g. `expert.clip_score.ClipScorer`)."""

    def scores(self, videos: np.ndarray, prompts: list[str]) -> np.ndarray: ...


def match_clips(real: np.ndarray, like: tuple[int, int, int]) -> np.ndarray:
    """uint8 N×T×H×W×3 clips resampled to `like` = (T, H, W): an integer frame stride when it divides (as the
    pixel codec does), else trilinear."""
    if tuple(real.shape[1:4]) == tuple(like):
        return real
    x = torch.from_numpy(np.ascontiguousarray(real)).permute(0, 4, 1, 2, 3).float()
    if x.shape[2] != like[0] and x.shape[2] % like[0] == 0:
        x = x[:, :, :: x.shape[2] // like[0]]
    if tuple(x.shape[2:]) != tuple(like):
        x = nn.functional.interpolate(x, size=tuple(like), mode="trilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 4, 1).numpy()


def neighbour_difference(videos: np.ndarray) -> float:
    """Mean absolute difference between horizontally and vertically adjacent pixels of uint8 N×T×H×W×3
    videos: high-frequency energy. Generated over real above 1 is speckle (noise the sampler left), below 1
    blur."""
    v = videos.astype(np.float32)
    return float(np.abs(np.diff(v, axis=2)).mean() + np.abs(np.diff(v, axis=3)).mean())


def prompts_of_cluster(spec, cluster: int, n: int, *, seed: int = EVAL_SEED,
                       search: int = 4000) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first `n` evaluation clips (judge size, attributes shown, captions) that the run's clustering puts
    in `cluster`: prompts an expert was trained for, with real clips to compare against."""
    from expert.run_init import assign_clips
    from expert.synth import render_clip

    d = spec.data
    picked: list[int] = []
    for start in range(0, search, 256):
        idx = range(start, min(start + 256, search))
        specs = [render_clip(seed, i, d.frames, d.height, d.width) for i in idx]
        labels = assign_clips(spec, np.stack([v for v, _ in specs]), [s.caption for _, s in specs])
        picked += [i for i, k in zip(idx, labels, strict=True) if k == cluster]
        if len(picked) >= n:
            break
    if len(picked) < n:
        raise ValueError(f"only {len(picked)} of {search} evaluation clips fall in cluster {cluster}")
    parts = [generator_clips(seed, 1, start=i) for i in picked[:n]]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            [p[2][0] for p in parts])


def evaluate_synthetic(sample: Callable[[list[str], int], np.ndarray], judge: SynthJudge, *, n: int = 64,
                       batch: int = 8, seed: int = EVAL_SEED, on_batch: Callable[[int], None] | None = None,
                       fvd_net: VideoFeatures | None = None, clip: TextVideoScore | None = None,
                       prompts: tuple[np.ndarray, np.ndarray, list[str]] | None = None) -> dict:
    """`sample(prompts, seed) -> N×T×H×W×3 uint8`. Returns FVD-synth (generated vs real clips of the same
    prompts, judge features) and, per attribute, how often the generated clip shows what its prompt says;
    with `fvd_net` also `fvd`, with `clip` also `clip_similarity` (mean over videos). `prompts`: the real
    clips, attributes and captions to use (e.g. `prompts_of_cluster`) instead of the first `n` of `seed`."""
    real, present, captions = prompts if prompts is not None else generator_clips(seed, n)
    n = len(captions)
    generated = []
    for start in range(0, n, batch):
        generated.append(sample(captions[start : start + batch], seed + start))
        if on_batch:
            on_batch(min(batch, n - start))
    fake = np.concatenate(generated)
    real = match_clips(real, fake.shape[1:4])
    shown = {a: v for a, v in accuracy(judge.predict(fake), present).items() if a in PROMPT_ATTRIBUTES}
    ceiling = {a: v for a, v in accuracy(judge.predict(real), present).items() if a in PROMPT_ATTRIBUTES}
    report = {"n": n, "fvd_synth": round(frechet_distance_features(judge.features(fake), judge.features(real)), 4),
              "attribute_accuracy": shown, "attribute_accuracy_on_real_clips": ceiling,
              "mean_attribute_accuracy": round(float(np.mean(list(shown.values()))), 4),
              "high_frequency_ratio": round(neighbour_difference(fake) / max(neighbour_difference(real), 1e-9), 4)}
    if fvd_net is not None:
        report["fvd"] = round(frechet_distance_features(fvd_net.features(fake), fvd_net.features(real)), 4)
    if clip is not None:
        report["clip_similarity"] = round(float(clip.scores(fake, captions).mean()), 5)
        report["clip_similarity_on_real_clips"] = round(float(clip.scores(real, captions).mean()), 5)
    return report
