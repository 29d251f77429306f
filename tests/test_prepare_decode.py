"""Cutting clips out of real video files: several codecs, rates and sizes, seeking, resampling to the run's
fps, aspect-preserving fit, and broken inputs."""

import pytest

from expert.video_decode import DecodeSpec, TooShort, decode_clip, decode_task
from expert.video_layouts import ClipTask
from tests.videos import frame_index, write_video

SPEC = DecodeSpec(frames=8, fps=8, height=32, width=32)


@pytest.mark.parametrize(("name", "codec", "fps", "height", "width"), [
    ("a.mp4", "libx264", 24, 72, 128),
    ("b.avi", "mpeg4", 25, 64, 48),
    ("c.webm", "libvpx-vp9", 30, 96, 64),
    ("d.gif", "gif", 10, 40, 40),
    ("e.mkv", "libx264", 29.97, 72, 128),
])
def test_each_codec_is_resampled_to_the_run_fps(tmp_path, name, codec, fps, height, width):
    path = write_video(tmp_path / name, frames=60, fps=fps, height=height, width=width, codec=codec)
    video, span = decode_clip(path, SPEC)
    assert video.shape == (8, 32, 32, 3)
    start = (60 / fps - 1.0) / 2  # the 1 s clip (8 frames at 8 fps) centred in the video
    assert span == pytest.approx((start, start + 1.0), abs=2e-3)
    expected = [(start + k / 8) * fps for k in range(8)]  # the source frame shown at each target time
    got = [frame_index(f) for f in video]
    assert all(abs(g - e) <= 0.5 + 1e-6 for g, e in zip(got, expected, strict=True)), (got, expected)


@pytest.mark.parametrize(("name", "codec"), [("long.mp4", "libx264"), ("long.webm", "libvpx-vp9"),
                                           ("long.avi", "mpeg4")])
def test_seeks_into_a_long_source_and_cuts_the_timestamped_segment(tmp_path, name, codec):
    path = write_video(tmp_path / name, frames=480, fps=24, height=36, width=64, gop=48, codec=codec)
    video, span = decode_clip(path, DecodeSpec(frames=8, fps=4, height=16, width=16), start=12.0, end=14.0)
    assert span == (12.0, 14.0)
    assert [frame_index(f) for f in video] == [288 + 6 * k for k in range(8)]
    video, span = decode_clip(path, DecodeSpec(frames=4, fps=2, height=16, width=16), start=17.0, end=20.0)
    assert span == (17.5, 19.5) and [frame_index(f) for f in video] == [420, 432, 444, 456]


def test_slow_sources_repeat_frames(tmp_path):
    path = write_video(tmp_path / "slow.mp4", frames=12, fps=4)  # 3 s at 4 fps; the clip is 1.0–2.0 s
    video, span = decode_clip(path, DecodeSpec(frames=8, fps=8, height=16, width=16))
    assert span == (1.0, 2.0)
    assert [frame_index(f) for f in video] == [4, 5, 5, 6, 6, 7, 7, 8]  # ties go to the later frame


def test_fit_keeps_the_aspect_ratio(tmp_path):
    path = write_video(tmp_path / "wide.mp4", frames=16, fps=8, height=72, width=128)
    padded, _ = decode_clip(path, DecodeSpec(frames=4, fps=8, height=32, width=32, crop="pad"))
    assert padded[:, :6].max() == 0 and padded[:, -6:].max() == 0  # 128×72 → 32×18, black above and below
    assert padded[:, 8:24].min() > 0
    cropped, _ = decode_clip(path, DecodeSpec(frames=4, fps=8, height=32, width=32))
    assert cropped.min() > 0
    portrait = write_video(tmp_path / "tall.mp4", frames=16, fps=8, height=96, width=64)
    video, _ = decode_clip(portrait, DecodeSpec(frames=4, fps=8, height=24, width=40))
    assert video.shape == (4, 24, 40, 3)


def test_too_short_and_broken_inputs_are_reasons_not_crashes(tmp_path):
    short = write_video(tmp_path / "short.mp4", frames=6, fps=24)
    with pytest.raises(TooShort, match=r"the video lasts 0\.25 s, 8 frames at 8 fps need 1\.00 s"):
        decode_clip(short, SPEC)
    ok = write_video(tmp_path / "ok.mp4", frames=48, fps=24)
    with pytest.raises(TooShort, match=r"the segment lasts 0\.50 s"):
        decode_clip(ok, SPEC, start=1.5, end=4.0)  # clipped at the video's end (2 s)
    data = ok.read_bytes()
    (tmp_path / "truncated.mp4").write_bytes(data[: len(data) // 3])
    (tmp_path / "text.mp4").write_text("not a video\n" * 50)
    for name in ("truncated.mp4", "text.mp4"):
        result = decode_task(ClipTask(name=name, caption="x", source=str(tmp_path / name)), SPEC)
        assert result.frames is None and result.error.startswith(("unreadable: ", "too short: ")), result.error
        assert result.peak_rss > 0
    result = decode_task(ClipTask(name="short.mp4", caption="x", source=str(short)), SPEC)
    assert result.error.startswith("too short: the video lasts 0.25 s")
