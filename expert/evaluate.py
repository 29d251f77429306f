"""Offline evaluation on the synthetic data: FVD-synth and prompt-attribute accuracy of a sampler.

Prompts come from fresh generator clips (a seed no run trains on), so every prompt has known attributes
and a real clip to compare against. The sampler turns prompts into videos; the judge
(`expert.synth_classifier`) gives features for the Fréchet distance and predicted attributes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from expert.metrics import frechet_distance_features
from expert.synth import ATTRIBUTES
from expert.synth_classifier import SynthJudge, generator_clips

EVAL_SEED = 30_000
# attributes of the first-described object that a prompt states (the object count is not asked for)
PROMPT_ATTRIBUTES = ("shape", "colour", "motion", "background")


def evaluate_synthetic(sample: Callable[[list[str], int], np.ndarray], judge: SynthJudge, *, n: int = 64,
                       batch: int = 8, seed: int = EVAL_SEED, on_batch: Callable[[int], None] | None = None) -> dict:
    """`sample(prompts, seed) -> N×T×H×W×3 uint8`. Returns FVD-synth (generated vs real clips of the same
    prompts, judge features) and, per attribute, how often the generated clip shows what its prompt says."""
    real, attrs, captions = generator_clips(seed, n)
    generated = []
    for start in range(0, n, batch):
        generated.append(sample(captions[start : start + batch], seed + start))
        if on_batch:
            on_batch(min(batch, n - start))
    fake = np.concatenate(generated)
    pred = judge.predict(fake)
    names = list(ATTRIBUTES)
    accuracy = {a: round(float((pred[:, names.index(a)] == attrs[:, names.index(a)]).mean()), 4)
                for a in PROMPT_ATTRIBUTES}
    real_pred = judge.predict(real)
    ceiling = {a: round(float((real_pred[:, names.index(a)] == attrs[:, names.index(a)]).mean()), 4)
               for a in PROMPT_ATTRIBUTES}
    return {"n": n, "fvd_synth": round(frechet_distance_features(judge.features(fake), judge.features(real)), 4),
            "attribute_accuracy": accuracy, "attribute_accuracy_on_real_clips": ceiling,
            "mean_attribute_accuracy": round(float(np.mean(list(accuracy.values()))), 4)}
