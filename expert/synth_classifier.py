"""An offline judge for the synthetic data: a small video classifier trained on the generator's own clips.

It predicts every attribute the generator knows (shape, colour, motion, background, object count); in a
two-object clip a prediction is right when either object shows it (a video cannot say which object a
caption named first). Two metrics follow, documented for what they are — proxies that work without any
downloaded network, not replacements for FVD with I3D or CLIP similarity:
- **FVD-synth**: the Fréchet distance between its penultimate features on generated and on real clips;
- **prompt-attribute accuracy**: how often a generated clip's predicted attributes are among its prompt's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from expert.synth import ATTRIBUTES, render_clip
from protocol.atomic import atomic_path, atomic_write_text
from protocol.errors import IntegrityError

INPUT = (16, 32, 32)  # frames, height, width the classifier sees
FEATURE_DIM = 128
# 2: a per-frame shape branch at full resolution, mean+max pooling, set-valued targets for two-object clips,
# trained on generator version 2 (shapes that can be told apart). Version 1 judges are retrained.
JUDGE_VERSION = 2
SHAPE_FRAMES = 4  # the shape branch looks at every 4th frame: a shape does not change within a clip


def _conv(cin: int, cout: int, kernel, stride=1) -> list[nn.Module]:
    pad = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
    return [nn.Conv3d(cin, cout, kernel, stride=stride, padding=pad), nn.GELU()]


class VideoAttributeClassifier(nn.Module):
    """Two branches, pooled by mean and max over space and time (an object covers a few percent of the
    frame, so a mean alone washes it out): a space-time branch for colour, motion, background and count,
    and a per-frame branch at full resolution that keeps the edges a shape is told apart by."""

    def __init__(self) -> None:
        super().__init__()
        self.motion = nn.Sequential(
            *_conv(3, 32, (1, 3, 3)), *_conv(32, 48, (1, 3, 3), (1, 2, 2)), *_conv(48, 64, 3, (2, 1, 1)),
            *_conv(64, 96, 3, 2), *_conv(96, 128, 3, (2, 1, 1)),
        )
        self.shape = nn.Sequential(
            *_conv(3, 32, (1, 3, 3)), *_conv(32, 32, (1, 3, 3)), nn.MaxPool3d((1, 2, 2)),
            *_conv(32, 64, (1, 3, 3)), *_conv(64, 64, (1, 3, 3)), nn.MaxPool3d((1, 2, 2)),
            *_conv(64, 128, (1, 3, 3)),
        )
        self.project = nn.Sequential(nn.Linear(512, FEATURE_DIM), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, len(values)) for name, values in ATTRIBUTES.items()})

    @staticmethod
    def prepare(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 B×T×H×W×3 → float B×3×16×32×32 in [-1, 1]."""
        x = torch.as_tensor(np.asarray(videos)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
        if x.shape[2:] != INPUT:
            x = nn.functional.interpolate(x, size=INPUT, mode="trilinear", align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        pooled = [torch.cat([z.mean((2, 3, 4)), z.amax((2, 3, 4))], 1)
                  for z in (self.motion(x), self.shape(x[:, :, :: SHAPE_FRAMES]))]
        f = self.project(torch.cat(pooled, 1))
        return f, {name: head(f) for name, head in self.heads.items()}


@dataclass
class SynthJudge:
    model: VideoAttributeClassifier
    heldout_accuracy: dict[str, float]

    @torch.no_grad()
    def features(self, videos: np.ndarray, batch: int = 64) -> np.ndarray:
        self.model.eval()
        return np.concatenate([self.model(self.model.prepare(videos[i : i + batch]))[0].numpy()
                               for i in range(0, len(videos), batch)])

    @torch.no_grad()
    def predict(self, videos: np.ndarray, batch: int = 64) -> np.ndarray:
        """B×A predicted attribute indices, in ATTRIBUTES order."""
        self.model.eval()
        out = []
        for i in range(0, len(videos), batch):
            _, logits = self.model(self.model.prepare(videos[i : i + batch]))
            out.append(torch.stack([logits[name].argmax(1) for name in ATTRIBUTES], 1).numpy())
        return np.concatenate(out)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file({k: v.contiguous() for k, v in self.model.state_dict().items()}, str(tmp))
        atomic_write_text(directory / "judge.json", json.dumps({"heldout_accuracy": self.heldout_accuracy,
                                                                "attributes": list(ATTRIBUTES), "input": INPUT,
                                                                "version": JUDGE_VERSION}))

    @classmethod
    def load(cls, directory: Path) -> SynthJudge:
        directory = Path(directory)
        try:
            info = json.loads((directory / "judge.json").read_text())
            if info.get("version", 1) != JUDGE_VERSION:
                raise ValueError(f"it is a version {info.get('version', 1)} judge, this is version {JUDGE_VERSION}")
            model = VideoAttributeClassifier()
            model.load_state_dict(load_file(directory / "model.safetensors"))
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise IntegrityError(f"{directory} does not hold a synthetic-data judge: {e}") from None
        return cls(model.eval(), info["heldout_accuracy"])


def generator_clips(seed: int, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n clips of generator seed `seed` at the judge's input size, which attribute values each shows
    (N×A×V bool, `ClipSpec.present`), and their captions."""
    clips, present, captions = [], [], []
    for i in range(start, start + n):
        video, spec = render_clip(seed, i, *INPUT)
        clips.append(video)
        present.append(spec.present())
        captions.append(spec.caption)
    return np.stack(clips), np.stack(present), captions


def accuracy(pred: np.ndarray, present: np.ndarray) -> dict[str, float]:
    """Per attribute, the share of clips whose predicted value (N×A indices) is one the clip shows."""
    hit = np.take_along_axis(present, pred[:, :, None], axis=2)[:, :, 0]
    return {name: round(float(hit[:, j].mean()), 4) for j, name in enumerate(ATTRIBUTES)}


def train_judge(*, clips: int = 12_000, steps: int = 1500, batch: int = 32, seed: int = 0, heldout: int = 500,
                on_step=None) -> SynthJudge:
    """Train on fresh generator clips (its own seed, not any run's data) and measure held-out accuracy.
    Half the batches are seen at half the frame rate (every second frame, as an 8-frame model's videos
    reach the judge), so the ceiling holds for 8-frame presets too. A two-object clip's target spreads
    over both objects' values."""
    torch.manual_seed(seed)
    x, present, _ = generator_clips(10_000 + seed, clips)
    xh, present_h, _ = generator_clips(20_000 + seed, heldout)
    target = torch.from_numpy(present / present.sum(2, keepdims=True)).float()
    model = VideoAttributeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.1)
    rng = np.random.default_rng(seed)
    for step in range(steps):
        idx = rng.integers(len(x), size=batch)
        video = x[idx] if rng.random() < 0.5 else x[idx, ::2]
        _, logits = model(model.prepare(np.ascontiguousarray(video)))
        loss = sum(-(target[idx, j, : len(values)] * logits[n].log_softmax(1)).sum(1).mean()
                   for j, (n, values) in enumerate(ATTRIBUTES.items()))
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
        if on_step:
            on_step(step + 1, steps)
    judge = SynthJudge(model.eval(), {})
    judge.heldout_accuracy = accuracy(judge.predict(xh), present_h)
    return judge


def cached_judge(directory: Path, on_step=None, **train_args) -> SynthJudge:
    """The judge saved in `directory`, trained there first when it is missing or from an older version."""
    directory = Path(directory)
    if (directory / "judge.json").is_file():
        try:
            return SynthJudge.load(directory)
        except IntegrityError:
            pass  # an older judge (or a damaged one): train a current one in its place
    judge = train_judge(on_step=on_step, **train_args)
    judge.save(directory)
    return judge
