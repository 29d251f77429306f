"""expert.conditioning: the text-use ratio is 0 for a network that ignores its caption, grows with how much
the caption changes the velocity, and is finite for a real (random-init) expert; the one-step denoised
accuracy is the judge's accuracy on the clean clips for a network that recovers them, with or without the
caption, as the network does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from expert.backbone import PixelCodec, build_backbone
from expert.conditioning import conditioning_ratio, denoised_accuracy
from expert.evaluate import PROMPT_ATTRIBUTES
from expert.presets import get_preset
from expert.synth_classifier import accuracy, generator_clips
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


class Recovers(torch.nn.Module):
    """Knows the clean clips: its velocity gives x̂₀ = x₀ exactly, with any caption or (`deaf_without=True`)
    only with one; without a caption it then predicts a grey clip (x̂₀ = 0)."""

    def __init__(self, x0: torch.Tensor, null: torch.Tensor, deaf_without: bool) -> None:
        super().__init__()
        self.x0, self.null, self.deaf_without = x0, null, deaf_without

    def forward(self, x, t, text, return_dict=False):
        tt = (t / 1000).view(-1, 1, 1, 1, 1)
        clean = self.x0[: len(x)]
        if self.deaf_without:
            captioned = ~(text == self.null[: len(x)]).flatten(1).all(1)
            clean = clean * captioned.view(-1, 1, 1, 1, 1)
        return ((x - clean) / tt,)


class NearestClip:
    """A judge that names the attributes of the nearest of some known clips: right on those clips, and on
    anything else only by chance."""

    def __init__(self, clips: np.ndarray, present: np.ndarray) -> None:
        self.clips, self.values = clips.reshape(len(clips), -1).astype(np.float32), present.argmax(2)

    def predict(self, videos: np.ndarray) -> np.ndarray:
        flat = videos.reshape(len(videos), -1).astype(np.float32)
        return self.values[((flat[:, None] - self.clips[None]) ** 2).sum(2).argmin(1)]


def test_denoised_accuracy_is_the_judges_on_what_the_network_recovers(parts):
    from expert.sampling import encode_prompts

    p, text, codec, _ = parts
    clips, present, prompts = generator_clips(7, 6)
    clips = clips[:, : p.backbone.frames]  # the preset's frame count, so that decoding gives them back
    judge = NearestClip(clips, present)
    x0 = codec.encode(torch.from_numpy(clips)).float()
    null = encode_prompts(text, prompts)[1]
    real, grey = ({a: v for a, v in accuracy(judge.predict(c), present).items() if a in PROMPT_ATTRIBUTES}
                  for c in (clips, np.full_like(clips, 128)))
    assert real != grey  # the judge tells the clips from grey ones, so the test can see a deaf network
    for deaf_without in (False, True):
        got = denoised_accuracy(Recovers(x0, null, deaf_without), text, codec, judge, clips, present, prompts,
                                t_levels=(0.9, 0.5), batch=len(clips))
        assert set(got) == {"t=0.9", "t=0.5"}
        for level in got.values():
            assert level["with_caption"] == real
            assert level["without_caption"] == (grey if deaf_without else real)
