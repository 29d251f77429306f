"""Clip embeddings used to partition the data before training.

Three methods:
- `dinov2-image`: DINOv2 (transformers `Dinov2Model`, weights from a local folder) on a few frames, the CLS
  feature mean-pooled — what Paris clustered with.
- `open_clip-image`: the open_clip image tower (pretrained weights from a local file) on a few frames,
  mean-pooled.
- `shapes-v1`: offline and deterministic, for when no pretrained weights are available. It concatenates
  (a) a hue histogram of saturated pixels (what colour the objects are), (b) motion statistics of the
  saturated-pixel mask (centroid displacement, area growth, mask turnover), (c) background statistics
  (brightness, vertical gradient, stripe energy), and (d) a hashed bag of words of the caption. It is a
  hand-made feature, not a learned one: it separates the synthetic data's factors well and gives real
  (if weaker) structure on real video.
"""

from __future__ import annotations

import logging
import re
import zlib
from pathlib import Path
from typing import Protocol

import numpy as np

from protocol.errors import ParisError

log = logging.getLogger(__name__)

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


class Embedder(Protocol):
    """Clips (uint8 N×T×H×W×3) and their captions → N×D features; `method` and `detail` go into the run spec."""

    method: str
    detail: str

    def __call__(self, frames: np.ndarray, captions: list[str]) -> np.ndarray: ...


class ShapesV1:
    """The synthetic data's own hand-made feature (see the module docstring)."""

    method, detail = SHAPES_V1, "hue histogram | mask motion | background | caption words"

    def __call__(self, frames: np.ndarray, captions: list[str]) -> np.ndarray:
        return embed_shapes_v1(frames, captions)


def _picked_frames(frames: np.ndarray, per_clip: int) -> tuple[np.ndarray, int, int]:
    """`per_clip` evenly spaced frames of each clip, as one N·F×H×W×3 batch of images."""
    idx = np.linspace(0, frames.shape[1] - 1, per_clip).round().astype(int)
    picked = frames[:, idx]
    return picked.reshape(-1, *picked.shape[2:]), len(frames), per_clip


class _FrameTower:
    """An image network run on a few frames per clip, on `device`, `batch` images at a time; its per-frame
    features are mean-pooled over the clip and L2-normalised. Batching changes no clip's result."""

    frames_per_clip = 3

    def __init__(self, device, batch: int) -> None:
        import torch

        self.device, self.batch = torch.device(device), batch

    def _images(self, x):  # uint8 B×3×H×W on the device → what the network takes
        raise NotImplementedError

    def _features(self, x):  # the network on a batch of prepared images → B×D
        raise NotImplementedError

    def __call__(self, frames: np.ndarray, captions: list[str] | None = None) -> np.ndarray:
        import torch

        images, n, f = _picked_frames(frames, self.frames_per_clip)
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch):
                x = torch.from_numpy(np.ascontiguousarray(images[i : i + self.batch])).to(self.device)
                out.append(self._features(self._images(x.permute(0, 3, 1, 2))).float().cpu())
        feats = torch.cat(out).reshape(n, f, -1).mean(1)
        return torch.nn.functional.normalize(feats, dim=-1).numpy().astype(np.float32)


class OpenClipImage(_FrameTower):
    """open_clip's image tower; `pretrained` is a local weights file: nothing is downloaded."""

    method = "open_clip-image"

    def __init__(self, model_name: str, pretrained: str, *, device="cpu", batch: int = 192) -> None:
        import open_clip
        import torch

        super().__init__(device, batch)
        model, _, _ = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=self.device)
        self.model = model.eval()
        size = model.visual.image_size
        self.size = size if isinstance(size, int) else size[0]
        self.mean = torch.tensor(model.visual.image_mean or (0.48145466, 0.4578275, 0.40821073),
                                 device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(model.visual.image_std or (0.26862954, 0.26130258, 0.27577711),
                                device=self.device).view(1, 3, 1, 1)
        self.detail = f"{model_name}, mean of {self.frames_per_clip} frames, L2-normalised"

    def _images(self, x):
        import torch

        x = torch.nn.functional.interpolate(x.float().div(255), size=(self.size, self.size), mode="bilinear",
                                            align_corners=False)
        return (x - self.mean) / self.std

    def _features(self, x):
        return self.model.encode_image(x)


class Dinov2Image(_FrameTower):
    """DINOv2 (transformers `Dinov2Model`) from a local folder (`save_pretrained` / a hub snapshot: config.json
    and weights; its preprocessor_config.json says how frames are resized, cropped and normalised, else
    DINOv2's own: shorter side to the model's image size, centre crop, ImageNet statistics). Feature: the
    final layer-normed CLS token (`pooler_output`)."""

    method = "dinov2-image"

    def __init__(self, folder: str | Path, *, device="cpu", batch: int = 192) -> None:
        from transformers import AutoImageProcessor, BitImageProcessor, Dinov2Model
        from transformers.image_utils import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

        super().__init__(device, batch)
        folder = Path(folder)
        try:
            model, info = Dinov2Model.from_pretrained(folder, output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as e:
            raise ParisError(f"cannot load DINOv2 from {folder}: {str(e).splitlines()[0]}") from None
        missing = [k for key in ("missing_keys", "mismatched_keys") for k in info.get(key, [])]
        if missing:  # a random init must never pass for pretrained features
            raise ParisError(f"cannot load DINOv2 from {folder}: its weights do not fit its config "
                             f"({len(missing)} tensors, e.g. {sorted(missing)[0]})")
        self.model = model.eval().to(self.device)
        if (folder / "preprocessor_config.json").is_file():
            self.processor = AutoImageProcessor.from_pretrained(folder)
        else:
            size = model.config.image_size
            self.processor = BitImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                               image_mean=IMAGENET_DEFAULT_MEAN, image_std=IMAGENET_DEFAULT_STD)
        c = model.config
        self.detail = (f"Dinov2Model {c.num_hidden_layers}×{c.hidden_size}, CLS of {self.frames_per_clip} frames, "
                       "mean-pooled, L2-normalised")

    def _images(self, x):
        return self.processor(images=x, return_tensors="pt", device=self.device)["pixel_values"]

    def _features(self, x):
        return self.model(pixel_values=x.to(self.device)).pooler_output


def embed_open_clip(frames: np.ndarray, *, model_name: str, pretrained: str, device: str = "cpu",
                    batch: int = 192) -> np.ndarray:
    """Image-tower embedding of 3 evenly spaced frames per clip, mean-pooled, L2-normalised."""
    return OpenClipImage(model_name, pretrained, device=device, batch=batch)(frames)
