"""Measuring a researcher's own run (not the synthetic data): each expert and each routing strategy of the
ensemble, against the run's held-out clips, which no honest trainer trained on.

Prompts are the held-out clips' own captions (an expert gets its cluster's, the ensemble every cluster's, taken
in turn so that each cluster is represented), or a prompts file's (every sampler gets all of them). Scores, each
only when its network's weights are given: FVD (I3D) of the generated videos against the held-out clips (an
expert's cluster's, or all of them), and the CLIP text-video score of each video against its prompt, beside the
same score of as many held-out clips against their own captions (what real videos of those captions reach). Each
expert's held-out flow-matching loss (the run's deterministic validation loss) needs no weights at all.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch import nn

from expert.evaluate import EVAL_SEED, TextVideoScore, VideoFeatures, match_clips
from expert.metrics import frechet_distance_features
from expert.shards import ClipBatch, open_dataset
from protocol.data import DataManifest
from protocol.errors import ConfigMismatchError, ParisError
from protocol.run import RunSpec

Sampler = Callable[[list[str], int], np.ndarray]  # (prompts, seed) → N×T×H×W×3 uint8


@dataclass
class Target:
    """One thing to measure: a sampler, the prompts it is given, and the real clips it is compared with."""

    name: str
    kind: str  # "expert" or "strategy"
    sample: Sampler
    prompts: list[str]
    reference: np.ndarray  # uint8 N×T×H×W×3 held-out clips (FVD's real set)
    paired: tuple[np.ndarray, list[str]]  # up to as many held-out clips and their own captions (CLIP's ceiling)
    extra: dict = field(default_factory=dict)  # already measured (e.g. the expert's validation loss)


def heldout_clips(spec: RunSpec, data_dir: Path | None) -> dict[int, ClipBatch]:
    """Each cluster's held-out clips (frames and captions), read from the run's own pixel data: only the
    shards that hold them, each checked against the manifest."""
    where = data_dir or spec.data_hint
    if where is None or not Path(where).exists():
        raise ParisError("the run's data folder is unknown or missing here: pass --data DIR")
    directory = Path(where)
    held = [i for k in range(spec.num_clusters) for i in spec.holdout_clips(k)]
    if not held:
        raise ParisError(f"run {spec.run_id} has no held-out clips to compare with")
    manifest = DataManifest.load(directory)
    if manifest != spec.data:
        raise ConfigMismatchError(f"the data in {directory} ({manifest.data_id}) is not this run's pixel data "
                                  f"({spec.data.data_id})")
    _, clips = open_dataset(directory, only=held)
    out, start = {}, 0
    for k in range(spec.num_clusters):
        n = len(spec.holdout_clips(k))
        part = clips.select(range(start, start + n))
        frames = part.pixels(str(directory))
        out[k] = ClipBatch(np.asarray(frames[np.arange(n)]) if n else np.zeros((0,)), part.tokens, part.captions)
        start += n
    return out


def read_prompts(path: Path) -> list[str]:
    """A prompts file: one prompt per line; blank lines and lines starting with '#' are skipped."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ParisError(f"cannot read prompts file {path}: {e}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if len(prompts) < 2:
        raise ParisError(f"prompts file {path} holds {len(prompts)} prompt(s): a score needs at least two")
    return prompts


def interleave(groups: list[list], n: int) -> list:
    """Up to `n` items taking one from each group in turn (so that every cluster is represented)."""
    out: list = []
    for i in range(max((len(g) for g in groups), default=0)):
        out += [g[i] for g in groups if i < len(g)]
    return out[:n]


def targets_for(held: dict[int, ClipBatch], experts: dict[int, Sampler], strategies: dict[str, Sampler], *,
                n: int, prompts: list[str] | None = None, extra: dict[int, dict] | None = None) -> list[Target]:
    """Expert k against cluster k's held-out clips; each strategy against all of them. Without `prompts`,
    a sampler's prompts are the captions of the held-out clips it is paired with."""
    nonempty = [k for k in held if len(held[k])]
    everything = np.concatenate([held[k].frames for k in nonempty])
    out = []
    for k, sample in experts.items():
        pair = (held[k].frames[:n], held[k].captions[:n])
        out.append(Target(f"expert_{k}", "expert", sample, prompts[:n] if prompts else pair[1], held[k].frames,
                          pair, (extra or {}).get(k, {})))
    picked = interleave([[(k, i) for i in range(len(held[k]))] for k in nonempty], n)
    pair = (np.stack([held[k].frames[i] for k, i in picked]), [held[k].captions[i] for k, i in picked])
    out += [Target(name, "strategy", sample, prompts[:n] if prompts else pair[1], everything, pair)
            for name, sample in strategies.items()]
    return out


def score(target: Target, *, fvd_net: VideoFeatures | None = None, clip: TextVideoScore | None = None,
          batch: int = 8, seed: int = EVAL_SEED, on_batch: Callable[[int], None] | None = None) -> dict:
    """Sample the target's prompts (seeds fixed per position) and score the videos."""
    parts = []
    for start in range(0, len(target.prompts), batch):
        chunk = target.prompts[start:start + batch]
        parts.append(target.sample(chunk, seed + start))
        if on_batch:
            on_batch(len(chunk))
    fake = np.concatenate(parts)
    row: dict = {"kind": target.kind, "videos": len(fake), "heldout_clips": len(target.reference), **target.extra}
    real = match_clips(target.reference, fake.shape[1:4]) if len(target.reference) else target.reference
    if fvd_net is not None and len(real) >= 2 and len(fake) >= 2:
        row["fvd"] = round(frechet_distance_features(fvd_net.features(fake), fvd_net.features(real)), 4)
    if clip is not None:
        row["clip_score"] = round(float(clip.scores(fake, target.prompts).mean()), 5)
        clips, captions = target.paired
        if len(clips):
            row["clip_score_heldout"] = round(float(clip.scores(match_clips(clips, fake.shape[1:4]),
                                                                captions).mean()), 5)
    return row


def expert_loss(model: nn.Module, clips: ClipBatch, spec: RunSpec, cluster: int, text, codec, *,
                device="cpu") -> float | None:
    """The run's validation loss of `model` on cluster `cluster`'s held-out clips (None without any)."""
    from expert.validation import expert_validation_loss, prepare_holdout

    if not len(clips):
        return None
    held = prepare_holdout(clips, np.full(len(clips), cluster), spec.validation, codec, text)
    return round(expert_validation_loss(model, held, device=device), 6)
