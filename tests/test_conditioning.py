"""expert.conditioning: the text-use ratio is 0 for a network that ignores its caption, grows with how much
the caption changes the velocity, and is finite for a real (random-init) expert."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expert.backbone import PixelCodec, build_backbone
from expert.conditioning import conditioning_ratio
from expert.presets import get_preset
from expert.text import TextEncoder


class Fake(torch.nn.Module):
    def __init__(self, text_weight: float) -> None:
        super().__init__()
        self.w = text_weight

    def forward(self, x, t, text, return_dict=False):
        return (x + self.w * text.pow(2).mean(dim=(1, 2)).view(-1, 1, 1, 1, 1),)


@pytest.fixture(scope="module")
def parts():
    p = get_preset("tiny")
    b = p.backbone
    clips = np.random.default_rng(0).integers(0, 255, (4, b.frames, b.height, b.width, 3), dtype=np.uint8)
    return p, TextEncoder(p.text), PixelCodec(b), clips


def test_ratio_tracks_how_much_the_caption_moves_the_velocity(parts):
    _, text, codec, clips = parts
    prompts = ["a red square", "a blue circle", "a green star", "a dark background"]
    deaf = conditioning_ratio(Fake(0.0), text, codec, clips, prompts)
    assert set(deaf) == {"t=0.98", "t=0.9", "t=0.5", "t=0.1"} and all(v == 0 for v in deaf.values())
    weak, strong = (conditioning_ratio(Fake(w), text, codec, clips, prompts) for w in (1.0, 10.0))
    assert all(0 < weak[k] < strong[k] for k in weak)
    with pytest.raises(ValueError):
        conditioning_ratio(Fake(1.0), text, codec, clips, prompts[:2])


def test_ratio_of_a_real_expert_is_finite(parts):
    p, text, codec, clips = parts
    model = build_backbone(p.backbone, text.width).eval()
    got = conditioning_ratio(model, text, codec, clips, ["a red square on a dark background"] * 4)
    assert all(np.isfinite(v) and v > 0 for v in got.values())
