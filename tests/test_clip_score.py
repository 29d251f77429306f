"""CLIP text-video similarity: pairing, mean over frames of the per-frame cosine, and loading weights from a
local file. A random-init open_clip model checks the plumbing only (nothing is downloaded)."""

import numpy as np
import pytest
import torch

from expert.clip_score import ClipScorer
from protocol.errors import ParisError

MODEL = "ViT-S-32"
pytestmark = pytest.mark.slow  # a 63 M-parameter model on 224-pixel frames: seconds per test on a CPU


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer.random_init(MODEL, seed=0)


def _videos(seed: int, n: int, t: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, t, 32, 32, 3), dtype=np.uint8)


def test_score_is_the_mean_over_frames_of_the_per_frame_cosine(scorer):
    a, b = _videos(1, 1, 1)[0, 0], _videos(2, 1, 1)[0, 0]
    prompt = ["a red circle moving left"]
    still_a = np.broadcast_to(a, (1, 4, *a.shape)).copy()
    still_b = np.broadcast_to(b, (1, 4, *b.shape)).copy()
    half = np.stack([a, a, b, b])[None]
    sa, sb, sh = (scorer.scores(v, prompt)[0] for v in (still_a, still_b, half))
    assert sa != pytest.approx(sb, abs=1e-6)  # otherwise the next check proves nothing
    assert sh == pytest.approx((sa + sb) / 2, abs=1e-5)
    assert -1.0 <= sh <= 1.0


def test_each_video_is_scored_against_its_own_prompt(scorer):
    videos = _videos(3, 2)
    prompts = ["a blue square bouncing", "a green triangle spinning on stripes"]
    both = scorer.scores(videos, prompts)
    alone = [scorer.scores(videos[i : i + 1], prompts[i : i + 1])[0] for i in range(2)]
    np.testing.assert_allclose(both, alone, atol=1e-5)
    swapped = scorer.scores(videos, prompts[::-1])
    assert not np.allclose(both, swapped)
    with pytest.raises(ParisError):
        scorer.scores(videos, prompts[:1])


def test_weights_load_from_a_local_file_and_a_missing_file_is_an_error(scorer, tmp_path):
    torch.save(scorer.model.state_dict(), tmp_path / "clip.pt")
    loaded = ClipScorer.from_pretrained(MODEL, tmp_path / "clip.pt")
    videos, prompts = _videos(4, 2), ["a circle", "a star"]
    np.testing.assert_allclose(loaded.scores(videos, prompts), scorer.scores(videos, prompts), atol=1e-5)
    other = ClipScorer.random_init(MODEL, seed=1)
    assert not np.allclose(other.scores(videos, prompts), scorer.scores(videos, prompts))
    with pytest.raises(ParisError, match="not found"):
        ClipScorer.from_pretrained(MODEL, tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(ParisError, match="cannot load"):
        ClipScorer.from_pretrained(MODEL, tmp_path / "junk.pt")
