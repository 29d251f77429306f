import numpy as np
import pytest

from expert.synth_classifier import SynthJudge, generator_clips, train_judge
from protocol.errors import IntegrityError

pytestmark = pytest.mark.slow  # trains a small video classifier


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
