"""Encoded data sets: a pixel data set's clips encoded once through a latent preset's VAE, and its captions
through a stored text encoder (a `transformers` one or a pretrained open_clip tower:
protocol.model.TextEncoderConfig.stored).

Paris trains on precomputed latents: the run's creator encodes every clip once (at `run init`, or when it
publishes the run if that was not done), and the latents, not the frames, travel as each cluster's data.
Trainers, the router and verifiers then never run the VAE (nor need it): a step reads latents, and every
verifier's validation loss starts from the same bytes. Text states are kept beside them (each caption's, and
the empty caption's for condition dropout) for the same reasons: no volunteer loads a multi-billion-parameter
text encoder to train or verify. Written shard by shard, so the frames of the whole data set are never in
memory at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from expert.backbone import build_codec
from expert.shards import ClipBatch, ShardWriter, iter_shards
from protocol.data import DataManifest, LatentInfo, TextStatesInfo
from protocol.errors import IntegrityError, ParisError
from protocol.model import ExpertPreset

log = logging.getLogger(__name__)


def latent_info(preset: ExpertPreset, source: DataManifest, shape: tuple[int, int, int, int]) -> LatentInfo:
    assert preset.backbone.vae is not None
    return LatentInfo(vae=preset.backbone.vae.cid, source=source.data_id, shape=shape)


def needs_encoding(preset: ExpertPreset) -> bool:
    """Whether a run of `preset` trains on an encoded data set (latents, text states or both), not its source."""
    return preset.backbone.space == "latent" or preset.text.stored


def matches(manifest: DataManifest, preset: ExpertPreset, source_data_id: str) -> bool:
    """Whether an encoded data set holds `source_data_id`'s clips encoded as this preset says: by its VAE (a
    latent preset), with the states of its stored text encoder (and only then)."""
    lat, vae, text = manifest.latents, preset.backbone.vae, manifest.text
    if preset.backbone.space == "latent":
        if lat is None or vae is None or lat.vae != vae.cid or lat.source != source_data_id:
            return False
    elif lat is not None:
        return False
    if not preset.text.stored:
        return text is None
    assert preset.text.weights is not None
    return (text is not None and text.encoder == preset.text.weights.cid and text.source == source_data_id
            and tuple(text.shape) == (preset.text.context_length, preset.text.width))


@torch.no_grad()
def encode_dataset(data_dir: Path, preset: ExpertPreset, out: Path, *, device: torch.device | str = "cpu",
                   batch: int = 8, text_batch: int = 64, on_total: Callable[[int], None] | None = None,
                   on_progress: Callable[[int], None] | None = None) -> DataManifest:
    """Encode every clip of the pixel data set in `data_dir` through `preset`'s VAE (a latent preset) and every
    caption through its stored text encoder into the data set `out` (same order, same shards); returns its
    manifest. `on_total(n)` first, then `on_progress(k)` after every `k` items (clips or captions) encoded."""
    if not needs_encoding(preset):
        raise ParisError(f"preset {preset.name!r} trains on pixels and computes its text states itself: "
                         "nothing to encode")
    source = DataManifest.load(data_dir)
    if source.latents is not None or source.text is not None:
        raise ParisError(f"{data_dir} is already encoded")
    codec = build_codec(preset.backbone).to(device) if preset.backbone.space == "latent" else None
    encoder = _text_encoder(preset, device)
    null = None if encoder is None else _finite(encoder.encode_captions([""], device=device)[0], "text encoder")
    if on_total:
        on_total(source.total_clips * ((codec is not None) + (encoder is not None)))
    writer = ShardWriter(out, clips_per_shard=max(s.clips for s in source.shards))
    shape: tuple[int, int, int, int] | None = None
    for _, shard in iter_shards(data_dir, source):
        latents = None if codec is None else _encode_frames(codec, shard.pixels(str(data_dir)), device, batch,
                                                            on_progress)
        shape = None if latents is None else tuple(int(v) for v in latents.shape[1:])  # type: ignore[assignment]
        states = None if encoder is None else _encode_captions(encoder, shard.captions, device, text_batch,
                                                                on_progress)
        writer.write(ClipBatch(shard.frames if latents is None else None, shard.tokens, shard.captions,
                               shard.attributes, shard.names, latents, shard.spans, states, null))
    text = None if null is None else TextStatesInfo(encoder=preset.text.weights.cid, source=source.data_id,
                                                    shape=tuple(null.shape))
    manifest = writer.finish(source=source.source, frames=source.frames, height=source.height, width=source.width,
                             fps=source.fps, attributes=source.attributes, generator=source.generator,
                             latents=None if shape is None else latent_info(preset, source, shape), text=text)
    log.info("encoded %d clips (latents %s, text states %s) into %s", source.total_clips, shape,
             None if text is None else text.shape, out)
    return manifest


def _text_encoder(preset: ExpertPreset, device: torch.device | str):
    if not preset.text.stored:
        return None
    from expert.text import load_text_encoder

    return load_text_encoder(preset.text).to(device)


def _finite(x: torch.Tensor, what: str) -> np.ndarray:
    out = x.float().cpu().numpy().astype(np.float16)
    if not np.isfinite(out).all():
        raise IntegrityError(f"the {what} produced non-finite values (a float16 overflow or broken weights)")
    return out


def _encode_frames(codec, frames: np.ndarray, device, batch: int, on_progress) -> np.ndarray:
    frames = torch.from_numpy(np.ascontiguousarray(frames))
    parts = []
    for i in range(0, len(frames), batch):
        parts.append(codec.encode(frames[i:i + batch].to(device)).float().cpu())
        if on_progress:
            on_progress(len(parts[-1]))
    return _finite(torch.cat(parts), "VAE")


def _encode_captions(encoder, captions: list[str], device, batch: int, on_progress) -> np.ndarray:
    parts = []
    for i in range(0, len(captions), batch):
        parts.append(encoder.encode_captions(captions[i:i + batch], device=device).cpu())
        if on_progress:
            on_progress(len(parts[-1]))
    return _finite(torch.cat(parts), "text encoder")
