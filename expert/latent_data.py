"""Latent data sets: a pixel data set's clips encoded once through a latent preset's VAE.

Paris trains on precomputed latents: the run's creator encodes every clip once (at `run init`, or when it
publishes the run if that was not done), and the latents, not the frames, travel as each cluster's data.
Trainers, the router and verifiers then never run the VAE (nor need it): a step reads latents, and every
verifier's validation loss starts from the same bytes. Written shard by shard, so the frames of the whole
data set are never in memory at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from expert.backbone import build_codec
from expert.shards import ClipBatch, ShardWriter, iter_shards
from protocol.data import DataManifest, LatentInfo
from protocol.errors import IntegrityError, ParisError
from protocol.model import ExpertPreset

log = logging.getLogger(__name__)


def latent_info(preset: ExpertPreset, source: DataManifest, shape: tuple[int, int, int, int]) -> LatentInfo:
    assert preset.backbone.vae is not None
    return LatentInfo(vae=preset.backbone.vae.cid, source=source.data_id, shape=shape)


def matches(manifest: DataManifest, preset: ExpertPreset, source_data_id: str) -> bool:
    """Whether a latent data set holds `source_data_id`'s clips encoded by this preset's VAE."""
    lat, vae = manifest.latents, preset.backbone.vae
    return lat is not None and vae is not None and lat.vae == vae.cid and lat.source == source_data_id


@torch.no_grad()
def encode_dataset(data_dir: Path, preset: ExpertPreset, out: Path, *, device: torch.device | str = "cpu",
                   batch: int = 8, on_total: Callable[[int], None] | None = None,
                   on_progress: Callable[[int], None] | None = None) -> DataManifest:
    """Encode every clip of the pixel data set in `data_dir` through `preset`'s VAE into the latent data set
    `out` (same order, same shards); returns its manifest. `on_progress(n)` after every `n` clips encoded."""
    if preset.backbone.space != "latent":
        raise ParisError(f"preset {preset.name!r} trains on pixels: it has no latents to encode")
    source = DataManifest.load(data_dir)
    if source.latents is not None:
        raise ParisError(f"{data_dir} already holds latents")
    codec = build_codec(preset.backbone).to(device)
    if on_total:
        on_total(source.total_clips)
    writer = ShardWriter(out, clips_per_shard=max(s.clips for s in source.shards))
    shape: tuple[int, int, int, int] | None = None
    for _, shard in iter_shards(data_dir, source):
        frames = torch.from_numpy(np.ascontiguousarray(shard.pixels(str(data_dir))))
        parts = []
        for i in range(0, len(frames), batch):
            parts.append(codec.encode(frames[i:i + batch].to(device)).float().cpu())
            if on_progress:
                on_progress(len(parts[-1]))
        latents = torch.cat(parts).numpy().astype(np.float16)
        if not np.isfinite(latents).all():
            raise IntegrityError("the VAE produced non-finite latents (a float16 overflow or a broken VAE)")
        shape = tuple(int(v) for v in latents.shape[1:])  # type: ignore[assignment]
        writer.write(ClipBatch(None, shard.tokens, shard.captions, shard.attributes, shard.names, latents,
                               shard.spans))
    assert shape is not None
    manifest = writer.finish(source=source.source, frames=source.frames, height=source.height, width=source.width,
                             fps=source.fps, attributes=source.attributes, generator=source.generator,
                             latents=latent_info(preset, source, shape))
    log.info("encoded %d clips into latents %s (%s)", source.total_clips, shape, out)
    return manifest
