"""Real video files for the data tests, written with PyAV: frame i is one flat colour that encodes i, so a
test can tell which source frame each prepared frame came from (`frame_index`)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

STEP, BASE, PER = 16, 16, 14  # i in base 14, one digit per channel (R lowest): up to 2,744 frames


def colour(i: int) -> tuple[int, int, int]:
    return BASE + STEP * (i % PER), BASE + STEP * (i // PER % PER), BASE + STEP * (i // PER // PER)


def frame_index(frame: np.ndarray) -> int:
    """Which source frame a prepared frame shows (read from the colour in its middle)."""
    h, w = frame.shape[:2]
    middle = frame[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4].reshape(-1, 3).mean(0)
    r, g, b = (round(float(v - BASE) / STEP) for v in middle)
    return (b * PER + g) * PER + r


def write_video(path: Path, *, frames: int = 24, fps: float = 24, height: int = 64, width: int = 96,
                codec: str = "libx264", gop: int | None = None) -> Path:
    """A `frames`-frame video at `fps`; the container follows the suffix (.mp4, .avi, .webm, .mkv, .gif)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = width, height
        stream.pix_fmt = "rgb8" if codec == "gif" else "yuv420p"
        if gop:
            stream.gop_size = gop
        if codec == "libx264":
            stream.options = {"crf": "10"}
        elif codec == "libvpx-vp9":
            stream.options = {"crf": "10", "b": "0", "deadline": "realtime", "cpu-used": "8"}
        elif codec == "mpeg4":
            stream.bit_rate = 8_000_000
        for i in range(frames):
            img = np.empty((height, width, 3), dtype=np.uint8)
            img[:] = colour(i)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path
