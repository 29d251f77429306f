"""Writes the synthetic data set (expert/synth.py) as verified shards."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from expert.shards import ClipBatch, ShardWriter, tokenize
from expert.synth import ATTRIBUTES, GENERATOR_VERSION, render_clip
from protocol.data import AttributeSpec, DataManifest

SYNTH_FPS = 8.0


def synth_batch(seed: int, start: int, count: int, frames: int, height: int, width: int) -> ClipBatch:
    clips, captions, attrs = [], [], []
    for i in range(start, start + count):
        video, spec = render_clip(seed, i, frames, height, width)
        clips.append(video)
        captions.append(spec.caption)
        attrs.append(spec.attributes)
    return ClipBatch(np.stack(clips), tokenize(captions), captions, np.asarray(attrs, dtype=np.int64))


def write_synthetic(out: Path, *, clips: int = 2000, seed: int = 0, frames: int = 16, height: int = 32,
                    width: int = 32, clips_per_shard: int = 256,
                    on_progress: Callable[[int], None] | None = None) -> DataManifest:
    """Generate `clips` clips deterministically; the same arguments give byte-identical shards."""
    writer = ShardWriter(out, clips_per_shard=clips_per_shard)
    for start in range(0, clips, clips_per_shard):
        n = min(clips_per_shard, clips - start)
        writer.write(synth_batch(seed, start, n, frames, height, width))
        if on_progress:
            on_progress(n)
    return writer.finish(
        source="synthetic", frames=frames, height=height, width=width, fps=SYNTH_FPS,
        attributes=tuple(AttributeSpec(name=k, values=v) for k, v in ATTRIBUTES.items()),
        generator={"name": "moving-shapes", "version": GENERATOR_VERSION, "seed": seed, "clips": clips},
    )
