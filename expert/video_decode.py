"""Cutting one training clip out of a video, streamed: seek, decode only the frames needed, resample in time.

Decoding a whole video into RGB frames costs memory with the source's length and size (4 GB of RSS for a
20 s 1080p clip, docs/design.md §6). Here PyAV seeks to the keyframe before the clip, decodes forward and stops
after the last frame needed; each frame picked is scaled by libswscale straight from YUV to the output size,
so a worker holds a few source frames and the small output, whatever the source. Frames are taken at the
run's fps (the source frame nearest each target time), so every clip spans `frames / fps` seconds of real
time, recorded per clip. This module imports neither torch nor open_clip: it runs in small worker processes.
"""

from __future__ import annotations

import io
import os
import resource
import sys
import time
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from expert.video_layouts import ClipTask

Crop = Literal["centre", "pad"]
CROPS: tuple[str, ...] = ("centre", "pad")


class DecodeSpec(BaseModel):
    """The clips a data set holds: `frames` frames at `fps`, H×W, fitted by `crop` ("centre": scale to cover
    and cut the middle; "pad": scale to fit inside and fill the rest with black)."""

    model_config = ConfigDict(frozen=True)

    frames: int = Field(ge=1)
    fps: float = Field(gt=0)
    height: int = Field(ge=8)
    width: int = Field(ge=8)
    crop: Crop = "centre"

    @property
    def seconds(self) -> float:
        return self.frames / self.fps


class TooShort(ValueError):
    """The video (or its timestamped segment) is shorter than one clip."""


class ClipResult(BaseModel):
    """A decoded clip, or why not; `peak_rss` is the worker's peak resident set so far (bytes)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name: str
    frames: np.ndarray | None = None
    span: tuple[float, float] | None = None
    error: str | None = None
    peak_rss: int = 0
    cpu_s: float = 0.0  # CPU time the decoding process spent on this clip


class TarMember(io.RawIOBase):
    """A read-only, seekable view of `size` bytes at `offset` of a file (a video inside a plain tar)."""

    def __init__(self, path: str, offset: int, size: int) -> None:
        super().__init__()
        self.fd, self.offset, self.size, self.pos = os.open(path, os.O_RDONLY), offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        data = os.pread(self.fd, n, self.offset + self.pos) if n else b""
        buffer[: len(data)] = data
        self.pos += len(data)
        return len(data)

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + pos)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        if not self.closed:
            os.close(self.fd)
        super().close()


def decode_task(task: ClipTask, spec: DecodeSpec) -> ClipResult:
    """The worker's job: one clip, or the one-line reason it was skipped (never raises for a bad file)."""
    cpu = time.process_time()
    try:
        if task.offset is not None and task.size is not None:
            with TarMember(task.source, task.offset, task.size) as f:
                frames, span = decode_clip(f, spec, start=task.start, end=task.end)
        else:
            frames, span = decode_clip(task.source, spec, start=task.start, end=task.end)
        result = ClipResult(name=task.name, frames=frames, span=span)
    except TooShort as e:
        result = ClipResult(name=task.name, error=f"too short: {e}")
    except Exception as e:  # PyAV raises many types for broken files; each becomes a skip, not an abort
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        result = ClipResult(name=task.name, error=f"unreadable: {detail}")
    return result.model_copy(update={"peak_rss": peak_rss(), "cpu_s": time.process_time() - cpu})


def peak_rss() -> int:
    """This process's peak resident set in bytes. On Linux VmHWM, not ru_maxrss: a spawned worker's ru_maxrss
    starts at its parent's (kept across the fork + exec that starts it); elsewhere ru_maxrss (bytes on macOS)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def decode_clip(source, spec: DecodeSpec, *, start: float | None = None,
                end: float | None = None) -> tuple[np.ndarray, tuple[float, float]]:
    """T×H×W×3 uint8 and the (start, end) seconds of the source it covers. The clip is the `spec.seconds`
    window centred in [start, end] (the whole video by default), sampled at `spec.fps`."""
    import av

    with av.open(source if isinstance(source, io.IOBase) else str(source)) as container:
        if not container.streams.video:
            raise ValueError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type, stream.thread_count = "SLICE", 1  # one core per worker: --workers is the parallelism
        rate = float(stream.average_rate or stream.guessed_rate or spec.fps)
        origin = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        duration = _duration(container, stream)
        a = max(0.0, start or 0.0)
        b = end if end is not None else duration
        if b is not None and duration is not None:
            b = min(b, duration)
        if b is not None:
            if b - a < spec.seconds - 0.5 / rate:
                what = "the segment" if start is not None or end is not None else "the video"
                raise TooShort(f"{what} lasts {max(0.0, b - a):.2f} s, {spec.frames} frames at {spec.fps:g} fps "
                               f"need {spec.seconds:.2f} s")
            a += max(0.0, (b - a - spec.seconds) / 2)
        targets = a + np.arange(spec.frames) / spec.fps
        if a > 0:
            try:
                container.seek(int((a + origin) / stream.time_base), stream=stream, backward=True, any_frame=False)
            except av.error.FFmpegError:
                container.seek(0)  # unseekable: decode from the start instead
        picks = _pick(container.decode(stream), targets, origin, rate, spec)
        if len(picks) < spec.frames:
            got = len(picks) / spec.fps
            raise TooShort(f"the video ends after {a + got:.2f} s, {spec.frames} frames at {spec.fps:g} fps "
                           f"from {a:.2f} s need {a + spec.seconds:.2f} s")
    return np.stack(picks), (round(a, 3), round(a + spec.seconds, 3))


def _duration(container, stream) -> float | None:
    if stream.duration is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000  # av.time_base: microseconds
    if stream.frames and stream.average_rate:
        return stream.frames / float(stream.average_rate)
    return None


def _pick(frames, targets: np.ndarray, origin: float, rate: float, spec: DecodeSpec) -> list[np.ndarray]:
    """For each target time, the decoded frame nearest it; stops as soon as the last target is passed."""
    picks: list[np.ndarray] = []
    prev, prev_t = None, -1e9
    for count, frame in enumerate(frames):
        t = float(frame.time) - origin if frame.time is not None else count / rate
        while len(picks) < len(targets) and t >= targets[len(picks)] - 1e-6:
            target = targets[len(picks)]
            use = prev if prev is not None and target - prev_t < t - target else frame
            picks.append(_fit(use, spec))
        if len(picks) == len(targets):
            return picks
        prev, prev_t = frame, t
    while prev is not None and len(picks) < len(targets) and targets[len(picks)] - prev_t <= 1.0 / rate + 1e-6:
        picks.append(_fit(prev, spec))  # the last frame still shows at this time
    return picks


def _fit(frame, spec: DecodeSpec) -> np.ndarray:
    """Aspect-preserving scale straight from the decoder's pixel format, then centre crop or pad."""
    h, w = frame.height, frame.width
    fit = max if spec.crop == "centre" else min
    scale = fit(spec.height / h, spec.width / w)
    h2, w2 = max(1, round(h * scale)), max(1, round(w * scale))
    if spec.crop == "centre":
        h2, w2 = max(h2, spec.height), max(w2, spec.width)
    else:
        h2, w2 = min(h2, spec.height), min(w2, spec.width)
    rgb = frame.reformat(width=w2, height=h2, format="rgb24", interpolation="AREA").to_ndarray()
    if spec.crop == "centre":
        top, left = (h2 - spec.height) // 2, (w2 - spec.width) // 2
        return np.ascontiguousarray(rgb[top : top + spec.height, left : left + spec.width])
    out = np.zeros((spec.height, spec.width, 3), dtype=np.uint8)
    top, left = (spec.height - h2) // 2, (spec.width - w2) // 2
    out[top : top + h2, left : left + w2] = rgb
    return out
