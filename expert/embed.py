"""Clip embeddings used to partition the data before training.

Two methods:
- `open_clip-image`: the open_clip image tower (pretrained weights from a local file) on a few frames,
  mean-pooled — the production choice, like Paris' DINOv2 features.
- `shapes-v1`: offline and deterministic, for when no pretrained weights are available. It concatenates
  (a) a hue histogram of saturated pixels (what colour the objects are), (b) motion statistics of the
  saturated-pixel mask (centroid displacement, area growth, mask turnover), (c) background statistics
  (brightness, vertical gradient, stripe energy), and (d) a hashed bag of words of the caption. It is a
  hand-made feature, not a learned one: it separates the synthetic data's factors well and gives real
  (if weaker) structure on real video.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

SHAPES_V1 = "shapes-v1"
_HUE_BINS = 12
_WORD_DIMS = 48
_SAT_THRESHOLD = 80.0
# feature groups of shapes-v1 (colour, motion, background, caption): each weighs the same in clustering
SHAPES_V1_GROUPS = ((0, _HUE_BINS), (_HUE_BINS, _HUE_BINS + 6), (_HUE_BINS + 6, _HUE_BINS + 9),
                    (_HUE_BINS + 9, _HUE_BINS + 9 + _WORD_DIMS))


def _caption_features(captions: list[str]) -> np.ndarray:
    out = np.zeros((len(captions), _WORD_DIMS), dtype=np.float32)
    for i, c in enumerate(captions):
        for w in re.findall(r"[a-z]+", c.lower()):
            if len(w) > 2:
                out[i, zlib.crc32(w.encode()) % _WORD_DIMS] += 1.0
    norm = np.linalg.norm(out, axis=1, keepdims=True)
    return out / np.maximum(norm, 1e-6)


def _pixel_features(frames: np.ndarray) -> np.ndarray:
    """frames: N×T×H×W×3 uint8 → N×(hue bins + 6 motion + 3 background)."""
    n, _t, h, w, _ = frames.shape
    x = frames.astype(np.float32)
    mx, mn = x.max(-1), x.min(-1)
    sat = mx - mn
    mask = sat > _SAT_THRESHOLD  # N×T×H×W
    # (a) hue histogram of saturated pixels
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    hue = np.arctan2(np.sqrt(3.0) * (g - b), 2 * r - g - b)  # [-pi, pi]
    bins = ((hue + np.pi) / (2 * np.pi) * _HUE_BINS).astype(np.int64).clip(0, _HUE_BINS - 1)
    hist = np.zeros((n, _HUE_BINS), dtype=np.float32)
    for k in range(_HUE_BINS):
        hist[:, k] = ((bins == k) & mask).sum(axis=(1, 2, 3))
    hist /= np.maximum(hist.sum(1, keepdims=True), 1.0)
    # (b) motion of the mask
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    area = mask.sum(axis=(2, 3)).astype(np.float32)  # N×T
    safe = np.maximum(area, 1.0)
    cx = (mask * xx).sum(axis=(2, 3)) / safe / w
    cy = (mask * yy).sum(axis=(2, 3)) / safe / h
    dx, dy = cx[:, -1] - cx[:, 0], cy[:, -1] - cy[:, 0]
    growth = np.log((area[:, -1] + 1) / (area[:, 0] + 1))
    turnover = (mask[:, 1:] ^ mask[:, :-1]).sum(axis=(1, 2, 3)) / np.maximum(area.sum(1), 1.0)
    motion = np.stack([dx, dy, np.abs(dx), np.abs(dy), growth, turnover], axis=1)
    # (c) background: unsaturated pixels of the first frame
    lum = x[:, 0].mean(-1)  # N×H×W
    bg = ~mask[:, 0]
    bgn = np.maximum(bg.sum(axis=(1, 2)), 1)
    brightness = (lum * bg).sum(axis=(1, 2)) / bgn / 255.0
    top = lum[:, : h // 4].mean(axis=(1, 2))
    bottom = lum[:, -h // 4 :].mean(axis=(1, 2))
    vgrad = (bottom - top) / 255.0
    stripes = np.abs(np.diff(lum, axis=2)).mean(axis=(1, 2)) / 255.0
    background = np.stack([brightness, vgrad, stripes], axis=1)
    return np.concatenate([hist, motion, background], axis=1).astype(np.float32)


def embed_shapes_v1(frames: np.ndarray, captions: list[str], *, batch: int = 256) -> np.ndarray:
    parts = [_pixel_features(frames[i : i + batch]) for i in range(0, len(frames), batch)]
    return np.concatenate([np.concatenate(parts), _caption_features(captions)], axis=1)


def embed_open_clip(frames: np.ndarray, *, model_name: str, pretrained: str, device: str = "cpu",
                    frames_per_clip: int = 3, batch: int = 64) -> np.ndarray:
    """Image-tower embedding of `frames_per_clip` evenly spaced frames per clip, mean-pooled, L2-normalised.
    `pretrained` is a local weights file: nothing is downloaded."""
    import open_clip
    import torch

    model, _, _preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
    model.eval()
    size = model.visual.image_size
    size = size if isinstance(size, int) else size[0]
    mean = torch.tensor(model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
    std = torch.tensor(model.visual.image_std or (0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)
    idx = np.linspace(0, frames.shape[1] - 1, frames_per_clip).round().astype(int)
    out = []
    with torch.no_grad():
        for i in range(0, len(frames), batch):
            x = torch.from_numpy(frames[i : i + batch][:, idx]).float().div(255)  # B×F×H×W×3
            b, f = x.shape[:2]
            x = x.reshape(b * f, *x.shape[2:]).permute(0, 3, 1, 2)
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
            feats = model.encode_image(((x - mean) / std).to(device)).float().cpu()
            feats = feats.reshape(b, f, -1).mean(1)
            out.append(torch.nn.functional.normalize(feats, dim=-1).numpy())
    return np.concatenate(out).astype(np.float32)
