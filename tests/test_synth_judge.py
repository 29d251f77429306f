import json

import numpy as np
import pytest

from expert.synth import SHAPES, render_clip
from expert.synth_classifier import SynthJudge, accuracy, cached_judge, generator_clips, train_judge
from protocol.errors import IntegrityError


def test_a_two_object_clip_shows_both_objects_values():
    for i in range(100):
        _, spec = render_clip(0, i)
        if len(spec.objects) == 2 and spec.objects[0].colour != spec.objects[1].colour:
            break
    present = spec.present()[None]
    a, b = spec.objects
    first, second, other = np.array(spec.attributes), np.array(spec.attributes), np.array(spec.attributes)
    second[:3] = b.shape, b.colour, b.motion
    other[1] = next(c for c in range(6) if c not in (a.colour, b.colour))
    assert accuracy(first[None], present)["colour"] == 1.0
    assert accuracy(second[None], present)["colour"] == 1.0  # the other object's colour is in the video too
    assert accuracy(other[None], present)["colour"] == 0.0
    assert accuracy(first[None], present)["objects"] == 1.0


def test_squares_and_diamonds_can_be_told_apart():
    """A square turned 45° is a diamond: the generator keeps objects near upright, so in the first frame a
    square fills most of its bounding box and a diamond about half of it (with 0–90° start angles, as in
    generator version 1, the two shapes had the same distribution of masks)."""
    fill = {"square": [], "diamond": []}
    for i in range(400):
        video, spec = render_clip(3, i, frames=16, height=64, width=64)
        o = spec.objects[0]
        if len(spec.objects) != 1 or SHAPES[o.shape] not in fill or spec.background != 0:
            continue
        mask = video[0].astype(int).max(-1) > 100  # the object on the dark background
        ys, xs = np.nonzero(mask)
        fill[SHAPES[o.shape]].append(mask.sum() / ((np.ptp(ys) + 1) * (np.ptp(xs) + 1)))
    assert len(fill["square"]) >= 3 and len(fill["diamond"]) >= 3
    assert min(fill["square"]) > 0.7 and max(fill["diamond"]) < 0.65, fill


@pytest.mark.slow  # trains a small video classifier
def test_judge_learns_the_easy_attributes_and_round_trips(tmp_path):
    judge = train_judge(clips=240, steps=80, batch=16, heldout=120)
    # the background is visible in every pixel: far above chance (1/3) even after a short training
    assert judge.heldout_accuracy["background"] > 0.6
    judge.save(tmp_path / "judge")
    loaded = SynthJudge.load(tmp_path / "judge")
    clips, _, _ = generator_clips(99, 6)
    assert np.array_equal(loaded.predict(clips), judge.predict(clips))
    feats = loaded.features(clips)
    assert feats.shape == (6, 128) and np.isfinite(feats).all()
    with pytest.raises(IntegrityError, match="does not hold a synthetic-data judge"):
        SynthJudge.load(tmp_path)
    # a judge saved by an older version is not used: it is retrained in place
    info = json.loads((tmp_path / "judge" / "judge.json").read_text())
    (tmp_path / "judge" / "judge.json").write_text(json.dumps({**info, "version": 1}))
    with pytest.raises(IntegrityError, match="version 1 judge"):
        SynthJudge.load(tmp_path / "judge")
    steps = []
    cached_judge(tmp_path / "judge", on_step=lambda i, n: steps.append(i), clips=64, steps=3, batch=4, heldout=8)
    assert steps == [1, 2, 3] and SynthJudge.load(tmp_path / "judge").heldout_accuracy
