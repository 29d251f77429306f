"""An offline judge for the synthetic data: a small video classifier trained on the generator's own clips.

It predicts every attribute the generator knows (shape, colour, motion, background, object count) of the
first-described object. Two metrics follow, documented for what they are — proxies that work without any
downloaded network, not replacements for FVD with I3D or CLIP similarity:
- **FVD-synth**: the Fréchet distance between its penultimate features on generated and on real clips;
- **prompt-attribute accuracy**: how often a generated clip's predicted attributes match its prompt's.
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


class VideoAttributeClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Conv3d(3, 24, 3, stride=(1, 2, 2), padding=1), nn.GELU(),
            nn.Conv3d(24, 48, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv3d(48, 96, 3, stride=2, padding=1), nn.GELU(),
            nn.AdaptiveAvgPool3d(1), nn.Flatten(),
            nn.Linear(96, FEATURE_DIM), nn.GELU(),
        )
        self.heads = nn.ModuleDict({name: nn.Linear(FEATURE_DIM, len(values)) for name, values in ATTRIBUTES.items()})

    @staticmethod
    def prepare(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 B×T×H×W×3 → float B×3×16×32×32 in [-1, 1]."""
        x = torch.as_tensor(np.asarray(videos)).permute(0, 4, 1, 2, 3).float().div(127.5).sub(1)
        if x.shape[2:] != INPUT:
            x = nn.functional.interpolate(x, size=INPUT, mode="trilinear", align_corners=False)
        return x

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        f = self.trunk(x)
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
                                                                "attributes": list(ATTRIBUTES), "input": INPUT}))

    @classmethod
    def load(cls, directory: Path) -> SynthJudge:
        directory = Path(directory)
        try:
            info = json.loads((directory / "judge.json").read_text())
            model = VideoAttributeClassifier()
            model.load_state_dict(load_file(directory / "model.safetensors"))
        except (OSError, ValueError, RuntimeError, KeyError) as e:
            raise IntegrityError(f"{directory} does not hold a synthetic-data judge: {e}") from None
        return cls(model.eval(), info["heldout_accuracy"])


def generator_clips(seed: int, n: int, start: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    clips, attrs, captions = [], [], []
    for i in range(start, start + n):
        video, spec = render_clip(seed, i, *INPUT)
        clips.append(video)
        attrs.append(spec.attributes)
        captions.append(spec.caption)
    return np.stack(clips), np.asarray(attrs, dtype=np.int64), captions


def train_judge(*, clips: int = 3000, steps: int = 600, batch: int = 32, seed: int = 0, heldout: int = 500,
                on_step=None) -> SynthJudge:
    """Train on fresh generator clips (its own seed, not any run's data) and measure held-out accuracy."""
    torch.manual_seed(seed)
    x, y, _ = generator_clips(10_000 + seed, clips)
    xh, yh, _ = generator_clips(20_000 + seed, heldout)
    model = VideoAttributeClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(x), (batch,), generator=g).numpy()
        _, logits = model(model.prepare(x[idx]))
        target = torch.from_numpy(y[idx])
        loss = sum(nn.functional.cross_entropy(logits[n], target[:, j]) for j, n in enumerate(ATTRIBUTES))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if on_step:
            on_step(step + 1, steps)
    judge = SynthJudge(model.eval(), {})
    pred = judge.predict(xh)
    judge.heldout_accuracy = {n: round(float((pred[:, j] == yh[:, j]).mean()), 4) for j, n in enumerate(ATTRIBUTES)}
    return judge
