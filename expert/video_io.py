"""Writing generated videos: GIF through Pillow, MP4 (H.264, yuv420p) through PyAV."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from protocol.atomic import atomic_path
from protocol.errors import ParisError


def grid(videos: np.ndarray, pad: int = 1) -> np.ndarray:
    """N×T×H×W×3 → T×H'×W'×3, the videos tiled in a near-square grid with a thin black border."""
    n, t, h, w, c = videos.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros((t, rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        out[:, y : y + h, x : x + w] = videos[i]
    return out


def upscale(video: np.ndarray, min_side: int = 256) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor, so that tiny videos are watchable."""
    factor = max(1, math.ceil(min_side / min(video.shape[1:3])))
    return video.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else video


def write_video(path: Path, video: np.ndarray, *, fps: float = 8.0, min_side: int = 256) -> Path:
    """Write T×H×W×3 uint8 to `.gif` or `.mp4`, atomically."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ParisError(f"cannot write {path.name}: the output must end in .mp4 or .gif")
    video = upscale(np.asarray(video, dtype=np.uint8), min_side)
    with atomic_path(path) as tmp:
        if suffix == ".gif":
            from PIL import Image

            frames = [Image.fromarray(f) for f in video]
            frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:],
                           duration=max(int(1000 / fps), 20), loop=0)
        else:
            _write_mp4(tmp, video, fps)
    return path


def _write_mp4(path: Path, video: np.ndarray, fps: float) -> None:
    import av

    _t, h, w, _ = video.shape
    h2, w2 = h - h % 2, w - w % 2  # libx264 + yuv420p needs even sizes
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = w2, h2, "yuv420p"
        stream.options = {"crf": "18"}
        for frame in video[:, :h2, :w2]:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def frame_strip(videos: np.ndarray, frames: int = 4, pad: int = 1) -> np.ndarray:
    """N×T×H×W×3 → one image: a row per video, `frames` evenly spaced frames from first to last."""
    n, t, h, w, c = videos.shape
    picks = np.linspace(0, t - 1, frames).round().astype(int)
    out = np.zeros((n * (h + pad) + pad, frames * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        for j, f in enumerate(picks):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            out[y : y + h, x : x + w] = videos[i, f]
    return out


def write_image(path: Path, image: np.ndarray, *, min_side: int = 256) -> Path:
    """Write H×W×3 uint8 as a PNG, enlarged by an integer factor, atomically."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ParisError(f"cannot write {path.name}: the image must end in .png")
    image = upscale(np.asarray(image, dtype=np.uint8)[None], min_side)[0]
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path
