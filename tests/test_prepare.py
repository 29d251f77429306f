import json

import numpy as np
import pytest

from expert.prepare import prepare_videos, read_captions
from expert.shards import load_dataset
from expert.video_io import write_video
from protocol.errors import ParisError


def _video(path, frames=20, h=48, w=64, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, size=(1, h, w, 3), dtype=np.uint8)
    video = np.repeat(base, frames, axis=0)
    video[:, :, :8] = np.arange(frames, dtype=np.uint8)[:, None, None, None] * 10  # something that changes
    write_video(path, video, fps=8, min_side=1)


def test_prepare_skips_and_reports_bad_files(tmp_path):
    vids = tmp_path / "videos"
    (vids / "sub").mkdir(parents=True)
    _video(vids / "a.mp4", seed=1)
    _video(vids / "sub" / "b.mp4", seed=2)
    _video(vids / "c.gif", seed=3)
    _video(vids / "short.mp4", frames=4)
    _video(vids / "uncaptioned.mp4")
    (vids / "broken.mp4").write_bytes(b"\x00\x01 definitely not a video" * 100)
    captions = tmp_path / "captions.jsonl"
    rows = [{"file": "a.mp4", "caption": "a red car"}, {"file": "sub/b.mp4", "caption": "a blue boat"},
            {"file": "c.gif", "caption": "a cat"}, {"file": "short.mp4", "caption": "too short"},
            {"file": "broken.mp4", "caption": "broken"}]
    captions.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    report = prepare_videos(vids, captions, tmp_path / "out", frames=8, height=32, width=32)
    assert report.written == 3
    reasons = {s.file: s.reason for s in report.skipped}
    assert set(reasons) == {"short.mp4", "uncaptioned.mp4", "broken.mp4"}
    assert reasons["uncaptioned.mp4"] == "no caption"
    assert reasons["short.mp4"].startswith("too short: the video lasts 0.50 s, 8 frames at 8 fps need 1.00 s")
    manifest, clips = load_dataset(tmp_path / "out")
    assert manifest.source == "real" and manifest.data_id == report.data_id
    assert clips.frames.shape == (3, 8, 32, 32, 3)
    assert sorted(clips.captions) == ["a blue boat", "a cat", "a red car"]
    assert sorted(clips.names) == ["a.mp4", "c.gif", "sub/b.mp4"]


def test_csv_captions_and_errors(tmp_path):
    csv_file = tmp_path / "caps.csv"
    csv_file.write_text('file,caption\nx.mp4,"a dog, running"\n')
    assert read_captions(csv_file) == {"x.mp4": "a dog, running"}
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"file": "x.mp4"\n')
    with pytest.raises(ParisError, match="not valid JSON"):
        read_captions(bad)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ParisError, match="no usable clips"):
        prepare_videos(tmp_path / "empty", csv_file, tmp_path / "out")
