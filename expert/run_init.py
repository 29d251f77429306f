"""`run init`: embed every clip, cluster, and write the run spec that every peer of a run agrees on."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from expert.assets import asset_path
from expert.cluster import balance_report, cluster, nearest
from expert.embed import SHAPES_V1, SHAPES_V1_GROUPS, Dinov2Image, Embedder, OpenClipImage, ShapesV1, embed_shapes_v1
from expert.presets import get_preset
from expert.shards import iter_shards
from protocol.data import DataManifest
from protocol.errors import ParisError
from protocol.model import Asset, ExpertPreset
from protocol.run import EmbeddingInfo, RunSpec, ValidationSpec, choose_holdout
from protocol.run_config import RunConfig

if TYPE_CHECKING:
    import torch


def init_run(data_dir: Path, clusters: int, *, preset: ExpertPreset | None = None, preset_name: str = "small",
             seed: int = 0, name: str = "run", clip_model: str | None = None,
             clip_weights: Asset | None = None, dinov2: Asset | None = None, target_steps: int | None = None,
             creator: str | None = None, config: RunConfig | None = None, device: str | torch.device = "cpu",
             on_total: Callable[[int], None] | None = None,
             on_progress: Callable[[int], None] | None = None) -> RunSpec:
    """Cluster the data set in `data_dir` into `clusters` and return the run spec (not yet saved). `creator`:
    the OpenSSH public key of the identity that will own (publish and sign) the run. `clip_weights` (an
    open_clip image tower) or `dinov2` (a transformers Dinov2Model folder): the network that embeds clips, on
    `device` (assets: the spec records the CID). `config`: the run config `preset` was made from
    (expert.presets.configure): recorded in the spec, and its clips checked against the data's. Clips are
    read shard by shard; `on_progress(n)` after every `n` embedded."""
    preset = preset or get_preset(preset_name)
    manifest = DataManifest.load(data_dir)
    if config is not None:  # before the clips are read
        check_clip_fit(manifest, preset, config.video.fps)
    embedder = make_embedder(manifest, clip_model=clip_model, clip_weights=clip_weights, dinov2=dinov2,
                             device=device, where=str(data_dir))
    emb, attributes = embed_dataset(data_dir, manifest, embedder, on_total=on_total, on_progress=on_progress)
    weights = clip_weights or dinov2
    info_kw = {"method": embedder.method, "detail": embedder.detail, **({"weights": weights} if weights else {})}
    groups = SHAPES_V1_GROUPS if embedder.method == SHAPES_V1 else ()
    result = cluster(emb, clusters, seed=seed, groups=groups)
    report = balance_report(result.assignments, clusters, attributes, manifest.attributes, seed=seed)
    if target_steps is not None:
        preset = preset.model_copy(update={"train": preset.train.model_copy(update={"target_steps": target_steps})})
    assignments = tuple(int(a) for a in result.assignments)
    validation = ValidationSpec(holdout=choose_holdout(assignments, clusters, seed=seed), noise_seed=seed)
    return RunSpec(
        name=name, data=manifest, num_clusters=clusters, validation=validation,
        assignments=assignments,
        centroids=tuple(tuple(round(float(v), 6) for v in c) for c in result.centroids),
        embedding=EmbeddingInfo(dim=emb.shape[1], mean=tuple(float(v) for v in np.round(result.mean, 6)),
                                scale=tuple(float(v) for v in np.round(result.scale, 6)),
                                two_stage_fine=result.fine, **info_kw),
        preset=preset, balance=report, seed=seed, creator=creator, data_hint=str(Path(data_dir).resolve()),
        config=config.recorded() if config is not None else None,
    )


def make_embedder(manifest: DataManifest, *, clip_model: str | None = None, clip_weights: Asset | None = None,
                  dinov2: Asset | None = None, device: str | torch.device = "cpu", where: str = "the data") -> Embedder:
    """The network that embeds this data's clips: DINOv2 or open_clip by their weights; the synthetic feature
    only for the synthetic data (on real videos it would cluster by colour histograms)."""
    if clip_weights and dinov2:
        raise ParisError("embed clips with one network: give --clip-weights or --dinov2, not both")
    if dinov2:
        return Dinov2Image(asset_path(dinov2, "DINOv2 weights"), device=device)
    if clip_weights:
        return OpenClipImage(clip_model or "ViT-B-32", str(asset_path(clip_weights, "clip-embedding weights")),
                             device=device)
    if manifest.source != "synthetic":
        raise ParisError(f"{where} holds real videos: the {SHAPES_V1} feature is made for the synthetic data "
                         "and would cluster them by colour histograms; pass --dinov2 DIR (a DINOv2 folder) or "
                         "--clip-weights FILE (open_clip image weights, with --clip-model NAME if not ViT-B-32)")
    return ShapesV1()


def embed_dataset(data_dir: Path, manifest: DataManifest, embedder: Embedder, *,
                  on_total: Callable[[int], None] | None = None,
                  on_progress: Callable[[int], None] | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Every clip's embedding (N×D, manifest order) and the generator's attributes where the data has them,
    one verified shard in memory at a time."""
    if on_total:
        on_total(manifest.total_clips)
    parts, attributes = [], []
    for _, shard in iter_shards(data_dir, manifest):
        parts.append(embedder(shard.pixels(str(data_dir)), shard.captions))
        attributes.append(shard.attributes)
        if on_progress:
            on_progress(len(shard))
    known = all(a is not None for a in attributes)
    return np.concatenate(parts), (np.concatenate(attributes) if known else None)


def check_clip_fit(data: DataManifest, preset: ExpertPreset, fps: float | None) -> None:
    """The model's clips must show what the data's show: the same aspect ratio (within 2 %: a resize, not a
    stretch) and, when the config sets `fps`, the same time span (frames / fps, within one frame)."""
    b = preset.backbone
    aspect, data_aspect = b.width / b.height, data.width / data.height
    if abs(aspect / data_aspect - 1) > 0.02:
        raise ParisError(f"the data's clips are {data.height}×{data.width} (H×W), the run's {b.height}×{b.width}: "
                         "a different aspect ratio would stretch every frame; set video.height and video.width "
                         "to the data's aspect, or prepare the data at the run's size")
    if fps is not None:
        span, data_span = b.frames / fps, data.frames / data.fps
        if abs(span - data_span) > 1 / fps + 1e-6:
            raise ParisError(f"the data's clips span {data_span:.3g} s ({data.frames} frames at {data.fps:g} fps), "
                             f"the run's {span:.3g} s ({b.frames} frames at {fps:g} fps): prepare the data with "
                             f"`data prepare --frames {b.frames} --fps {fps:g}` or change video.frames / video.fps")


def assign_clips(spec: RunSpec, frames: np.ndarray, captions: list[str]) -> np.ndarray:
    """The cluster of each new clip under a run's clustering: embedded as at `run init`, standardised with the
    run's mean and scale, nearest centroid. Clips must have the run data's frames and size."""
    if spec.embedding.method != SHAPES_V1:
        raise ParisError(f"assigning new clips needs the {spec.embedding.method} embedding network; "
                         f"only {SHAPES_V1} runs can be assigned here")
    if tuple(frames.shape[1:4]) != (spec.data.frames, spec.data.height, spec.data.width):
        raise ParisError(f"clips are {frames.shape[1:4]}, the run's data is "
                         f"{(spec.data.frames, spec.data.height, spec.data.width)}")
    x = (embed_shapes_v1(frames, captions) - np.asarray(spec.embedding.mean)) / np.asarray(spec.embedding.scale)
    return nearest(x, np.asarray(spec.centroids))
