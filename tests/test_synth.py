import numpy as np

from expert.synth import ATTRIBUTES, BACKGROUNDS, COLOURS, MOTIONS, SHAPES, render_clip
from expert.synth_dataset import write_synthetic


def test_same_arguments_give_byte_identical_shards(tmp_path):
    a = write_synthetic(tmp_path / "a", clips=40, seed=3, clips_per_shard=16)
    b = write_synthetic(tmp_path / "b", clips=40, seed=3, clips_per_shard=16)
    assert a == b and a.data_id == b.data_id
    for shard in a.shards:
        assert (tmp_path / "a" / shard.file).read_bytes() == (tmp_path / "b" / shard.file).read_bytes()
    assert (tmp_path / "a" / "manifest.json").read_bytes() == (tmp_path / "b" / "manifest.json").read_bytes()


def test_other_seed_gives_other_data(tmp_path):
    a = write_synthetic(tmp_path / "a", clips=8, seed=1)
    b = write_synthetic(tmp_path / "b", clips=8, seed=2)
    assert a.data_id != b.data_id


def test_vocabulary_is_as_large_as_promised():
    assert len(SHAPES) >= 4 and len(COLOURS) >= 6 and len(MOTIONS) >= 6 and len(BACKGROUNDS) == 3


def test_captions_tell_the_truth_and_cover_every_factor():
    seen = {k: set() for k in ATTRIBUTES}
    starts = set()
    for i in range(400):
        video, spec = render_clip(0, i, frames=16, height=32, width=32)
        assert video.shape == (16, 32, 32, 3) and video.dtype == np.uint8
        o = spec.objects[0]
        cap = spec.caption
        assert COLOURS[o.colour] in cap and SHAPES[o.shape] in cap and BACKGROUNDS[spec.background] in cap
        for name, value in zip(ATTRIBUTES, spec.attributes, strict=True):
            seen[name].add(value)
        starts.add(cap.split(" ")[0])
    assert {k: len(v) for k, v in seen.items()} == {k: len(v) for k, v in ATTRIBUTES.items()}
    assert len(starts) >= 3  # several caption templates


def test_motion_is_visible():
    # a left-moving object's colour mass moves left between the first and the last frame
    for i in range(200):
        video, spec = render_clip(5, i)
        if len(spec.objects) == 1 and MOTIONS[spec.objects[0].motion] == "left":
            mask = (video.max(-1).astype(int) - video.min(-1)) > 80  # the object's saturated pixels

            def centre_x(frame: np.ndarray) -> float:
                return float(frame.sum(0) @ np.arange(frame.shape[1]) / max(frame.sum(), 1))

            assert centre_x(mask[-1]) < centre_x(mask[0]) - 3
            return
    raise AssertionError("no single left-moving clip in 200")
